"""Feature arrays <-> Arrow columns ``values`` list<float32> (flat, C order), ``shape`` list<int32>.

Columns are built from offsets and one concatenated buffer, never from Python lists of floats,
so a batch of spectrograms costs one copy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads


def encode(a: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Flatten ``a`` (C order) to float32; return ``(values, shape)``."""
    a = np.asarray(a)
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1), [int(d) for d in a.shape]


def decode(values, shape) -> np.ndarray:
    """Inverse of :func:`encode`: float32 array of ``shape`` from the flat ``values``."""
    return np.asarray(values, dtype=np.float32).reshape([int(d) for d in shape])


def _list_array(flat: list[np.ndarray], dtype, arrow_type: pa.DataType) -> pa.ListArray:
    lengths = np.fromiter((len(f) for f in flat), dtype=np.int64, count=len(flat))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(
            f"{offsets[-1]} values do not fit one list<> column chunk (int32 offsets); "
            "convert fewer rows per batch"
        )
    child = np.concatenate(flat).astype(dtype, copy=False) if flat else np.empty(0, dtype)
    offsets = pa.array(offsets.astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(child, type=arrow_type))


def to_arrow_columns(arrays: list[np.ndarray]) -> tuple[pa.ListArray, pa.ListArray]:
    """``values`` (list<float32>) and ``shape`` (list<int32>) columns, one row per array."""
    encoded = [encode(a) for a in arrays]
    values = _list_array([v for v, _ in encoded], np.float32, pa.float32())
    shape = _list_array([np.asarray(s, dtype=np.int32) for _, s in encoded], np.int32, pa.int32())
    return values, shape


def _rows(column: pa.ChunkedArray, dtype: np.dtype, name: str) -> list[np.ndarray]:
    """Split a list<> column into one numpy array per row, each a view of one copy per chunk."""
    out = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise ValueError(f"column {name!r} has {chunk.null_count} null rows; drop them first")
        # .offsets honour slicing but index into the unsliced .values: copy only the used span.
        offsets = chunk.offsets.to_numpy()
        start = int(offsets[0])
        offsets = offsets - start
        # one writable copy per chunk
        child = np.array(chunk.values.slice(start, int(offsets[-1])), dtype=dtype)
        out.extend(child[offsets[i] : offsets[i + 1]] for i in range(len(chunk)))
    return out


def column_to_numpy(
    table: pa.Table, values: str = "values", shape: str = "shape"
) -> list[np.ndarray]:
    """One float32 array per row of ``table``, reshaped by its ``shape`` column."""
    flats = _rows(table.column(values), np.float32, values)
    shapes = _rows(table.column(shape), np.int64, shape)
    out = []
    for i, (v, s) in enumerate(zip(flats, shapes)):
        if int(np.prod(s)) != len(v):
            raise ValueError(f"row {i}: {len(v)} values do not fill shape {tuple(s)}")
        out.append(v.reshape(s))
    return out


def stack(table: pa.Table, values: str = "values", shape: str = "shape") -> np.ndarray:
    """All rows as one float32 array ``(rows, *shape)``; every row must have the same shape."""
    arrays = column_to_numpy(table, values, shape)
    if not arrays:
        raise ValueError("cannot stack an empty table: the row shape is unknown")
    shapes = Counter(a.shape for a in arrays)
    if len(shapes) > 1:
        raise ValueError(
            f"rows have different shapes {dict(shapes.most_common(5))}; pad or crop to one shape "
            "(e.g. fixed-length blocks) or use column_to_numpy for ragged rows"
        )
    return np.stack(arrays)


# The columns beside the values that every feature table carries (schema.FEATURE_SCHEMA).
META_COLUMNS = ("utterance_id", "source_id", "block_index", "corpus", "speaker", "sex", "label")


def read_feature(root: str | Path, name: str) -> tuple[list[np.ndarray], pd.DataFrame]:
    """A prepared folder's feature table ``name`` -> (one array per row, meta columns)."""
    root = Path(root)
    path = root / "features" / name
    if not path.exists():
        have = sorted(p.name for p in (root / "features").glob("*")) if (root / "features").exists() else []
        raise FileNotFoundError(
            f"{root}: no feature table {name!r} (have {have}); rerun `ser-ray prepare` with "
            f"--features {name}"
        )
    table = pads.dataset(str(path), format="parquet").to_table()
    arrays = column_to_numpy(table)
    meta = table.select(list(META_COLUMNS)).to_pandas()
    return arrays, meta
