"""Whole-file writes for the core: a reader sees the old file or the new one, never a part, and
a file that was renamed into place is on disk (fsync of the file and of its folder) before the
next step of a job relies on it; the same for whole folders (a model folder, a fusion folder).
No ser_ray imports: config and storage both use it."""

from __future__ import annotations

import locale
import os
import shutil
import tempfile
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


def write_folder_atomic(path: str | Path, write: Callable[[Path], None],
                        replace: bool = False) -> Path:
    """``write(tmp)`` into a hidden temporary folder beside ``path`` (the same filesystem, so the
    rename is atomic), then rename it to ``path``: a reader sees the whole folder or none of it.
    An existing ``path`` is an error unless ``replace``; then it is renamed aside, and removed
    only once the new folder is in place (put back should that rename fail)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        if path.exists() or path.is_symlink():
            if not replace:
                raise FileExistsError(f"{path} exists; choose another path")
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
