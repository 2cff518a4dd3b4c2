"""file_lock: one holder at a time, and a lock file its holder removes stays a lock."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from kirim_events import filelock
from kirim_events.filelock import file_lock


def test_one_holder_at_a_time_and_a_removed_file_goes_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "state" / "run.lock"
    with file_lock(path, wait=False, remove=True) as first:
        assert first
        with file_lock(path, wait=False) as second:
            assert not second
        assert path.is_file()
    assert not path.exists()  # removed as it was let go
    with file_lock(path, wait=False) as again:  # made again for the next holder
        assert again
    assert path.is_file()  # not asked to go: stays


def test_a_lock_on_a_file_its_holder_removed_meanwhile_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The classic race of removing lock files: B opens the file, its holder A removes it and
    # lets go, C makes a new one and locks it, and B's flock on the removed file is then
    # granted: B and C both held "the" lock. B must see that the path names another file.
    path = tmp_path / "run.lock"
    held = contextlib.ExitStack()
    a = held.enter_context(contextlib.ExitStack())
    assert a.enter_context(file_lock(path, wait=False, remove=True))
    real_open = filelock._open
    calls: list[int] = []

    def open_then_others_move(p: str | Path) -> int:
        fd = real_open(p)
        calls.append(fd)
        if len(calls) == 1:  # B has the file open; now A ends and C starts
            a.close()
            assert not path.exists()
            assert held.enter_context(file_lock(path, wait=False, remove=True))  # C
        return fd

    with held:
        monkeypatch.setattr(filelock, "_open", open_then_others_move)
        with file_lock(path, wait=False) as b:
            assert not b, "B took a lock C holds"
        assert len(calls) == 3  # B, C, then B again on C's file
    assert not path.exists()  # C removed its file as it let go
