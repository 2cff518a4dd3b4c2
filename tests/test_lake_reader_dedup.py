"""The lake's dedup rule for delivery rows (reader.first_copies), on hand-built rows (from
mutation testing: the lake tests let the rule for receipts and re-fetched rows change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from kirim_events.lake.reader import first_copies
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
