"""journal_quarantine: what reconcile learns from the quarantine, and the warning it logs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kirim_events.journal_quarantine import quarantined_event_ids, write_quarantine

LOGGER = "kirim_events.quarantine"


def test_kept_deliveries_are_counted_in_a_warning_naming_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Reconcile counts a quarantined delivery as held, silently: the events stayed out of
    # the lake, and no one was told to look at them.
    first = write_quarantine(
        tmp_path, b"{garbage", {"X-Kirim-Event-Id": "evt_1"}, "invalid_json",
        datetime(2026, 5, 1, 10, tzinfo=UTC),
    )  # fmt: skip
    write_quarantine(
        tmp_path, b"{more", {"X-Kirim-Event-Id": "evt_2"}, "invalid_json",
        datetime(2026, 5, 2, 9, tzinfo=UTC),
    )  # fmt: skip
    with caplog.at_level("WARNING", logger=LOGGER):
        assert quarantined_event_ids(tmp_path) == {"evt_1", "evt_2"}
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("2 deliveries are kept in quarantine, not in the lake")
    assert record.getMessage().endswith(f"the first: {first}")


def test_an_empty_quarantine_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger=LOGGER):
        assert quarantined_event_ids(tmp_path) == set()
    assert caplog.records == []


def test_each_write_fsyncs_the_folders_above_its_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # not only when the day's folder is new: one made by a writer that died before its
    # fsync would otherwise never be made durable
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads fsync'd paths from /proc/self/fd")
    when = datetime(2026, 5, 1, 9, tzinfo=UTC)
    (tmp_path / "quarantine" / "2026-05-01").mkdir(parents=True)  # made before, by another
    synced: set[Path] = set()
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.add(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_quarantine(tmp_path, b"{}", {}, "bad_signature", when)
    assert {tmp_path, tmp_path / "quarantine", tmp_path / "quarantine" / "2026-05-01"} <= synced
