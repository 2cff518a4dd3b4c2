"""An exclusive lock across processes on a local file (``flock``), released on exit or when
the holding process dies. One piece for the journal's flushes, backfill runs and local
compactions.

A lock file may be removed by its holder as it lets go (``remove=True``). Removing a lock
file is a classic race: a process that opened the file just before it went takes the lock
on a file no longer in the folder, while a third makes a new one and takes that; both then
run. So every holder checks, once its ``flock`` is granted, that the path still names the
file it locked, and opens the path again when it does not; and a file is only ever removed
by the process holding its lock, before it lets go. A lock granted and checked is then the
only one: the path cannot change while its holder holds it, nor reach another process's
file in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kirim_events.errors import StorageError

__all__ = ["file_lock"]


@contextmanager
def file_lock(path: str | Path, *, wait: bool = True, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (made, with its folder, when missing; a folder that
    exists is locked as it is, and nothing is made).

    Yields True once held. With ``wait=False`` it yields False at once when another holder
    has it, and the caller decides what that means. With ``remove=True`` the file is
    removed as the lock is let go (while still held; see the module's note on why that is
    safe). Raises StorageError when the file cannot be made.
    """
    while True:
        fd = _open(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            if not _still_named(path, fd):
                continue  # its holder removed it as it let go: open the path's file now
            try:
                yield True
            finally:
                if remove:  # while still held: see the module's note
                    with contextlib.suppress(OSError):  # left behind, it is only untidy
                        os.unlink(path)
            return
        finally:
            os.close(fd)  # releases the lock


def _open(path: str | Path) -> int:
    try:
        if os.path.isdir(path):
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open lock file {path}: {exc}") from exc


def _still_named(path: str | Path, fd: int) -> bool:
    """Whether ``path`` names the file open as ``fd`` (not removed or replaced since); a
    folder is taken as it is (it is locked where it is, never removed)."""
    held = os.fstat(fd)
    if stat.S_ISDIR(held.st_mode):
        return True
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot read lock file {path}: {exc}") from exc
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
