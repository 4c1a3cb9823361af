"""User-supplied manifests (CSV/Parquet tables) and JSON sidecars of tar shards.

Columns: ``path`` (or ``file``/``filepath``/``wav``) and ``label`` (or ``emotion``) are required;
``speaker`` and ``sex`` are optional; every other column is kept in ``Utterance.extra``.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

from ser_ray.corpora.base import Utterance, normalise_sex
from ser_ray.labels import normalise_label

PATH_KEYS = ("path", "file", "filepath", "wav")
LABEL_KEYS = ("label", "emotion")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _first_key(keys, choices: tuple[str, ...]) -> str | None:
    return next((k for k in choices if k in keys), None)


def utterance_from_fields(fields: dict, corpus: str = "sidecar") -> Utterance:
    """Utterance from one manifest row or sidecar dict (keys as in the module docstring).

    Speakers are qualified as ``"<corpus>:<speaker>"`` (``"<corpus>:unknown"`` when absent);
    a speaker that is already qualified (``"ravdess:12"``) is kept. Unknown labels give
    ``label=None`` with ``raw_label`` kept, so the caller can count them.
    """
    fields = {str(k).lower(): v for k, v in fields.items()}
    label_key = _first_key(fields, LABEL_KEYS)
    if label_key is None:
        raise ValueError(f"no label field (one of {LABEL_KEYS}) in {sorted(fields)}")
    raw = fields[label_key]
    speaker = fields.get("speaker")
    speaker = "unknown" if speaker is None or str(speaker).strip() == "" else str(speaker).strip()
    used = {label_key, "speaker", "sex", *PATH_KEYS}
    # Round-trip through JSON so dates, decimals and the like cannot break the manifest writer.
    extra = json.loads(json.dumps({k: v for k, v in fields.items() if k not in used}, default=str))
    return Utterance(
        speaker=speaker if ":" in speaker else f"{corpus}:{speaker}",
        sex=normalise_sex(fields.get("sex")),
        raw_label="" if raw is None else str(raw),
        label=normalise_label(raw),
        extra=extra,
    )


def resolve(path: str, base: str) -> str:
    """``path`` joined to ``base`` with '/'; absolute paths and URIs are returned unchanged."""
    if path.startswith("/") or _URI.match(path) or not base:
        return path
    return base.rstrip("/") + "/" + (path[2:] if path.startswith("./") else path)


def load_manifest(table: pa.Table, base: str) -> list[tuple[str, Utterance]]:
    """(uri, Utterance) per row of a manifest table; relative paths resolve against ``base``
    (a local directory or ``s3://bucket/prefix``)."""
    columns = [c.lower() for c in table.column_names]
    path_key = _first_key(columns, PATH_KEYS)
    if path_key is None or _first_key(columns, LABEL_KEYS) is None:
        raise ValueError(
            f"manifest needs a path column ({'/'.join(PATH_KEYS)}) and a label column "
            f"({'/'.join(LABEL_KEYS)}); it has {table.column_names}"
        )
    out = []
    for i, row in enumerate(table.to_pylist()):
        row = {k.lower(): v for k, v in row.items()}
        path = row[path_key]
        if path is None or str(path).strip() == "":
            raise ValueError(f"manifest row {i} has an empty {path_key!r}")
        out.append((resolve(str(path).strip(), base), utterance_from_fields(row, corpus="manifest")))
    return out
