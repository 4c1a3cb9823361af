"""The local S3 server is real: boto3, pyarrow and child processes all reach it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from s3.server import S3Server

pytestmark = pytest.mark.s3


def _bucket(tag: str) -> str:
    return f"ser-ray-{tag}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def filled_bucket(s3_server):
    """A fresh bucket with 23 small objects under two prefixes; returns (bucket, {key: bytes})."""
    bucket = s3_server.create_bucket(_bucket("fill"))
    client = s3_server.boto3_client()
    objects = {f"clips/{i:03d}.bin": os.urandom(100 + i) for i in range(20)}
    objects.update({f"meta/{n}.json": json.dumps({"n": n}).encode() for n in ("a", "b", "c")})
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket, objects


def test_boto3_put_list_paginated_get(s3_server, filled_bucket):
    bucket, objects = filled_bucket
    client = s3_server.boto3_client()

    pages = list(
        client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, PaginationConfig={"PageSize": 7}
        )
    )
    assert [p["KeyCount"] for p in pages] == [7, 7, 7, 2]
    listed = {o["Key"]: o["Size"] for p in pages for o in p["Contents"]}
    assert listed == {k: len(v) for k, v in objects.items()}

    prefixed = client.list_objects_v2(Bucket=bucket, Prefix="meta/")
    assert [o["Key"] for o in prefixed["Contents"]] == ["meta/a.json", "meta/b.json", "meta/c.json"]
    top = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert sorted(p["Prefix"] for p in top["CommonPrefixes"]) == ["clips/", "meta/"]

    for key, body in objects.items():
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=bucket, Key="clips/missing.bin")


def test_upload_dir(s3_server, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "top.txt").write_bytes(b"top")
    (tmp_path / "a" / "b" / "deep.wav").write_bytes(b"RIFF....WAVE")
    bucket = _bucket("up")

    keys = s3_server.upload_dir(tmp_path, bucket, "/raw/")

    assert keys == ["raw/a/b/deep.wav", "raw/top.txt"]
    client = s3_server.boto3_client()
    body = client.get_object(Bucket=bucket, Key="raw/a/b/deep.wav")["Body"].read()
    assert body == b"RIFF....WAVE"
    assert s3_server.uri(bucket, "raw/top.txt") == f"s3://{bucket}/raw/top.txt"


def test_pyarrow_s3filesystem_lists_and_reads(s3_server, filled_bucket):
    bucket, objects = filled_bucket
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    fs = pafs.S3FileSystem(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
        endpoint_override=s3_server.endpoint_url.removeprefix("http://"),
        scheme="http",
    )

    infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/clips", recursive=True))
    clips = sorted(f"{bucket}/{k}" for k in objects if k.startswith("clips/"))
    assert sorted(i.path for i in infos) == clips
    assert all(i.type == pafs.FileType.File for i in infos)
    for key in ("clips/000.bin", "clips/019.bin", "meta/b.json"):
        with fs.open_input_stream(f"{bucket}/{key}") as f:
            assert f.read() == objects[key]
    assert fs.get_file_info(f"{bucket}/nope.bin").type == pafs.FileType.NotFound


def test_parquet_roundtrip_on_s3_uri(s3_server):
    # Only the environment set by the fixture points pyarrow at the server here.
    bucket = s3_server.create_bucket(_bucket("pq"))
    table = pa.table(
        {
            "utt_id": [f"u{i}" for i in range(50)],
            "label": pa.array([i % 4 for i in range(50)], pa.int8()),
            "feat": [[float(i)] * 3 for i in range(50)],
        }
    )
    uri = f"s3://{bucket}/features/part-0.parquet"

    pq.write_table(table, uri)

    head = s3_server.boto3_client().get_object(Bucket=bucket, Key="features/part-0.parquet")
    assert head["Body"].read()[:4] == b"PAR1"
    assert pq.read_table(uri).equals(table)
    fs, path = pafs.FileSystem.from_uri(f"s3://{bucket}/features")
    assert isinstance(fs, pafs.S3FileSystem)
    assert pq.read_table(path, filesystem=fs).equals(table)


def test_child_process_inherits_s3_env(s3_server, filled_bucket):
    bucket, objects = filled_bucket
    code = (
        "import sys, boto3; "
        "r = boto3.client('s3').list_objects_v2(Bucket=sys.argv[1], Prefix='meta/'); "
        "print(r['KeyCount'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, bucket], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(k.startswith("meta/") for k in objects)
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint_url


def test_second_server_coexists_and_stops_cleanly(s3_server):
    with S3Server() as other:
        assert other.endpoint_url != s3_server.endpoint_url
        other.create_bucket("only-here")
        names = [b["Name"] for b in other.boto3_client().list_buckets()["Buckets"]]
        assert names == ["only-here"]
        assert "only-here" not in [
            b["Name"] for b in s3_server.boto3_client().list_buckets()["Buckets"]
        ]
        procs = list(other._procs.values())
        root = other.root
        assert procs and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    assert not root.exists()
    with pytest.raises(Exception):
        other.boto3_client()
