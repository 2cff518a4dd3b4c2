"""Durable small-file writes: each call has reached the disk, folder entry included, on return.

A file's bytes survive a power loss only once the file is fsync'd, and its name only once the
folder holding it is fsync'd too: an ``os.replace`` alone can come back after a crash as the
old file, or as no file at all. These helpers do both halves, in one place:

* :func:`replace_file`: write a temporary file beside the target, fsync it, rename it over
  the target, fsync the folder. Readers see the old bytes or the new ones, never a part.
* :func:`write_new`: create a file that must not exist yet (``O_EXCL``), fsync it and its
  folder.
* :func:`move_file`: rename, then fsync the folders that lost and gained the name (a copy
  and a removal across filesystems).
* :func:`make_dirs`: ``mkdir -p`` that fsyncs the parent of every folder it creates.
* :func:`fsync_dir`: fsync one folder.

They raise ``OSError``; callers translate it into their own error. After a failure no
temporary file is left behind and an existing target is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import TypeAlias

__all__ = ["fsync_dir", "make_dirs", "move_file", "remove_quiet", "replace_file", "write_new"]

_PathLike: TypeAlias = "str | os.PathLike[str]"


def fsync_dir(path: _PathLike) -> None:
    """Make the entries of folder ``path`` (files created, renamed or removed) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: _PathLike, *, fsync: bool = True) -> None:
    """Create folder ``path`` and its missing parents; fsync the parent of each one created.

    ``fsync=False`` only creates them, for callers that make a whole batch durable at once
    (the lake's ``syncfs``). An existing folder is not an error.
    """
    if os.path.isdir(path):  # the usual case, kept cheap: the lake calls this per file
        return
    target = Path(path)
    missing: list[Path] = []
    while not target.is_dir():
        missing.append(target)
        if target.parent == target:
            break
        target = target.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
            # made meanwhile by another writer, who may not have fsync'd its parent yet
        if fsync:
            fsync_dir(folder.parent)


def _write_all(fd: int, data: bytes | str) -> None:
    view = memoryview(data.encode() if isinstance(data, str) else data)
    while view:
        view = view[os.write(fd, view) :]


def write_new(
    path: _PathLike, data: bytes | str, *, fsync: bool = True, sync_folder: bool = True
) -> None:
    """Create ``path`` holding ``data`` (``str`` is written as UTF-8); refuse an existing file.

    Raises ``FileExistsError`` when ``path`` exists. A failed write removes the part written.
    ``fsync=False`` skips both fsyncs, for callers that sync a batch themselves;
    ``sync_folder=False`` only the folder's, for a temporary file renamed elsewhere later.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        remove_quiet(path)  # ours: O_EXCL made it
        raise
    if fsync and sync_folder:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def replace_file(path: _PathLike, data: bytes | str) -> None:
    """Make ``path`` hold exactly ``data`` (``str`` is written as UTF-8), atomically, durably.

    The temporary file is ``.<name>.<random>.tmp`` in the same folder (a rename within one
    filesystem is atomic); a process killed before the rename leaves it behind, and callers
    that may be killed can remove ``.<name>.*.tmp`` when they start.
    """
    target = os.path.abspath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        remove_quiet(tmp)
        raise
    fsync_dir(folder)


def move_file(src: _PathLike, dst: _PathLike) -> None:
    """Rename ``src`` to ``dst`` (replacing it), then fsync the folder of each.

    Across filesystems (a folder that is a symlink to another disk), where a rename fails
    with EXDEV, ``src`` is copied to ``dst`` by :func:`replace_file` and then removed: ``dst``
    still appears whole or not at all, and a crash in between leaves both (never neither).
    """
    src_dir = os.path.dirname(os.path.abspath(src))
    dst_dir = os.path.dirname(os.path.abspath(dst))
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        replace_file(dst, Path(src).read_bytes())  # fsyncs the copy and dst's folder
        os.unlink(src)
        fsync_dir(src_dir)
        return
    fsync_dir(dst_dir)
    if src_dir != dst_dir:
        fsync_dir(src_dir)  # else the old name may come back after a crash, beside the new


def remove_quiet(path: _PathLike) -> None:
    """Remove file ``path``; one that is already gone is not an error."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
