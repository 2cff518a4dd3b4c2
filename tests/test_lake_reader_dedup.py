"""The lake's dedup rule for delivery rows (reader.first_copies), on hand-built rows, and how
far a dirty partition's dedup reaches (from mutation testing: the lake tests let the rule for
receipts and re-fetched rows change, and let the dedup reach a day further)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from test_lake import ev

import kirim_events as ke
from kirim_events.lake.reader import first_copies, near_days, plan_table
from kirim_events.schema import deliveries_table

T0 = datetime(2026, 5, 23, 10, 0, tzinfo=UTC)


def _rows(origin: str) -> pl.DataFrame:
    """Two rows equal but for when they were received (and written)."""
    base: dict[str, Any] = {"event_type": "message.status", "origin": origin, "outcome": "x"}
    rows = [
        {**base, "received_at": T0, "ingest_seq": 1},
        {**base, "received_at": T0 + timedelta(seconds=5), "ingest_seq": 2},
    ]
    frame = pl.from_arrow(deliveries_table(rows))
    assert isinstance(frame, pl.DataFrame)
    return frame


def test_two_webhook_receipts_alike_but_for_their_time_are_two_receipts() -> None:
    # e.g. a request rejected twice, seconds apart: each is a receipt of its own
    kept = first_copies(_rows("webhook"), "deliveries", maintain_order=True)
    assert kept["ingest_seq"].to_list() == [1, 2]


def test_a_history_row_fetched_twice_without_created_at_is_one_row() -> None:
    # a history row is Kirim's, not a receipt: when it was fetched does not make it another
    kept = first_copies(_rows("backfill"), "deliveries", maintain_order=True)
    assert kept["ingest_seq"].to_list() == [1]


def _day(k: int) -> str:
    return (T0 + timedelta(days=k)).date().isoformat()


def _dates(paths: list[str]) -> set[str]:
    return {p.split("/date=")[1].split("/")[0] for p in paths}


def test_near_days_are_those_within_the_window_and_no_further() -> None:
    existing = {_day(k) for k in range(-5, 6)}
    assert near_days(_day(0), 2, existing) == [_day(k) for k in range(-2, 3)]
    assert near_days(_day(0), 0, existing) == [_day(0)]
    assert near_days(_day(0), 2, existing - {_day(-1), _day(2)}) == [_day(-2), _day(0), _day(1)]


def test_a_clean_partition_further_than_the_window_from_a_dirty_one_is_read_as_is(
    tmp_path: Path,
) -> None:
    """Copies of an event lie within the dedup window (2 days) of each other: a partition
    whose nearest dirty one is 3 days away cannot hold a copy of its rows and is read as is,
    not deduplicated (which reads and sorts its neighbours too)."""
    lake = ke.Lake(tmp_path)
    assert lake.dedup_window_days == 2
    lake.write_events([ev(f"k{k}", occurred=T0 + timedelta(days=k)) for k in range(-3, 4)])
    lake.compact()
    lake.write_events([ev("k0", occurred=T0, received=T0 + timedelta(hours=1))])  # a retry
    (plan,) = plan_table(lake.storage, "events", window_days=2)
    assert plan.keep_dates == [_day(k) for k in range(-2, 3)]  # the dirty day's neighbours
    assert _dates(plan.clean) == {_day(-3), _day(3)}
    assert _dates(plan.dedup) == {_day(k) for k in range(-3, 4)}  # read with their neighbours
    events = lake.events().collect()
    assert sorted(events["event_key"]) == sorted(f"k{k}" for k in range(-3, 4))
