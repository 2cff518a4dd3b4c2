"""message_timelines / message_status_history edge cases from mutation testing, Polars and
DuckDB (each test fails with a mutant of timelines.py that the other tests let live)."""

from __future__ import annotations

from dataclasses import replace

import polars as pl
from polars.testing import assert_frame_equal
from test_analytics_support import both, by_key, dedup, duck, from_duck, row, status

from kirim_events.analytics.timelines import message_status_history, message_timelines
from kirim_events.events import EventRecord


def test_statuses_of_one_instant_are_in_arrival_order_so_never_out_of_order() -> None:
    # Meta's timestamps are whole seconds: sent and delivered at one second, delivered
    # received first. Ties in event time are broken by arrival, so nothing overtook anything.
    records = [status("wamid.A", "delivered", 10, 20), status("wamid.A", "sent", 10, 21)]
    got = row(both("message_timelines", records), message_id="wamid.A")
    assert got["out_of_order"] is False


def test_statuses_received_together_are_not_out_of_order() -> None:
    # One Meta body lists sent and delivered: both received at one instant, in event order.
    records = [status("wamid.A", "sent", 0, 20), status("wamid.A", "delivered", 5, 20)]
    got = row(both("message_timelines", records), message_id="wamid.A")
    assert got["out_of_order"] is False


def test_a_message_without_copies_keeps_its_rows_when_copies_list_only_copied_events() -> None:
    # The lake's event_copies lists only events received more than once; a message none of
    # whose events was copied is still a timeline, with no duplicates.
    records = [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "sent", 0, 11, attempt=2),
        status("wamid.B", "sent", 0, 2),
    ]
    events, copies = dedup(records)
    copied_only = copies.filter(pl.col("n_copies") > 1)
    got = by_key(message_timelines(events, copies=copied_only).collect(), "message_timelines")
    assert got.select("message_id", "n_duplicates").rows() == [("wamid.A", 1), ("wamid.B", 0)]
    con = duck(events, copied_only)
    view = by_key(from_duck(con, "message_timelines"), "message_timelines")
    assert_frame_equal(got, view, check_exact=True)
    history = message_status_history(events, copies=copied_only).collect()
    assert history.select("message_id", "n_duplicates").rows() == [("wamid.A", 1), ("wamid.B", 0)]
    assert_frame_equal(history, from_duck(con, "message_status_history"), check_exact=True)


def test_ids_of_a_message_are_the_smallest_seen() -> None:
    def other(record: EventRecord) -> EventRecord:
        return replace(record, phone_number_id="100000000000000")

    records = [
        status("wamid.A", "sent", 0, 1, recipient="628222222222", conversation_id="cnv_b"),
        other(status("wamid.A", "delivered", 5, 6, recipient="628111111111")),
        status("wamid.A", "read", 9, 10, conversation_id="cnv_a"),
    ]
    got = row(both("message_timelines", records), message_id="wamid.A")
    assert (got["phone_number_id"], got["recipient_id"], got["conversation_id"]) == (
        "100000000000000",
        "628111111111",
        "cnv_a",
    )


def test_a_repeated_status_is_no_upgrade() -> None:
    # two shapes report sent under different event keys: the second changes nothing
    def legacy(record: EventRecord) -> EventRecord:
        return replace(record, event_key=f"{record.message_id}:message.status:{record.status}")

    records = [status("wamid.A", "sent", 0, 1), legacy(status("wamid.A", "sent", 3, 4))]
    history = both("message_status_history", records)
    assert history["current_status"].to_list() == ["sent", "sent"]
    assert history["is_upgrade"].to_list() == [True, False]
