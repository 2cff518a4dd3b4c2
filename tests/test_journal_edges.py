"""Journal edge cases found by mutation testing: what a flush leaves behind, futures whose
caller gave up, appends racing a close, and a record whose body is gone."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from test_journal import _hold, records

from kirim_events import testing
from kirim_events.errors import ConfigError, StorageError
from kirim_events.journal import Journal
from kirim_events.journal_index import JournalView
from kirim_events.lake import Lake


def _count(journal: Journal, table: str) -> int:
    with sqlite3.connect(journal.path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_flush_leaves_no_body_behind(tmp_path: Path) -> None:
    # The inbox rows go after their lake write, and their bodies with them: a journal that
    # kept every body ever received would grow without end.
    with Journal(tmp_path) as journal:
        journal.append(records(testing.meta_status("delivered")))
        journal.append(records(testing.kirim_event()))
        assert _count(journal, "bodies") == 2
        assert journal.flush(Lake(tmp_path)).events == 2
        assert (_count(journal, "inbox"), _count(journal, "bodies")) == (0, 0)
        assert _count(journal, "keys") == 2  # the dedup index keeps them


def test_a_caller_that_gave_up_does_not_stall_those_grouped_with_it(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        gate, blocker = _hold(journal)
        given_up = journal.submit(records(testing.kirim_event(rng=random.Random(1))))
        waiting = journal.submit(records(testing.kirim_event(rng=random.Random(2))))
        assert given_up.cancel()
        gate.set()  # both commit as one group; the first has no one to tell
        blocker.result(timeout=10)
        assert waiting.result(timeout=10) == [True]
        assert journal.append(records(testing.kirim_event(rng=random.Random(3)))) == [True]


def test_an_append_handed_over_after_close_fails_rather_than_waits(tmp_path: Path) -> None:
    (rec,) = records(testing.kirim_event())
    journal = Journal(tmp_path)

    async def run() -> None:
        append = asyncio.ensure_future(journal.append_async([rec]))
        await asyncio.sleep(0)  # its job waits for the end of this loop pass
        journal.close()
        with pytest.raises(StorageError, match="journal is closed"):
            await asyncio.wait_for(append, 10)

    asyncio.run(run())


def test_a_record_whose_body_is_gone_is_never_written_without_one(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    with Journal(tmp_path) as journal:
        journal.append(records(testing.kirim_event()))
        with sqlite3.connect(journal.path) as conn:
            conn.execute("DELETE FROM bodies")
        with pytest.raises(StorageError, match="1 records lack a body"):
            journal.flush(lake)
        assert journal.backlog == 1  # kept in the journal, not dropped
    assert lake.events().collect().height == 0


class _Recording:
    """A lake that notes the journal's backlog at each events write."""

    def __init__(self, lake: Lake, journal: Journal) -> None:
        self.lake, self.journal, self.backlogs = lake, journal, list[int]()

    def write_events(self, records: object) -> int:
        self.backlogs.append(self.journal.backlog)
        return self.lake.write_events(records)  # type: ignore[arg-type]

    def write_deliveries(self, rows: object) -> int:
        return self.lake.write_deliveries(rows)  # type: ignore[arg-type]


def test_the_backlog_falls_with_each_batch_of_a_long_flush(tmp_path: Path) -> None:
    # /metrics reads the backlog while a flush runs: it counts what is still to move.
    with Journal(tmp_path) as journal:
        for i in range(3):
            journal.append(records(testing.kirim_event(rng=random.Random(i))))
        sink = _Recording(Lake(tmp_path), journal)
        assert journal.flush(sink, batch_size=1).events == 3
        assert sink.backlogs == [3, 2, 1]
        assert journal.backlog == 0


def test_a_receipt_time_without_a_zone_is_refused_by_name(tmp_path: Path) -> None:
    naive = {"delivery_id": "wbd_1", "received_at": datetime(2026, 5, 23, 10, 0)}
    with Journal(tmp_path) as journal:
        with pytest.raises(ValueError, match="receipt received_at must be an aware datetime"):
            journal.submit([], [naive])
        assert journal.append([], [{"delivery_id": "wbd_2"}]) == []


def test_a_relative_data_folder_is_the_folder_it_named_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its database file was held by its absolute path, but the quarantine and the record of
    # the lake it flushes into took the relative one as it read after a change of folder:
    # a body acknowledged as kept went to another folder's quarantine.
    (tmp_path / "first").mkdir()
    (tmp_path / "later").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    with Journal("data") as journal:
        monkeypatch.chdir(tmp_path / "later")
        kept = journal.quarantine(b"{", {"X-Kirim-Event-Id": "evt_1"}, "invalid_json")
        journal.append(records(testing.kirim_event()))
        journal.flush(Lake(tmp_path / "first" / "data"))
        assert journal.flush_target() == "data folder"
    assert kept.read_bytes() == b"{"
    assert kept.is_relative_to(tmp_path / "first" / "data" / "quarantine")
    assert not (tmp_path / "later" / "data").exists()


def test_a_data_folder_under_the_home_folder_is_the_one_a_lake_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lake("~/kirim") expands "~"; Journal("~/kirim") made a folder named "~" in the working
    # folder for the journal and the quarantine, and recorded its flushes as into another lake.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with Journal("~/kirim") as journal:
        kept = journal.quarantine(b"{", {"X-Kirim-Event-Id": "evt_1"}, "invalid_json")
        journal.append(records(testing.kirim_event()))
        journal.flush(Lake("~/kirim"))
        assert journal.flush_target() == "data folder"
    assert JournalView("~/kirim").flush_target() == "data folder"  # a dry run's view of it
    home = tmp_path / "home" / "kirim"
    assert (home / "_journal" / "journal.sqlite3").is_file()
    assert kept.is_relative_to(home / "quarantine")
    assert Lake(home).events().collect().height == 1
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("opener", [Journal, JournalView])
def test_a_tilde_naming_no_home_folder_is_a_config_error(
    opener: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pathlib raises RuntimeError ("Could not determine home directory.") for a user the
    # machine does not know; Settings says so as a ConfigError, the journal let it through
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="starts with ~, but this machine knows no home"):
        opener("~no_such_user_r2/kirim")
    assert list(tmp_path.iterdir()) == []
