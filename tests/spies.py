"""Spies shared by the tests: a signal handler that notes what it got, and the paths that
os.fsync is called on (the fixtures ``before`` and ``synced`` in conftest.py use them)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import FrameType

import pytest


class Seen:
    """A signal handler that notes what it got."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)


def spy_fsync(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path ``os.fsync`` is called on from here on, in order (read back from /proc:
    the test is skipped on a system other than Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads fsync'd paths from /proc/self/fd")
    seen: list[Path] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen
