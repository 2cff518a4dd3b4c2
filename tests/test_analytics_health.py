"""delivery_health and event_copies on hand-built receipts, Polars and DuckDB."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from test_analytics_support import at, both, conversation, row, status

import kirim_events as ke
from kirim_events.analytics import event_copies
from kirim_events.schema import deliveries_table


def _receipt(
    delivery: str, attempt: int, received: float, outcome: str, **extra: Any
) -> dict[str, Any]:
    return {
        "delivery_id": delivery,
        "attempt": attempt,
        "event_id": "x",
        "event_type": extra.pop("event_type", "message.status"),
        "origin": extra.pop("origin", "webhook"),
        "outcome": outcome,
        "received_at": at(received),
        **extra,
    }


def test_attempts_retries_duplicates_and_lateness() -> None:
    records = [
        status("wamid.A", "sent", 0, 2),
        status("wamid.A", "delivered", 5, 15),
        status("wamid.B", "sent", 0, 40),
        conversation("evt_1", "assigned", "cnv_1", 0, 1, user="usr_a"),
    ]
    receipts = [
        _receipt("wbd_1", 1, 2, "new"),
        _receipt("wbd_2", 1, 15, "new"),
        _receipt("wbd_2", 2, 25, "duplicate"),
        _receipt("wbd_3", 3, 40, "new"),
        _receipt("wbd_4", 1, 41, "rejected"),
        _receipt("wbd_5", 9, 42, "new"),  # beyond the schedule: counted with attempt 8
        _receipt("wbd_6", 1, 42, "quarantined"),
        _receipt("wbd_7", 1, 43, "succeeded", origin="backfill"),  # Kirim's history: ignored
    ]
    health = both("delivery_health", records, deliveries=receipts)
    assert health["event_type"].to_list() == ["conversation.assigned", "message.status"]
    got = row(health, event_type="message.status")
    assert got["deliveries"] == 7
    assert [got[f"n_attempt_{n}"] for n in range(1, 9)] == [4, 1, 1, 0, 0, 0, 0, 1]
    assert got["retry_rate"] == 3 / 7
    assert got["max_attempt"] == 9
    assert (got["duplicates"], got["rejected"], got["quarantined"]) == (1, 1, 1)
    assert got["n_events"] == 3
    assert (got["lateness_p50"], got["lateness_max"]) == (10.0, 40.0)
    assert got["lateness_p90"] == 10.0 + 0.8 * 30.0
    conv = row(health, event_type="conversation.assigned")
    assert conv["deliveries"] is None  # no receipts for it: unknown, not zero
    assert conv["n_events"] == 1


def test_an_unknown_or_zero_attempt_counts_as_the_first() -> None:
    receipts = [
        _receipt("wbd_1", 0, 2, "new"),
        {**_receipt("wbd_2", 1, 3, "new"), "attempt": None},
        _receipt("wbd_3", 2, 4, "new"),
    ]
    got = row(both("delivery_health", [], deliveries=receipts), event_type="message.status")
    assert got["deliveries"] == 3
    assert [got[f"n_attempt_{n}"] for n in range(1, 4)] == [2, 1, 0]
    assert (got["retry_rate"], got["max_attempt"]) == (1 / 3, 2)


@pytest.mark.parametrize("n", [1, 2, 4, 7, 14, 25, 59, 156])
def test_lateness_is_the_same_float_in_both_engines(n: int) -> None:
    """Quantiles interpolated between float seconds differed in the last bits between
    Polars and DuckDB; ``both`` compares them exactly. Most sizes put p50 or p90 between
    two values."""
    rng = random.Random(n)
    records = [
        status(f"wamid.{i}", "sent", 0, rng.randrange(1, 5 * 10**10) / 1e6) for i in range(n)
    ]
    got = row(both("delivery_health", records), event_type="message.status")
    assert got["n_events"] == n
    assert 0 < got["lateness_p50"] <= got["lateness_p90"] <= got["lateness_max"]


def test_receipts_stored_under_the_third_shapes_type_name_count_with_its_events() -> None:
    """Receipts written before they were stored under the lake's type names keep
    ``message.status_updated``; health still puts them on the events' row."""
    receipts = [
        _receipt("wbd_1", 1, 2, "new", event_type="message.status_updated"),
        _receipt("wbd_2", 1, 3, "new"),
    ]
    health = both("delivery_health", [status("wamid.A", "sent", 0, 2)], deliveries=receipts)
    assert health["event_type"].to_list() == ["message.status"]
    assert (health["deliveries"][0], health["n_events"][0]) == (2, 1)


def test_days_are_utc_receipt_days() -> None:
    late = status("wamid.L", "sent", 0, 86_400 * 2)  # happened on day 0, received on day 2
    health = both("delivery_health", [late], deliveries=[_receipt("wbd_1", 1, 86_400 * 2, "new")])
    assert health["day"].to_list() == [at(86_400 * 2).date()]
    assert health["lateness_max"].to_list() == [86_400.0 * 2]


def test_as_of_counts_what_had_arrived() -> None:
    records = [status("wamid.A", "sent", 0, 2), status("wamid.A", "read", 50, 51)]
    receipts = [_receipt("wbd_1", 1, 2, "new"), _receipt("wbd_2", 1, 51, "new")]
    got = row(both("delivery_health", records, deliveries=receipts, as_of=at(10)), day=at(0).date())
    assert (got["deliveries"], got["n_events"]) == (1, 1)


def test_as_of_leaves_out_events_that_happened_but_had_not_arrived() -> None:
    records = [status("wamid.A", "sent", 0, 2), status("wamid.A", "delivered", 5, 500)]
    receipts = [_receipt("wbd_1", 1, 2, "new"), _receipt("wbd_2", 1, 500, "new")]
    got = row(both("delivery_health", records, deliveries=receipts, as_of=at(10)), day=at(0).date())
    assert (got["deliveries"], got["n_events"], got["lateness_max"]) == (1, 1, 2.0)
    later = both("delivery_health", records, deliveries=receipts, as_of=at(500))
    assert row(later, day=at(0).date())["lateness_max"] == 495.0


def test_event_copies_follow_the_delivery_id() -> None:
    events = pl.DataFrame(
        {"event_key": ["k1", "k2", "k3"], "delivery_id": ["wbd_1", "wbd_1", None]}
    ).lazy()
    receipts = pl.from_arrow(
        deliveries_table(
            [
                _receipt("wbd_1", 1, 1, "new"),
                _receipt("wbd_1", 2, 11, "duplicate"),  # a retry carries both events again
                _receipt("wbd_9", 1, 12, "duplicate"),  # a replay: new id, not attributed
            ]
        )
    )
    assert isinstance(receipts, pl.DataFrame)
    copies = event_copies(events, receipts.lazy()).collect().sort("event_key")
    assert copies.rows() == [("k1", 2), ("k2", 2)]  # k3 came once


def test_event_copies_count_webhook_receipts_only_in_both_engines(tmp_path: Path) -> None:
    """A history row whose Kirim status was missing gets the journal's outcome, which is
    ``duplicate`` when the lake held its events: a backfill's fetch, not a copy received."""
    lake = ke.Lake(tmp_path)
    lake.write_events([dataclasses.replace(status("wamid.A", "sent", 0, 1), delivery_id="wbd_1")])
    lake.write_deliveries(
        [
            _receipt("wbd_1", 1, 1, "new"),
            _receipt("wbd_1", 2, 11, "duplicate"),
            _receipt("wbd_1", 3, 99, "duplicate", origin="backfill", created_at=at(20)),
        ]
    )
    polars = lake.event_copies().collect().rows()
    duckdb = lake.sql("SELECT event_key, n_copies FROM event_copies").fetchall()
    assert polars == duckdb == [("wamid.A:sent", 2)]


def test_fractions_of_a_second_are_the_same_float_in_both_engines() -> None:
    # Polars divided by 1e6 as a product with its reciprocal: a lateness of 0.8 s came out
    # as 0.7999999999999999 (DuckDB: 0.8), and so did a third of millisecond-precise values
    records = [status(f"wamid.{i}", "sent", 10 * i, 10 * i + 0.8) for i in range(3)]
    health = both("delivery_health", records)  # compares the engines' floats exactly
    assert row(health, event_type="message.status")["lateness_p50"] == 0.8
    closes = [
        event
        for i in range(3)
        for event in (
            conversation(f"evt_m{i}", "message.received", f"cnv_{i}", 0, 1),
            conversation(f"evt_a{i}", "assigned", f"cnv_{i}", 0, 1, user="u"),
            conversation(f"evt_c{i}", "closed", f"cnv_{i}", 86_397.999 + i * 0.001, 86_398),
        )
    ]
    lifecycles = both("conversation_lifecycles", closes)
    assert lifecycles["time_to_close"].to_list() == [86_397.999, 86_398.0, 86_398.001]


def test_backfilled_events_are_not_what_our_endpoint_saw() -> None:
    # a status fetched from Kirim's history ten days later is not ten days of lateness
    late = dataclasses.replace(status("wamid.B", "sent", 0, 864_000), origin="backfill")
    health = both("delivery_health", [status("wamid.A", "sent", 0, 2), late])
    assert health["n_events"].to_list() == [1]
    assert health["lateness_max"].to_list() == [2.0]


def test_health_rows_come_in_the_same_order_from_both_engines() -> None:
    # a rejected receipt without X-Kirim-Event has no type: Polars put it first, DuckDB last
    from test_analytics_support import dedup, duck, from_duck

    from kirim_events.analytics import health as health_module

    receipts = [
        _receipt("wbd_1", 1, 2, "new"),
        _receipt("wbd_2", 1, 3, "rejected", event_type=None),
    ]
    events, copies = dedup([status("wamid.A", "sent", 0, 2)])
    table = pl.from_arrow(deliveries_table(receipts)).lazy()
    ours = health_module.delivery_health(events, table).collect()
    view = from_duck(duck(events, copies, receipts), "delivery_health")
    assert ours["event_type"].to_list() == ["message.status", None]
    assert view["event_type"].to_list() == ours["event_type"].to_list()


def test_the_eighth_attempt_itself_counts_as_attempt_8() -> None:
    # Kirim's last scheduled attempt is the 8th: n_attempt_8 is "8 and above", 8 included
    receipts = [_receipt("wbd_1", 8, 2, "new"), _receipt("wbd_2", 7, 3, "new")]
    got = row(both("delivery_health", [], deliveries=receipts), event_type="message.status")
    assert [got[f"n_attempt_{n}"] for n in range(1, 9)] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert got["max_attempt"] == 8
