"""Atomic file writes: a reader (or a resumed run) never sees a half-written file.

The lowest layer (standard library only), because run results, checkpoints and the algorithms'
on-disk client state all need it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PathLike = Path | str


def write_bytes_atomic(path: PathLike, data: bytes, *, sync_directory: bool = True) -> Path:
    """Write ``data`` so readers never see a half-written file.

    The bytes go to a temporary file in the same directory (same filesystem) which is then
    renamed over ``path`` with ``os.replace`` and the directory is synced; a crash leaves either
    the old or the new file (and at most a ``.<name>.*.tmp`` file beside it). A caller writing
    many files into one directory passes ``sync_directory=False`` and calls
    ``fsync_directory`` once after the last.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; results are meant to be shared like any other output.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if sync_directory:
        fsync_directory(path.parent)
    return path


def fsync_directory(directory: PathLike) -> None:
    """Make a rename in ``directory`` durable: without it a power cut after ``os.replace`` can
    bring back the old file (or none) on ext4/XFS even though the new file's bytes were synced.
    A no-op where directories cannot be opened (Windows) or synced (some network filesystems)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (temp file in the same directory + ``os.replace``)."""
    return write_bytes_atomic(path, text.encode("utf-8"))
