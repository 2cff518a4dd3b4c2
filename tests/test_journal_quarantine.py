"""journal_quarantine: what reconcile learns from the quarantine, and what it tells."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from kirim_events.journal_quarantine import read_quarantine, write_quarantine


def test_kept_deliveries_are_counted_in_a_note_naming_the_first(tmp_path: Path) -> None:
    # Reconcile counted a quarantined delivery as held, silently: the events stayed out of
    # the lake, and no one was told to look at them (a logged warning reached no CLI user)
    first = write_quarantine(
        tmp_path, b"{garbage", {"X-Kirim-Event-Id": "evt_1"}, "invalid_json",
        datetime(2026, 5, 1, 10, tzinfo=UTC),
    )  # fmt: skip
    write_quarantine(
        tmp_path, b"{more", {"X-Kirim-Event-Id": "evt_2"}, "invalid_json",
        datetime(2026, 5, 2, 9, tzinfo=UTC),
    )  # fmt: skip
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept, kept.first, kept.unreadable) == (
        {"evt_1", "evt_2"}, 2, first, [],
    )  # fmt: skip
    (note,) = kept.notes()
    assert note.startswith("2 deliveries are kept in quarantine, not in the lake")
    assert note.endswith(f"the first: {first}")


def test_an_unreadable_description_is_said_not_skipped(tmp_path: Path) -> None:
    body = write_quarantine(
        tmp_path, b"{garbage", {"X-Kirim-Event-Id": "evt_1"}, "invalid_json",
        datetime(2026, 5, 1, 10, tzinfo=UTC),
    )  # fmt: skip
    body.with_suffix(".json").write_text("{torn")
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept, kept.unreadable) == (set(), 1, [body.with_suffix(".json")])
    assert kept.notes()[1].startswith("1 quarantine description(s) could not be read")


def test_an_empty_quarantine_says_nothing(tmp_path: Path) -> None:
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept, kept.first, kept.notes()) == (set(), 0, None, [])


def test_each_write_fsyncs_the_folders_above_its_day(tmp_path: Path, synced: list[Path]) -> None:
    # not only when the day's folder is new: one made by a writer that died before its
    # fsync would otherwise never be made durable
    when = datetime(2026, 5, 1, 9, tzinfo=UTC)
    (tmp_path / "quarantine" / "2026-05-01").mkdir(parents=True)  # made before, by another
    synced.clear()
    write_quarantine(tmp_path, b"{}", {}, "bad_signature", when)
    day = tmp_path / "quarantine" / "2026-05-01"
    assert {tmp_path, tmp_path / "quarantine", day} <= set(synced)
