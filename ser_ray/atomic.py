"""Whole-file writes for the core: a reader sees the old file or the new one, never a part, and
a file that was renamed into place is on disk (fsync of the file and of its folder) before the
next step of a job relies on it. No ser_ray imports: config and io both use it."""

from __future__ import annotations

import locale
import os
import uuid
from pathlib import Path
from typing import Callable


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened (some network filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a hidden temporary name beside ``path``, fsync it, rename it over
    ``path`` and fsync the folder; the temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """:func:`write_atomic` of ``data``."""
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(text: str, path: str | Path) -> None:
    """:func:`write_bytes_atomic` of ``text`` in the encoding ``Path.write_text`` would use."""
    write_bytes_atomic(text.encode(locale.getpreferredencoding(False)), path)
