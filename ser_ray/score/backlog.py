"""The night's backlog: listing the calls (lazily, in listing order), cutting them into units,
what earlier nights scored, the night's date, and the call metadata table."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections import Counter
from typing import Any, Iterator, Sequence

import pandas as pd

from ser_ray.config import ScoreConfig
from ser_ray.runtime import content_id
from ser_ray.schema import AUDIO_EXTENSIONS, DUPLICATE_CALL_ID, RETRY_STATUSES
from ser_ray.score.commit import published
from ser_ray.score.tables import calls_schema, read_parquet
from ser_ray.storage import Storage, glob_root, has_glob, is_s3, is_table, read_table, relpath


@dataclasses.dataclass(frozen=True)
class Call:
    """A recording of the backlog as listed: its call id, where it is, its listed size in bytes
    (-1 when the listing could not say) and the input it was found under (a link in it may not
    lead out of ``root``)."""

    call_id: str
    uri: str
    size: int
    root: str | None = None


@dataclasses.dataclass(frozen=True)
class Unit:
    """A unit of work for one actor: consecutive calls (``phase`` ``score``, or ``extract`` in a
    run that standardises with its own statistics), or a unit whose features are staged already
    (``predict``, with the ``reference`` statistics to use). ``groups``: call id -> reference
    group (``normalisation.group_by``); ``parent``: the unit a call was split out of when its
    worker died; ``roles``: call id -> whose speech to score on a diarised mono call
    (``score.voices``; its ``voices`` pass finds the voices first). Crosses Ray as JSON
    (:meth:`to_json`, :meth:`from_json`)."""

    unit_id: str
    calls: tuple[Call, ...] = ()
    bytes: int = 0
    phase: str = "score"
    groups: dict[str, str] | None = None
    reference: dict[str, Any] | None = None
    parent: str | None = None
    roles: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Unit":
        d = json.loads(text)
        return cls(**{**d, "calls": tuple(Call(**c) for c in d["calls"])})


def resolve_run_date(value: str | None) -> str:
    if value is None:
        return dt.date.today().isoformat()
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise ValueError(f"--run-date {value!r}: expected YYYY-MM-DD, e.g. 2026-11-23") from None


def iter_calls(inputs: Sequence[str], storage: Storage, ignored: Counter, examples: list[str],
               call_id: str = "stem") -> Iterator[Call]:
    """Recordings under ``inputs`` as :class:`Call` s, lazily, in listing order.

    ``call_id``: ``stem`` names a call by its file name without the extension (recorders name
    files by the telephony system's call id, which metadata tables use too); ``path`` by its path
    below the input, without the extension (for backlogs whose file names repeat across folders).
    Files without an audio extension are not calls: counted in ``ignored`` by extension, the
    first few kept in ``examples``.
    """
    if call_id not in ("stem", "path"):
        raise ValueError(f"call_id={call_id!r}: choose stem or path")
    for root in inputs:
        # absolute: workers whatever their folder, and `sample` later, read the uri as listed
        root = root.rstrip("/") if is_s3(root) else os.path.abspath(root)
        if is_s3(root) or os.path.isdir(root):
            if is_s3(root) and not storage.exists_dir(root):
                raise FileNotFoundError(f"--input {root}: no objects under this prefix")
            listing = storage.walk_sized(root)
            base = root
        elif has_glob(root):
            listing = ((u, _size(storage, u)) for u in storage.glob(root))
            base = glob_root(root)[0]
        elif os.path.exists(root) or os.path.islink(root):
            listing, base = iter([(root, _size(storage, root))]), os.path.dirname(root) or "."
        else:
            raise FileNotFoundError(f"--input {root}: no such file, folder or s3:// prefix")
        for uri, size in listing:
            rel = relpath(base, uri)
            name = rel.rsplit("/", 1)[-1]
            if name.startswith("."):
                ignored["hidden"] += 1
                continue
            stem, ext = os.path.splitext(rel)
            if ext.lower() not in AUDIO_EXTENSIONS:
                ignored[ext.lower() or "(none)"] += 1
                if len(examples) < 20:
                    examples.append(uri)
                continue
            yield Call(stem if call_id == "path" else stem.rsplit("/", 1)[-1], uri, int(size),
                       base)  # a link may not lead out of base


def _size(storage: Storage, uri: str) -> int:
    try:
        return storage.size(uri)
    except Exception:
        return -1


class Listing:
    """The night's calls as the driver hands them out: each listed recording once, a call id
    that two files bear settled as a ``duplicate_call_id`` row, a call an earlier night scored
    with this model (same id and size) skipped. What was not a call is counted in ``ignored``."""

    def __init__(self, cfg: ScoreConfig, storage: Storage, skip: dict[str, int]):
        self.cfg, self.storage, self.skip = cfg, storage, skip
        self.ignored: Counter = Counter()     # files that are not calls, by extension
        self.examples: list[str] = []         # the first few of them
        self.seen: dict[str, str] = {}        # call id -> the file that bears it
        self.extra_rows: list[dict[str, Any]] = []  # calls the driver settles itself
        self.skipped = 0                      # scored by an earlier night

    def calls(self) -> Iterator[Call]:
        for call in iter_calls(self.cfg.inputs, self.storage, self.ignored, self.examples,
                               self.cfg.call_id):
            first = self.seen.get(call.call_id)
            if first is not None:  # the same file listed again is the same call
                if first != call.uri:
                    self.extra_rows.append({**dataclasses.asdict(call), "status": DUPLICATE_CALL_ID,
                                            "reason": f"call_id also names {first}; "
                                                      "set call_id=path to tell them apart"})
                continue
            self.seen[call.call_id] = call.uri
            if self.skip.get(call.call_id) == call.size:
                self.skipped += 1
                continue
            yield call


def iter_units(calls: Iterator[Call], calls_per_task: int, bytes_per_task: int,
               material: str, groups: dict[str, str] | None = None) -> Iterator[Unit]:
    """Consecutive calls grouped into units of <= ``calls_per_task`` calls and about
    ``bytes_per_task`` bytes (an hour-long call is a unit of its own); ids hash their content.

    ``groups`` (call_id -> reference group, see ``normalisation.group_by``) rides along in each
    unit and in its id."""
    unit: list[Call] = []
    size = 0

    def cut() -> Unit:
        key = [(c.uri, c.size) for c in unit]
        unit_groups = None
        if groups is not None:
            unit_groups = {c.call_id: groups.get(c.call_id, "") for c in unit}
            key = [(*k, unit_groups[c.call_id]) for k, c in zip(key, unit)]
        return Unit(content_id([material, key]), tuple(unit), sum(max(c.size, 0) for c in unit),
                    groups=unit_groups)

    for call in calls:
        if unit and (len(unit) >= calls_per_task or size + max(call.size, 0) > bytes_per_task):
            yield cut()
            unit, size = [], 0
        unit.append(call)
        size += max(call.size, 0)
    if unit:
        yield cut()


def previously_scored(storage: Storage, output: str, run_date: str, model_hash: str) -> dict[str, int]:
    """call_id -> size of calls earlier nights scored with this model (status not retried)."""
    done: dict[str, int] = {}
    for night, uri in published(storage, output, "calls"):
        if night == run_date:
            continue
        t = read_parquet(storage, uri, ["call_id", "size_bytes", "status", "model_hash"]).to_pandas()
        t = t[(t["model_hash"] == model_hash) & ~t["status"].isin(RETRY_STATUSES)]
        done.update(zip(t["call_id"], t["size_bytes"].astype("int64")))
    return done


def largest_first(units: list[Unit]) -> list[Unit]:
    """Units by total bytes, largest first (ties keep listing order): a wave then ends on small
    units, so no actor sits idle while another finishes a long one (longest-processing-time
    order). Unit ids and the published row order do not depend on it."""
    return sorted(units, key=lambda u: -u.bytes)


def load_metadata(uri: str, storage: Storage, labels: Sequence[str] = ()) -> pd.DataFrame:
    """Call metadata (CSV/TSV/Parquet with a ``call_id`` column), checked before scoring starts.

    A column whose name a call row already uses (``status``, ``share_angry``, ...) is renamed
    ``meta_<name>`` (again, while that is taken too), so publishing cannot collide."""
    if not is_table(uri):
        raise ValueError(f"--metadata {uri}: expected a .csv, .tsv or .parquet table")
    try:
        meta = read_table(uri, storage).to_pandas()
    except FileNotFoundError:
        raise FileNotFoundError(f"--metadata {uri}: no such file") from None
    if "call_id" not in meta.columns:
        raise ValueError(f"--metadata {uri}: needs a call_id column; it has {list(meta.columns)}")
    meta["call_id"] = meta["call_id"].astype(str)
    dup = meta["call_id"][meta["call_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"--metadata {uri}: {len(dup)} call_id value(s) appear more than once, "
                         f"e.g. {list(dup[:3])}; one row per call")
    taken = set(calls_schema(labels).names) | {"urgency_rank", "run_date"}
    names: dict[str, str] = {}
    for c in meta.columns:
        name = str(c)
        if c != "call_id":
            while name in taken:
                name = f"meta_{name}"
        taken.add(name)
        names[c] = name
    return meta.rename(columns=names)
