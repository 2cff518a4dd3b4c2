"""An exclusive lock across processes on a local file (``flock``), released on exit or when
the holding process dies. One piece for the journal's flushes, backfill runs and local
compactions."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kirim_events.errors import StorageError

__all__ = ["file_lock"]


@contextmanager
def file_lock(path: str | Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (made, with its folder, when missing; a folder that
    exists is locked as it is, and nothing is made).

    Yields True once held. With ``wait=False`` it yields False at once when another holder
    has it, and the caller decides what that means. Raises StorageError when the file
    cannot be made.
    """
    try:
        if os.path.isdir(path):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open lock file {path}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock
