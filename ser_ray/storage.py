"""Sources and sinks: local paths, ``s3://`` prefixes and tar shards; atomic Parquet writes.

A URI is a local path, ``s3://bucket/key``, or a tar member ``<shard uri>#<member name>``.
Listing is lazy (generators over paginated S3 listings and ``os.scandir``), so a large prefix is
never held in memory whole: the driver only splits an input into sub-folders, and Ray workers
list those.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ser_ray.atomic import write_atomic, write_bytes_atomic, write_text_atomic  # noqa: F401
from ser_ray.config import S3Config
from ser_ray.schema import error_detail

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
_GLOB = re.compile(r"[*?\[]")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_tar(uri: str) -> bool:
    return uri.lower().endswith(TAR_SUFFIXES)


def has_glob(uri: str) -> bool:
    return bool(_GLOB.search(uri))


def is_table(uri: str) -> bool:
    return uri.lower().endswith(TABLE_SUFFIXES)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: expected s3://bucket/prefix")
    return bucket, key


def join(root: str, rel: str) -> str:
    """Join a root URI and a '/'-separated relative path."""
    if not rel:
        return root
    if is_s3(root):
        return root.rstrip("/") + "/" + rel
    return os.path.join(root, *rel.split("/"))


def relpath(root: str, uri: str) -> str:
    """Path of ``uri`` below ``root``, '/'-separated."""
    if is_s3(root):
        return uri[len(root.rstrip("/")) + 1:]
    return Path(os.path.relpath(uri, root)).as_posix()


def expand_braces(uri: str) -> list[str]:
    """WebDataset shard notation: ``shard-{000..009}.tar`` -> ten URIs (zero padding kept)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", uri)
    if not m:
        return [uri]
    lo, hi = m.group(1), m.group(2)
    if int(lo) > int(hi):
        raise ValueError(f"{uri!r}: shard range {{{lo}..{hi}}} is empty; write it low..high")
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(uri[:m.start()] + str(i).zfill(width) + uri[m.end():]))
    return out


def glob_root(pattern: str) -> tuple[str, str]:
    """Split a glob into the folder above its first wildcard and the pattern below it."""
    parts = pattern.split("/")
    for i, p in enumerate(parts):
        if has_glob(p):
            root = "/".join(parts[:i]) or ("/" if pattern.startswith("/") else ".")
            return root, "/".join(parts[i:])
    return pattern, ""


class TooLarge(Exception):
    """A file over the byte cap; it is not read."""

    def __init__(self, size: int, cap: int):
        super().__init__(f"{size} bytes > cap of {cap} bytes (audio.max_file_mb)")
        self.size, self.cap = size, cap


class NotAFile(Exception):
    """A FIFO, device, socket or folder where a file was expected: never opened for reading
    (a FIFO would block the reader forever)."""

    reason = "not_a_file"


class OutsideRoot(Exception):
    """A path that leads outside its input root through a link."""

    reason = "outside_root"


def _open_regular(path: str):
    """Open ``path`` for reading only if it is a regular file: O_NONBLOCK so that opening a
    FIFO returns at once (it is then refused), fstat on the open descriptor, no race."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = ("a folder" + (" (a link to a folder that is not followed: it leads outside the "
                              "input or back into it)" if os.path.islink(path) else ""))\
            if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or other special file"
        raise NotAFile(f"{path} is {kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_inside(root: str | None, path: str) -> None:
    """Raise :class:`OutsideRoot` when local ``path`` resolves (through links) outside
    ``root``; S3 keys and a missing root pass."""
    if not root or is_s3(path) or is_s3(root):
        return
    real, base = os.path.realpath(path), os.path.realpath(root)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise OutsideRoot(f"{path} is a link to {real}, outside the input {root}; copy the "
                          "file in if it belongs to this input")


class Storage:
    """Reads and lists local files and S3 objects (standard AWS credential chain)."""

    def __init__(self, s3: S3Config | None = None):
        self.s3cfg = s3 or S3Config()

    @functools.cached_property
    def _s3(self):
        import boto3
        from botocore.config import Config

        endpoint = (self.s3cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        # S3-compatible stores rarely do virtual-hosted buckets; path style works everywhere.
        cfg = Config(s3={"addressing_style": "path"} if endpoint else {},
                     retries={"max_attempts": 5, "mode": "standard"})
        return boto3.client("s3", endpoint_url=endpoint, region_name=self.s3cfg.region, config=cfg)

    def __getstate__(self):  # boto3 clients do not pickle; rebuild lazily in each worker
        return {"s3cfg": self.s3cfg}

    # -- reading -------------------------------------------------------------------------
    def size(self, uri: str) -> int:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return int(self._s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        return os.stat(uri).st_size

    def read_bytes(self, uri: str, max_bytes: int | None = None, root: str | None = None) -> bytes:
        """Whole file; :class:`TooLarge` (without reading it) when over ``max_bytes``;
        :class:`NotAFile` for anything but a regular file; :class:`OutsideRoot` when ``root``
        is given and a link leads out of it."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            resp = self._s3.get_object(Bucket=bucket, Key=key)
            if max_bytes is not None and resp["ContentLength"] > max_bytes:
                resp["Body"].close()
                raise TooLarge(resp["ContentLength"], max_bytes)
            return resp["Body"].read()
        check_inside(root, uri)
        with _open_regular(uri) as f:
            if max_bytes is not None:
                size = os.fstat(f.fileno()).st_size
                if size > max_bytes:
                    raise TooLarge(size, max_bytes)
            return f.read()

    def read_text(self, uri: str) -> str:
        """Text of a file; FileNotFoundError when it is absent (also on S3)."""
        try:
            return self.read_bytes(uri).decode("utf-8", errors="replace")
        except Exception as exc:  # botocore raises ClientError for a missing key
            if is_s3(uri) and ("NoSuchKey" in str(exc) or "404" in str(exc)):
                raise FileNotFoundError(uri) from None
            raise

    def open_stream(self, uri: str) -> IO[bytes]:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self._s3.get_object(Bucket=bucket, Key=key)["Body"]
        return _open_regular(uri)

    def exists_dir(self, uri: str) -> bool:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            prefix = key.rstrip("/") + "/" if key else ""
            resp = self._s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            return resp.get("KeyCount", 0) > 0
        return os.path.isdir(uri)

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            try:
                self.size(uri)
                return True
            except Exception:
                return False
        return os.path.exists(uri)

    # -- writing -------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Whole object at once: a reader sees the old object or the new one, never a part.

        Local files are written to a temporary name and renamed; an S3 PUT is atomic already.
        """
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3.put_object(Bucket=bucket, Key=key, Body=data)
            return
        write_bytes_atomic(data, uri)

    def delete(self, uri: str) -> None:
        """Remove one file or object; absent is fine."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3.delete_object(Bucket=bucket, Key=key)
            return
        try:
            os.remove(uri)
        except FileNotFoundError:
            pass

    def delete_tree(self, uri: str) -> None:
        """Remove everything below a folder/prefix; absent is fine."""
        if is_s3(uri):
            for key_uri in list(self.walk(uri)):
                self.delete(key_uri)
            return
        import shutil
        shutil.rmtree(uri, ignore_errors=True)

    # -- listing -------------------------------------------------------------------------
    def list_level(self, uri: str) -> tuple[list[str], list[str]]:
        """One level of a folder/prefix -> (sub-folder URIs, file URIs), both sorted."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            prefix = key.rstrip("/") + "/" if key else ""
            dirs, files = [], []
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                dirs += [f"s3://{bucket}/{p['Prefix'].rstrip('/')}"
                         for p in page.get("CommonPrefixes", [])]
                files += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])
                          if not o["Key"].endswith("/")]
            return sorted(dirs), sorted(files)
        dirs, files = [], []
        with os.scandir(uri) as it:
            for e in it:
                (dirs if e.is_dir(follow_symlinks=True) else files).append(e.path)
        return sorted(dirs), sorted(files)

    def _s3_objects(self, uri: str) -> Iterator[tuple[str, int]]:
        """Every object below an s3:// prefix with its size, in key order (S3 lists sorted)."""
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for o in page.get("Contents", []):
                if not o["Key"].endswith("/"):
                    yield f"s3://{bucket}/{o['Key']}", int(o["Size"])

    def walk(self, uri: str) -> Iterator[str]:
        """Every file below a folder/prefix, lazily, in sorted order within each folder.

        Links to folders are followed only inside the folder and only to folders not listed
        yet (by device and inode): a link to ``..`` or to ``/`` is listed as an entry of its
        own, not walked, and its reader then says why (:class:`NotAFile`, :class:`OutsideRoot`).
        """
        if is_s3(uri):
            yield from (u for u, _ in self._s3_objects(uri))
            return
        base = os.path.realpath(uri)
        seen: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(uri, followlinks=True):
            try:
                st = os.stat(dirpath)
            except OSError:
                continue
            seen.add((st.st_dev, st.st_ino))
            keep, refused = [], []
            for d in sorted(dirnames):
                path = os.path.join(dirpath, d)
                try:
                    st = os.stat(path)
                    real = os.path.realpath(path)
                except OSError:
                    refused.append(d)
                    continue
                inside = real == base or real.startswith(base.rstrip(os.sep) + os.sep)
                if (st.st_dev, st.st_ino) in seen or not inside:
                    refused.append(d)
                else:
                    seen.add((st.st_dev, st.st_ino))
                    keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames + refused):
                yield os.path.join(dirpath, name)

    def walk_sized(self, uri: str) -> Iterator[tuple[str, int]]:
        """Like :meth:`walk`, with each file's size in bytes (free in an S3 listing)."""
        if is_s3(uri):
            yield from self._s3_objects(uri)
            return
        for path in self.walk(uri):
            try:
                yield path, os.stat(path).st_size
            except OSError:  # a dangling link or a file gone since listing: the reader says why
                yield path, -1

    def glob(self, pattern: str) -> Iterator[str]:
        root, pat = glob_root(pattern)
        for uri in self.walk(root):
            if fnmatch.fnmatchcase(relpath(root, uri), pat):
                yield uri


def tar_members(stream: IO[bytes], max_bytes: int | None = None,
                ) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Stream a tar shard -> (member name, bytes, error); directories are skipped, every other
    member is yielded, with an error ``reason: detail`` where it has no usable bytes.

    Streaming mode ('r|*') reads each shard once, front to back, as WebDataset does. A member
    over ``max_bytes`` is skipped unread with error ``too_large: ...``; symlinks and hardlinks
    with ``link: ...``; FIFOs and devices with ``not_a_file: ...``; an absolute name or one
    with ``..`` with ``outside_root: ...``; a name the shard already held with
    ``duplicate: ...``. A shard that is cut short yields what it holds, then one item with an
    empty name naming the error.
    """
    names: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            for m in tf:
                if m.isdir():
                    continue
                parts = m.name.split("/")
                if m.name.startswith("/") or ".." in parts:
                    yield m.name, None, ("outside_root: member name leads outside the shard; "
                                         "not read")
                    continue
                if m.name in names:
                    yield m.name, None, "duplicate: the shard holds this name twice; read once"
                    continue
                names.add(m.name)
                if m.issym() or m.islnk():
                    yield m.name, None, (f"link: a {'symlink' if m.issym() else 'hardlink'} to "
                                         f"{m.linkname!r}, no audio of its own; not followed")
                    continue
                if not m.isfile():
                    yield m.name, None, "not_a_file: a FIFO or device member; not read"
                    continue
                if max_bytes is not None and m.size > max_bytes:
                    yield m.name, None, f"too_large: {TooLarge(m.size, max_bytes)}"
                    continue
                f = tf.extractfile(m)
                yield m.name, (f.read() if f else b""), None
            # tarfile stops quietly when the stream ends at or inside a member header; a
            # complete archive ends with a zero block, which the last next() has just read.
            if tf.fileobj.pos - tf.offset < tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"archive cut short at byte {tf.fileobj.pos}: no "
                                        f"end-of-archive block after the last member")
    except (tarfile.TarError, EOFError, OSError) as exc:
        yield "", None, error_detail(exc)


def sample_paths(storage: Storage, uri: str, n: int = 2000) -> list[str]:
    """Up to ``n`` paths below an input, relative to it (for corpus auto-detection)."""
    if is_tar(uri):
        with storage.open_stream(uri) as s:
            return [name for name, _, err in itertools.islice(tar_members(s), n) if not err]
    if storage.exists_dir(uri):
        return [relpath(uri, u) for u in itertools.islice(storage.walk(uri), n)]
    return [uri.rsplit("/", 1)[-1]]


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write then rename (:func:`ser_ray.atomic.write_atomic`), so a reader never sees a
    half-written part and a failed write leaves no temporary file.

    List columns (feature arrays) skip dictionary encoding: float samples rarely repeat, and
    trying costs about 3x the write time for a larger file.
    """
    flat = [f.name for f in table.schema if not pa.types.is_list(f.type)]
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=flat))


def read_table(uri: str, storage: Storage | None = None) -> pa.Table:
    """A CSV/TSV/Parquet table from a local path or S3."""
    import io as _io

    import pandas as pd

    data = (storage or Storage()).read_bytes(uri)
    if uri.lower().endswith(".parquet"):
        return pq.read_table(pa.BufferReader(data))
    # Every CSV column as text: speaker "03" must not become the integer 3.
    df = pd.read_csv(_io.BytesIO(data), sep="\t" if uri.lower().endswith(".tsv") else ",",
                     dtype=str, keep_default_na=False)
    return pa.Table.from_pandas(df, preserve_index=False)
