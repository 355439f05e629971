"""Output directories: can one be made here, and one writer per directory at a time.

Standard library only (plus the config error type), so every layer that writes a directory
(the server's run directories, ``compare``'s experiment directory, ``plot`` and ``summarize``)
checks and locks it the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from fedwsa.keys import ConfigError

LOCK_FILE = ".fedwsa.lock"


class DirectoryInUse(ConfigError):
    """Another process is writing the directory (its pid and host are named)."""


def check_writable(key: str, path: Path | str) -> None:
    """Raise ``ConfigError`` naming ``key`` unless a directory can be made at ``path`` (or, if
    it exists, files written in it).

    Asking ``os.access`` is not enough: root may "write" ``/proc`` yet cannot make anything
    there, and a read-only mount answers per file. So this tries: it makes a temporary
    directory in the deepest existing ancestor and removes it at once, leaving nothing behind.
    """
    path = Path(path)
    base = path
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        what = "this is a file" if base == path else f"{base} is a file"
        raise ConfigError(key, str(path), f"a directory path ({what})")
    try:
        probe = tempfile.mkdtemp(dir=base, prefix=".fedwsa-probe-")
        os.rmdir(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(key, str(path), f"a directory this user can create and write "
                                          f"({base}: {reason})") from err


_held: dict[str, list[int]] = {}  # directory -> [lock file descriptor, depth]
_held_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(directory: Path | str, key: str) -> Iterator[None]:
    """Hold ``directory`` for this process: a second process that asks for it gets
    ``DirectoryInUse`` naming the holder's pid and host (error status 2 on the command line).

    ``flock`` on ``DIR/.fedwsa.lock``: the kernel releases it when the holder exits, however it
    exits, so a lock is never stale; the file's text (pid, host) only names the holder. The
    directory is created. Nested holds by one process (``fedwsa run`` and its ServerApp) are
    counted, not re-locked. The file is removed on release; a process that locked a file
    another had just removed sees a different inode and locks again.
    """
    path = Path(directory)
    name = os.path.realpath(path)
    with _held_guard:
        if name in _held:
            _held[name][1] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[name][1] -= 1
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = _lock(path / LOCK_FILE, key, str(path))
    with _held_guard:
        _held[name] = [fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            depth = _held[name][1] - 1
            if depth == 0:
                del _held[name]
            else:
                _held[name][1] = depth
        if depth == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path / LOCK_FILE)
            os.close(fd)


def _lock(lock_file: Path, key: str, shown: str) -> int:
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise DirectoryInUse(key, shown, "a directory no other fedwsa process is writing "
                                 f"(held by {_holder(lock_file)}; wait for it to end or stop "
                                 "it)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)  # released and removed by its holder meanwhile: lock the new file


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process"
