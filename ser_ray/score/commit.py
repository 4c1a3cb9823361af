"""A night is published whole or not at all (docs/guide.md, "Guarantees").

The run record ``runs/<run_id>.json`` is written last and is the night's commit marker: a
calls, segments or transcripts file whose run has no record is not published. Readers, and
``previously_scored`` (which decides what the next night skips), see committed runs only, so a
night whose publishing failed half-way is neither read nor skipped: its staged units stay under
``_staging/`` and the next run of the same night publishes them again.

One run of a night at a time: :class:`NightLock` holds ``_staging/<run date>.lock`` (a file
created exclusively on local storage; on S3 an object put with ``If-None-Match: *``) from the
listing to the commit. A second run of the same night refuses at once, naming the holder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import uuid
from typing import Any, Iterator

from ser_ray.storage import Storage, is_s3, join, relpath, split_s3

RUN_ID = re.compile(r"^(?P<run>[^/.][^/]*?)(?:-part-\d+)?\.parquet$")


class NightLocked(RuntimeError):
    """Another run of the same night holds its lock."""


def run_record_uri(output: str, run_id: str) -> str:
    return join(output, f"runs/{run_id}.json")


def committed_runs(storage: Storage, output: str) -> set[str]:
    """Run ids whose run record exists: the nights that were published whole."""
    runs = join(output, "runs")
    if not storage.exists_dir(runs):
        return set()
    return {uri.rsplit("/", 1)[-1][:-len(".json")] for uri in storage.walk(runs)
            if uri.endswith(".json") and not uri.rsplit("/", 1)[-1].startswith(".")}


def published(storage: Storage, output: str, table: str) -> Iterator[tuple[str, str]]:
    """(run date, uri) of every committed Parquet file of ``table`` (calls, segments,
    transcripts) under ``output``: temporary files and files of runs without a run record (a
    publish that failed before its commit) are not published."""
    root = join(output, table)
    if not storage.exists_dir(root):
        return
    committed = committed_runs(storage, output)
    for uri in storage.walk(root):
        m = re.match(r"run_date=([^/]+)/([^/]+)$", relpath(root, uri))
        name = RUN_ID.match(m.group(2)) if m else None
        if name and name.group("run") in committed:
            yield m.group(1), uri


def committed_record(storage: Storage, output: str, run_id: str) -> dict[str, Any] | None:
    uri = run_record_uri(output, run_id)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def check_replaces_whole(storage: Storage, output: str, run_id: str, listed: set[str],
                         replace: bool) -> None:
    """Refuse to publish run ``run_id`` again when it would drop calls its committed rows hold
    (a same-night run over other inputs), unless ``replace`` (``replace_night``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    record = committed_record(storage, output, run_id)
    if record is None or replace:
        return
    calls = pq.read_table(pa.BufferReader(storage.read_bytes(record["outputs"]["calls"])),
                          columns=["call_id"])
    before = set(calls.column("call_id").to_pylist())
    lost = sorted(before - listed)
    if lost:
        raise ValueError(
            f"run {run_id} was published from --input {record['config']['inputs']} with "
            f"{len(lost)} call(s) this run does not list (e.g. {lost[:3]}); publishing it would "
            "drop their rows. Rerun with the same --input, choose another --run-date, or pass "
            "--set replace_night=true to replace that night's rows on purpose. This run's scored "
            "units stay staged: the corrected rerun resumes them.")


class NightLock:
    """``with NightLock(storage, output, run_date):`` one run of the night at a time.

    A lock left by a run that died is taken over when it is provably stale: on local storage
    its process is gone from this host; anywhere, it is older than ``ttl_s``."""

    def __init__(self, storage: Storage, output: str, run_date: str, ttl_s: float):
        self.storage, self.ttl_s = storage, ttl_s
        self.uri = join(output, f"_staging/{run_date}.lock")
        now = dt.datetime.now(dt.timezone.utc)
        self.body = {"token": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
                     "started": now.isoformat(timespec="seconds"), "run_date": run_date}

    def __enter__(self) -> "NightLock":
        data = json.dumps(self.body).encode()
        if self._create(data):
            return self
        holder = self._holder()
        if holder is not None and not self._stale(holder):
            raise NightLocked(
                f"another run of night {self.body['run_date']} is publishing into this output "
                f"(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}); "
                f"wait for it to finish. If that run is dead, remove {self.uri} and rerun.")
        self.storage.delete(self.uri)  # stale, or gone between the two looks: try once more
        if not self._create(data):
            raise NightLocked(f"another run of night {self.body['run_date']} took {self.uri} "
                              "just now; wait for it to finish")
        return self

    def __exit__(self, *exc) -> None:
        holder = self._holder()
        if holder is not None and holder.get("token") == self.body["token"]:
            self.storage.delete(self.uri)

    def _create(self, data: bytes) -> bool:
        if is_s3(self.uri):
            bucket, key = split_s3(self.uri)
            try:
                self.storage._s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                    return False
                if code != "NotImplemented":
                    raise
                # A store without conditional puts (Swift's s3api): look, then put. Two runs
                # starting within the same instant can both pass the look; the read-back
                # below then lets only the last writer go on.
                if self.storage.exists(self.uri):
                    return False
                self.storage._s3.put_object(Bucket=bucket, Key=key, Body=data)
            # A store that ignores If-None-Match lets the last writer win: read back who did.
            return (self._holder() or {}).get("token") == self.body["token"]
        os.makedirs(os.path.dirname(self.uri), exist_ok=True)
        try:
            fd = os.open(self.uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _holder(self) -> dict[str, Any] | None:
        try:  # read_text says FileNotFoundError for a missing S3 key too
            return json.loads(self.storage.read_text(self.uri))
        except FileNotFoundError:
            return None
        except Exception:
            return {}  # unreadable: half-written by its holder, which is alive

    def _stale(self, holder: dict[str, Any]) -> bool:
        try:
            age = (dt.datetime.now(dt.timezone.utc)
                   - dt.datetime.fromisoformat(holder["started"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            return False
        if age > self.ttl_s:
            return True
        if is_s3(self.uri) or holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, TypeError, ValueError):
            return False
        return False
