"""Fixtures more than one test module uses."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from spies import Seen, spy_fsync

from kirim_events.stopsignals import STOP_SIGNALS


@pytest.fixture(autouse=True)
def _library_logging() -> Iterator[None]:
    """Each test starts with logging as a new process has it: a command run in-process
    (``collect`` configures logging for the CLI, as its own process would) left a handler
    on ``kirim_events``, and a later test's CLI output held log lines a real run never
    prints (test_lake_s3_cli.py failed after test_cli_basics.py)."""
    loggers = [logging.getLogger(name) for name in ("kirim_events", "uvicorn")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


@pytest.fixture
def away_from_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``~`` is ``tmp_path`` and the working folder ``tmp_path / "elsewhere"`` (returned):
    a path starting with ``~`` then names another folder than the same words taken as they
    are (``./~/...``)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return elsewhere


@pytest.fixture
def other_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on another filesystem than ``tmp_path`` (removed after the test)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("needs /dev/shm (a tmpfs) to have two filesystems")
    if shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test's folder")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="kirim-events-test-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def before() -> Iterator[Seen]:
    """A known handler on SIGINT and SIGTERM for the test; the runner's own come back after."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    handler = Seen()
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield handler
    finally:
        for sig, was in saved.items():
            signal.signal(sig, was)


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path os.fsync is called on during the test, in order (Linux only)."""
    return spy_fsync(monkeypatch)
