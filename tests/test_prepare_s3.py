"""prepare over s3:// against a real S3-compatible server (Swift + s3api) on 127.0.0.1."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from prepare_helpers import assert_same, config, make_corpus, make_shards, tables
from ser_ray.prepare import run_prepare

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def uploaded(ray_after_s3, tmp_path_factory):
    s3 = ray_after_s3
    root = tmp_path_factory.mktemp("corpus")
    expect = make_corpus(root)
    keys = s3.upload_dir(root, "corpora", "ravdess")
    shards = make_shards(root, tmp_path_factory.mktemp("shards"), n=2)
    for shard in shards:
        s3.boto3_client().upload_file(str(shard), "corpora", f"shards/{shard.name}")
    return root, expect, keys


def test_s3_prefix_equals_local_folder_and_tar_shards(uploaded, tmp_path):
    root, expect, keys = uploaded
    local = run_prepare(config(inputs=[str(root)], output=str(tmp_path / "local")),
                        progress=False)
    remote = run_prepare(config(inputs=["s3://corpora/ravdess"], output=str(tmp_path / "s3"),
                                corpus="auto"), progress=False)
    shards = run_prepare(config(inputs=["s3://corpora/shards/shard-{000..001}.tar"],
                                output=str(tmp_path / "tar")), progress=False)
    a, b, c = tables(tmp_path / "local"), tables(tmp_path / "s3"), tables(tmp_path / "tar")
    # A dangling symlink is unreadable locally; uploads and tars cannot carry it at all.
    a["quarantine"] = [q for q in a["quarantine"] if q[1] != "unreadable"]
    assert_same(a, b)
    assert_same(a, c)
    assert remote["ok"] == local["ok"] == shards["ok"] == len(expect["good"])
    assert remote["ok"] + remote["quarantined"] == remote["input_files"]
    uris = pq.read_table(tmp_path / "s3" / "manifest").column("uri").to_pylist()
    assert all(u.startswith("s3://corpora/ravdess/") for u in uris)


def test_missing_prefix_is_a_clear_error(uploaded, tmp_path):
    with pytest.raises(FileNotFoundError, match="s3://corpora/nothing-here"):
        run_prepare(config(inputs=["s3://corpora/nothing-here"], output=str(tmp_path)),
                    progress=False)


def test_missing_object_in_a_manifest_is_quarantined_as_unreadable(uploaded, s3_server, tmp_path):
    root, expect, keys = uploaded
    good = [k for k in keys if k.endswith("01-01-01.wav")][:2]
    lines = ["path,label,speaker"] + [f"s3://corpora/{k},neutral,a" for k in good]
    lines.append("s3://corpora/ravdess/Actor_09/gone.wav,angry,b")
    s3_server.boto3_client().put_object(Bucket="corpora", Key="lists/m.csv",
                                        Body="\n".join(lines).encode())
    s = run_prepare(config(inputs=["s3://corpora/lists/m.csv"], output=str(tmp_path),
                           features=["mfcc"]), progress=False)
    assert s["ok"] == len(good) and s["quarantine_reasons"] == {"unreadable": 1}
