"""Sources and sinks (ser_ray.storage) on local files: URIs, listing, byte caps, tar streams, tables.

S3 listing and reading against a real server are in test_s3_server.py; here S3 URIs are only
handled as strings.
"""

from __future__ import annotations

import gzip
import io as _io
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ser_ray import storage
from ser_ray.storage import Storage, TooLarge, expand_braces, glob_root, join, relpath, tar_members


# --- URIs -------------------------------------------------------------------------------------

def test_expand_braces_zero_padding():
    out = expand_braces("shards/train-{000..015}.tar")
    assert len(out) == 16
    assert out[0] == "shards/train-000.tar" and out[9] == "shards/train-009.tar"
    assert out[-1] == "shards/train-015.tar"


def test_expand_braces_without_padding_and_single():
    assert expand_braces("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("s-{0..2}.tar") == ["s-0.tar", "s-1.tar", "s-2.tar"]
    assert expand_braces("s-{05..05}.tar") == ["s-05.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("odd-{a..c}.tar") == ["odd-{a..c}.tar"]  # only numeric ranges expand


def test_expand_braces_several_ranges_in_order():
    out = expand_braces("s3://b/part{0..1}/shard-{00..02}.tar")
    assert out == [
        "s3://b/part0/shard-00.tar", "s3://b/part0/shard-01.tar", "s3://b/part0/shard-02.tar",
        "s3://b/part1/shard-00.tar", "s3://b/part1/shard-01.tar", "s3://b/part1/shard-02.tar",
    ]


@pytest.mark.parametrize("pattern, root, rest", [
    ("/data/TESS/*/OAF_*.wav", "/data/TESS", "*/OAF_*.wav"),
    ("/data/a/b?.wav", "/data/a", "b?.wav"),
    ("/data/[ab]/x.wav", "/data", "[ab]/x.wav"),
    ("/*.wav", "/", "*.wav"),
    ("rel/dir/*.flac", "rel/dir", "*.flac"),
    ("s3://bucket/corpora/*/x.wav", "s3://bucket/corpora", "*/x.wav"),
    ("s3://bucket/*.wav", "s3://bucket", "*.wav"),
    ("/data/no/wildcard.wav", "/data/no/wildcard.wav", ""),
])
def test_glob_root(pattern, root, rest):
    assert glob_root(pattern) == (root, rest)


def test_glob_root_of_a_relative_pattern_is_the_working_directory():
    assert glob_root("*.wav")[0] in (".", "")


def test_join_and_relpath_local():
    assert join("/data/corpus", "Actor_01/a.wav") == os.path.join("/data/corpus", "Actor_01", "a.wav")
    assert join("/data/corpus", "") == "/data/corpus"
    assert relpath("/data/corpus", "/data/corpus/Actor_01/a.wav") == "Actor_01/a.wav"
    assert relpath("/data/corpus/", "/data/corpus/a.wav") == "a.wav"
    root = "/data/c"
    for rel in ("a.wav", "x/y/z.wav"):
        assert relpath(root, join(root, rel)) == rel


@pytest.mark.parametrize("root", ["s3://bucket/corpora/emodb", "s3://bucket/corpora/emodb/"])
def test_join_and_relpath_s3(root):
    assert join(root, "wav/03a01Fa.wav") == "s3://bucket/corpora/emodb/wav/03a01Fa.wav"
    assert relpath(root, "s3://bucket/corpora/emodb/wav/03a01Fa.wav") == "wav/03a01Fa.wav"
    assert join(root, "") == root


def test_s3_bucket_root_and_split():
    assert join("s3://bucket", "a/b.wav") == "s3://bucket/a/b.wav"
    assert relpath("s3://bucket", "s3://bucket/a/b.wav") == "a/b.wav"
    assert storage.split_s3("s3://bucket/a/b.wav") == ("bucket", "a/b.wav")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        storage.split_s3("s3:///key")


def test_kind_predicates():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/s3/b")
    assert storage.is_tar("x/shard-000.TAR") and storage.is_tar("a.tar.gz") and storage.is_tar("a.tgz")
    assert not storage.is_tar("a.tar.json")
    assert storage.is_table("labels.CSV") and storage.is_table("m.tsv") and storage.is_table("m.parquet")
    assert not storage.is_table("a.wav")


# --- listing ----------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    files = ["b.wav", "A.wav", ".hidden", "a/z.wav", "a/y/1.wav", "a/y/0.wav", "c/x.wav",
             "a/m.txt"]
    for rel in files:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    (tmp_path / "empty_dir").mkdir()
    return tmp_path


def test_walk_yields_every_file_sorted_within_each_folder(tree):
    got = [relpath(str(tree), u) for u in Storage().walk(str(tree))]
    # a folder's files (sorted, byte order: upper case first), then its sub-folders in order
    assert got == [".hidden", "A.wav", "b.wav", "a/m.txt", "a/z.wav", "a/y/0.wav", "a/y/1.wav",
                   "c/x.wav"]
    assert list(Storage().walk(str(tree))) == list(Storage().walk(str(tree)))  # deterministic


def test_walk_is_lazy(tree):
    it = Storage().walk(str(tree))
    assert next(it).endswith(".hidden")  # a generator, not a list


def test_walk_lists_each_folder_once_and_never_leaves_the_root(tree):
    """A second path to a folder (a link), a loop (a link to ..) and a link out of the input
    (to /) are each one entry of their own, not walked: no file is listed twice, the host is
    not walked, and reading such an entry says why."""
    from ser_ray.storage import NotAFile, OutsideRoot

    before = [relpath(str(tree), u) for u in Storage().walk(str(tree))]
    os.symlink(tree / "c", tree / "d_link")
    os.symlink("..", tree / "a" / "up")
    os.symlink("/", tree / "a" / "host")
    got = [relpath(str(tree), u) for u in Storage().walk(str(tree))]
    assert sorted(got) == sorted(before + ["d_link", "a/up", "a/host"])
    with pytest.raises(NotAFile, match="not followed"):
        Storage().read_bytes(str(tree / "d_link"), root=str(tree))
    with pytest.raises(OutsideRoot, match="outside the input"):
        Storage().read_bytes(str(tree / "a" / "host"), root=str(tree))


def test_a_fifo_is_refused_without_blocking(tree):
    from ser_ray.storage import NotAFile

    os.mkfifo(tree / "x.wav")  # opening it for reading the usual way blocks forever
    with pytest.raises(NotAFile, match="FIFO"):
        Storage().read_bytes(str(tree / "x.wav"))
    with pytest.raises(NotAFile, match="FIFO"):
        Storage().open_stream(str(tree / "x.wav"))


def test_list_level(tree):
    dirs, files = Storage().list_level(str(tree))
    assert dirs == [str(tree / d) for d in ("a", "c", "empty_dir")]
    assert files == [str(tree / f) for f in (".hidden", "A.wav", "b.wav")]
    dirs, files = Storage().list_level(str(tree / "a" / "y"))
    assert dirs == [] and files == [str(tree / "a/y/0.wav"), str(tree / "a/y/1.wav")]


def test_glob_matches_below_the_root(tree):
    got = [relpath(str(tree), u) for u in Storage().glob(str(tree / "a" / "y" / "*.wav"))]
    assert got == ["a/y/0.wav", "a/y/1.wav"]
    got = [relpath(str(tree), u) for u in Storage().glob(str(tree) + "/[bc]*")]
    assert "b.wav" in got and "A.wav" not in got and "c/x.wav" in got


def test_exists_and_size(tree):
    s = Storage()
    assert s.exists_dir(str(tree / "a")) and not s.exists_dir(str(tree / "b.wav"))
    assert s.exists(str(tree / "b.wav")) and not s.exists(str(tree / "nope.wav"))
    assert s.size(str(tree / "a/z.wav")) == len(b"a/z.wav")


# --- reading ----------------------------------------------------------------------------------

def test_read_bytes_with_cap(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"x" * 1000)
    s = Storage()
    assert s.read_bytes(str(p)) == b"x" * 1000
    assert s.read_bytes(str(p), max_bytes=1000) == b"x" * 1000  # the cap itself is allowed
    with pytest.raises(TooLarge) as exc:
        s.read_bytes(str(p), max_bytes=999)
    assert (exc.value.size, exc.value.cap) == (1000, 999)
    assert "audio.max_file_mb" in str(exc.value)
    with pytest.raises(FileNotFoundError):
        s.read_bytes(str(tmp_path / "missing.wav"))


def test_read_text_replaces_bad_utf8(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_bytes(b"caf\xe9\n")
    assert Storage().read_text(str(p)) == "caf\ufffd\n"
    with pytest.raises(FileNotFoundError):
        Storage().read_text(str(tmp_path / "absent.txt"))


def test_storage_pickles_without_a_client():
    import pickle

    from ser_ray.config import S3Config

    s = Storage(S3Config(endpoint_url="http://127.0.0.1:1", region="x"))
    again = pickle.loads(pickle.dumps(s))
    assert again.s3cfg == s.s3cfg


# --- tar shards -------------------------------------------------------------------------------

MEMBERS = [("k1/a.wav", b"A" * 1000), ("k1/a.json", b'{"label": "angry"}'),
           ("k2/b.wav", b"B" * 3000), ("k3/c.wav", b"C" * 700)]


def make_tar(members=MEMBERS, gz: bool = False, extras: bool = False) -> bytes:
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        if extras:
            d = tarfile.TarInfo("k1")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, _io.BytesIO(data))
        if extras:
            ln = tarfile.TarInfo("k9/link.wav")
            ln.type = tarfile.SYMTYPE
            ln.linkname = "../k1/a.wav"
            tf.addfile(ln)
        if extras == "hostile":
            for name, kind, target in (("k9/hard.wav", tarfile.LNKTYPE, "k1/a.wav"),
                                       ("k9/pipe.wav", tarfile.FIFOTYPE, ""),
                                       ("../up.wav", tarfile.REGTYPE, ""),
                                       ("/etc/abs.wav", tarfile.REGTYPE, ""),
                                       ("k1/a.wav", tarfile.REGTYPE, "")):
                ti = tarfile.TarInfo(name)
                ti.type, ti.linkname = kind, target
                ti.size = 3 if kind == tarfile.REGTYPE else 0
                tf.addfile(ti, _io.BytesIO(b"abc") if kind == tarfile.REGTYPE else None)
    data = buf.getvalue()
    return gzip.compress(data) if gz else data


def items(data: bytes, max_bytes=None):
    return [(n, d, e) for n, d, e in tar_members(_io.BytesIO(data), max_bytes)]


class OneWay(_io.RawIOBase):
    """A forward-only stream (like an S3 body): seeking fails, so tar must be read streaming."""

    def __init__(self, data: bytes):
        self._b = _io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        chunk = self._b.read(min(len(b), 777))
        b[:len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("gz", [False, True])
def test_tar_members_streams_files_in_order(gz):
    got = [(n, d, e) for n, d, e in tar_members(OneWay(make_tar(gz=gz, extras=True)))]
    assert got[:-1] == [(n, d, None) for n, d in MEMBERS]  # the directory is no member
    assert got[-1][:2] == ("k9/link.wav", None) and got[-1][2].startswith("link: a symlink")


def test_tar_members_that_are_not_files_each_get_an_honest_reason():
    got = {n: (d, e) for n, d, e in tar_members(_io.BytesIO(make_tar(extras="hostile")))}
    reasons = {n: e.split(":", 1)[0] for n, (d, e) in got.items() if e}
    assert reasons == {"k9/link.wav": "link", "k9/hard.wav": "link", "k9/pipe.wav": "not_a_file",
                       "../up.wav": "outside_root", "/etc/abs.wav": "outside_root",
                       "k1/a.wav": "duplicate"}
    assert all(got[n][0] is None for n in reasons)
    # the second k1/a.wav: its name already came, so it is one row saying so, not a silent drop
    dups = [e for n, d, e in tar_members(_io.BytesIO(make_tar(extras="hostile")))
            if n == "k1/a.wav"]
    assert dups[0] is None and dups[1].startswith("duplicate:")


def test_tar_member_over_the_cap_is_skipped_unread():
    got = items(make_tar(), max_bytes=2000)
    names = [n for n, _, _ in got]
    assert names == [n for n, _ in MEMBERS]  # the shard goes on after the big member
    name, data, err = got[2]
    assert name == "k2/b.wav" and data is None
    assert err.startswith("too_large: 3000 bytes > cap of 2000 bytes")
    assert got[3] == ("k3/c.wav", b"C" * 700, None)
    assert all(e is None for _, _, e in got[:2])


@pytest.mark.parametrize("cut", [3073, 5000])  # inside k2/b.wav's data (3072..6072)
def test_truncated_tar_yields_what_it_holds_then_an_error(cut):
    data = make_tar()
    got = items(data[:cut])
    assert [(n, d) for n, d, _ in got[:2]] == [(n, d) for n, d in MEMBERS[:2]]
    assert len(got) == 3
    name, payload, err = got[2]
    assert name == "" and payload is None and "ReadError" in err


def test_truncated_tar_too_large_member_skipped_then_error():
    data = make_tar()
    got = items(data[:5000], max_bytes=2000)
    assert got[2][0] == "k2/b.wav" and got[2][2].startswith("too_large")
    assert got[-1][0] == "" and got[-1][2]


def test_truncated_gzip_tar_and_garbage():
    gz = make_tar(gz=True)
    got = items(gz[:len(gz) // 2])
    assert got[-1][0] == "" and got[-1][1] is None and got[-1][2]
    got = items(b"this is not a tar archive at all" * 40)
    assert len(got) == 1 and got[0][0] == "" and "Error" in got[0][2]
    got = items(b"")
    assert len(got) == 1 and got[0][0] == ""


@pytest.mark.parametrize("cut", [2560, 2700])  # at, and 140 bytes into, k2/b.wav's header
def test_tar_cut_at_a_header_is_reported(cut):
    got = items(make_tar()[:cut])
    assert got[-1][0] == "" and got[-1][2]


def test_sample_paths_of_tar_and_folder(tmp_path, tree):
    shard = tmp_path / "shard-000.tar"
    shard.write_bytes(make_tar())
    s = Storage()
    assert storage.sample_paths(s, str(shard)) == [n for n, _ in MEMBERS]
    assert storage.sample_paths(s, str(shard), n=2) == ["k1/a.wav", "k1/a.json"]
    assert storage.sample_paths(s, str(tree), n=3) == [".hidden", "A.wav", "b.wav"]
    assert storage.sample_paths(s, str(tree / "b.wav")) == ["b.wav"]


# --- tables -----------------------------------------------------------------------------------

def test_read_table_csv_keeps_text(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("path,label,speaker,age,note\n"
                 "a/03-01.wav,angry,03,007,\n"
                 "b.wav,NA,10,1e3,null\n")
    t = storage.read_table(str(p))
    assert t.column_names == ["path", "label", "speaker", "age", "note"]
    assert all(pa.types.is_string(f.type) or pa.types.is_large_string(f.type) for f in t.schema)
    rows = t.to_pylist()
    assert rows[0] == {"path": "a/03-01.wav", "label": "angry", "speaker": "03", "age": "007",
                       "note": ""}
    assert rows[1]["label"] == "NA" and rows[1]["note"] == "null"  # not turned into nulls
    assert rows[1]["age"] == "1e3"


def test_read_table_tsv_and_parquet(tmp_path):
    tsv = tmp_path / "m.tsv"
    tsv.write_text("path\tlabel\tspeaker\nx, y.wav\thappy\t03\n")
    assert storage.read_table(str(tsv)).to_pylist() == [
        {"path": "x, y.wav", "label": "happy", "speaker": "03"}]
    pqf = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.wav"], "label": ["sad"], "n": [3]}), pqf)
    t = storage.read_table(str(pqf))
    assert t.to_pylist() == [{"path": "a.wav", "label": "sad", "n": 3}]
    assert pa.types.is_integer(t.schema.field("n").type)  # Parquet keeps its own types


# --- atomic writes ----------------------------------------------------------------------------

def test_atomic_writes_leave_no_temporaries(tmp_path):
    storage.write_parquet_atomic(pa.table({"a": [1, 2]}), tmp_path / "sub" / "part-x.parquet")
    storage.write_text_atomic("hi", tmp_path / "sub" / "m.json")
    storage.write_text_atomic("again", tmp_path / "sub" / "m.json")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.json", "part-x.parquet"]
    assert pq.read_table(tmp_path / "sub" / "part-x.parquet").column("a").to_pylist() == [1, 2]
    assert (tmp_path / "sub" / "m.json").read_text() == "again"


def test_a_folder_is_written_whole_or_not_at_all(tmp_path):
    """A model or fusion folder: a reader sees the old folder or the whole new one, a failed
    write leaves the old one as it was, and no temporary folder stays behind."""
    import pytest as _pytest

    from ser_ray.atomic import write_folder_atomic

    def fill(text):
        return lambda tmp: (tmp / "a").write_text(text) and (tmp / "b").write_text(text)

    out = tmp_path / "model"
    write_folder_atomic(out, fill("one"))
    with _pytest.raises(FileExistsError):
        write_folder_atomic(out, fill("two"))

    def half(tmp):
        (tmp / "a").write_text("two")
        raise OSError("disk full")

    with _pytest.raises(OSError, match="disk full"):
        write_folder_atomic(out, half, replace=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "one", "b": "one"}
    write_folder_atomic(out, fill("two"), replace=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "two", "b": "two"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_expand_braces_rejects_an_empty_range():
    import pytest as _pytest

    from ser_ray.storage import expand_braces
    with _pytest.raises(ValueError, match="empty"):
        expand_braces("s{5..3}.tar")
