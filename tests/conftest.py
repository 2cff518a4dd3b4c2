"""Fixtures more than one test module uses."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from spies import Seen, spy_fsync

from kirim_events.stopsignals import STOP_SIGNALS


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
