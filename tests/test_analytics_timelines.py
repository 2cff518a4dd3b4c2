"""message_timelines / message_status_history on hand-built deliveries, Polars and DuckDB."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_analytics_support import at, both, dedup, row, status

from kirim_events.analytics._common import STATUS_RANK
from kirim_events.analytics.timelines import message_status_history, message_timelines
from kirim_events.events import EventRecord, parse_delivery
from kirim_events.schema import deliveries_table


def test_late_delivered_never_overwrites_read() -> None:
    # The last-write-wins bug: "delivered" arrives after "read" and must not downgrade it.
    records = [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "read", 60, 61),
        status("wamid.A", "delivered", 5, 300),
    ]
    got = row(both("message_timelines", records), message_id="wamid.A")
    assert got["status"] == "read"
    assert (got["sent_at"], got["delivered_at"], got["read_at"]) == (at(0), at(5), at(60))
    assert got["time_to_deliver"] == 5.0
    assert got["time_to_read"] == 60.0
    assert got["out_of_order"] is True
    assert got["read_without_delivered"] is False
    assert got["n_events"] == 3


def test_in_order_arrival_is_not_flagged() -> None:
    records = [status("wamid.A", "sent", 0, 1), status("wamid.A", "delivered", 5, 6)]
    got = row(both("message_timelines", records), message_id="wamid.A")
    assert got["out_of_order"] is False
    assert got["status"] == "delivered"


def test_result_does_not_depend_on_arrival_order() -> None:
    records = [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "delivered", 5, 6),
        status("wamid.A", "read", 60, 61),
        status("wamid.B", "sent", 3, 4),
        status("wamid.B", "failed", 9, 10, error=(131047, "Re-engagement message")),
    ]
    drop = ["out_of_order", "first_received_at", "last_received_at"]
    events, copies = dedup(records)
    expected = message_timelines(events, copies=copies).collect().drop(drop).sort("message_id")
    rng = random.Random(7)
    for _ in range(5):
        shuffled = records[:]
        rng.shuffle(shuffled)
        # Arrival order is the received time: re-stamp the copies in their shuffled order.
        restamped = [
            status(r.message_id or "", r.status or "", (r.occurred_at - at(0)).total_seconds(), i)
            if r.error_code is None
            else status(
                r.message_id or "",
                "failed",
                (r.occurred_at - at(0)).total_seconds(),
                i,
                error=(int(r.error_code), r.error_title or ""),
            )
            for i, r in enumerate(shuffled)
        ]
        got = both("message_timelines", restamped).drop(drop)
        assert_frame_equal(got, expected)


def test_read_without_delivered_implies_delivered_with_null_time() -> None:
    records = [status("wamid.A", "sent", 0, 1), status("wamid.A", "read", 30, 31)]
    got = row(both("message_timelines", records), message_id="wamid.A")
    assert got["status"] == "read"
    assert got["read_without_delivered"] is True
    assert got["reached_delivered"] is True
    assert got["delivered_at"] is None
    assert got["time_to_deliver"] is None
    assert got["time_to_read"] == 30.0


def test_never_sent_flag_and_implied_sent() -> None:
    got = row(
        both("message_timelines", [status("wamid.A", "delivered", 5, 6)]), message_id="wamid.A"
    )
    assert got["never_sent"] is True
    assert got["reached_sent"] is True
    assert got["sent_at"] is None


@pytest.mark.parametrize(
    ("statuses", "final", "anomaly"),
    [
        (["failed"], "failed", False),
        (["sent", "failed"], "failed", False),
        (["pending", "failed"], "failed", False),
        (["sent", "delivered", "failed"], "delivered", True),  # failed after delivered
        (["sent", "failed", "delivered"], "delivered", True),  # delivered after failed
        (["sent", "failed", "read"], "read", True),
        (["pending"], "pending", False),
    ],
)
def test_failed_precedence(statuses: list[str], final: str, anomaly: bool) -> None:
    # Rules (kirim-api.md §6.1): failed outranks pending and sent; delivered and read outrank
    # failed and the row is flagged failed_after_delivered, whatever the order.
    records = [
        status(
            "wamid.F",
            s,
            10 * i,
            10 * i + 1,
            error=(1013, "User is blocked") if s == "failed" else None,
        )
        for i, s in enumerate(statuses)
    ]
    got = row(both("message_timelines", records), message_id="wamid.F")
    assert got["status"] == final
    assert got["failed_after_delivered"] is anomaly
    # failed implies no earlier step: a message that only failed was never sent
    assert got["reached_sent"] is ("sent" in statuses or final in ("delivered", "read"))
    if "failed" in statuses:
        assert got["error_code"] == "1013"
        assert got["error_title"] == "User is blocked"
        assert got["error_label"] == "recipient_blocked"
        assert got["failed_at"] == at(10 * statuses.index("failed"))
    else:
        assert got["error_code"] is None
        assert got["error_label"] is None


def test_unknown_error_code_is_labelled_other() -> None:
    records = [status("wamid.X", "failed", 0, 1, error=(131026, "Message undeliverable"))]
    got = row(both("message_timelines", records), message_id="wamid.X")
    assert (got["error_code"], got["error_label"]) == ("131026", "other")


def test_kirim_error_name_is_labelled_as_itself() -> None:
    # A Message resource's error without provider_code (third shape, kirim-api.md §4.3 and
    # §6.1) carries Kirim's own code, which is already the label: not "other".
    body = {
        "id": "wbd_1",
        "event": "message.status_updated",
        "delivered_at": at(5).isoformat(),
        "data": {
            "message": {
                "id": "msg_1",
                "provider_id": "wamid.K",
                "status": "failed",
                "created_at": at(0).isoformat(),
                "error": {"code": "outside_24h_window", "message": "Outside the window"},
            }
        },
    }
    (record,) = parse_delivery(json.dumps(body).encode(), {}, received_at=at(6))
    got = row(both("message_timelines", [record]), message_id="wamid.K")
    assert (got["error_code"], got["error_label"]) == ("outside_24h_window", "outside_24h_window")


def test_duplicates_are_counted_not_double_counted() -> None:
    records = [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "sent", 0, 11, attempt=2),
        status("wamid.A", "sent", 0, 41, attempt=3),
        status("wamid.A", "delivered", 5, 6),
        status("wamid.A", "delivered", 5, 16, attempt=2),
    ]
    got = row(both("message_timelines", records), message_id="wamid.A")
    assert got["n_events"] == 2
    assert got["n_duplicates"] == 3
    assert got["first_received_at"] == at(1)  # the first copy wins
    history = both("message_status_history", records)
    assert history["n_duplicates"].to_list() == [2, 1]


def test_without_copies_n_duplicates_is_unknown() -> None:
    events, _ = dedup([status("wamid.A", "sent", 0, 1)])
    got = message_timelines(events).collect()
    assert got["n_duplicates"].to_list() == [None]


def test_as_of_cuts_on_event_time() -> None:
    records = [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "delivered", 5, 600),  # arrives late, but happened at 5
        status("wamid.A", "read", 60, 61),
    ]
    early = row(both("message_timelines", records, as_of=at(4)), message_id="wamid.A")
    assert (early["status"], early["delivered_at"], early["n_events"]) == ("sent", None, 1)
    middle = row(both("message_timelines", records, as_of=at(5)), message_id="wamid.A")
    assert (middle["status"], middle["delivered_at"]) == ("delivered", at(5))
    before = both("message_timelines", records, as_of=at(-1))
    assert before.height == 0


def test_status_history_records_each_step_in_event_time_order() -> None:
    records = [
        status("wamid.A", "delivered", 5, 6),
        status("wamid.A", "read", 60, 61),
        status("wamid.A", "sent", 0, 100),  # late and below the current status
        status("wamid.B", "failed", 0, 1, error=(132015, "Template is paused")),
    ]
    history = both("message_status_history", records).filter(pl.col("message_id") == "wamid.A")
    assert history["seq"].to_list() == [1, 2, 3]
    assert history["status"].to_list() == ["sent", "delivered", "read"]
    assert history["previous_status"].to_list() == [None, "sent", "delivered"]
    assert history["current_status"].to_list() == ["sent", "delivered", "read"]
    # sent happened first and arrived last, after delivered and read: it is the late one
    # (the flag was on delivered and read, the events it arrived after)
    assert history["arrived_late"].to_list() == [True, False, False]
    assert history["is_upgrade"].to_list() == [True, True, True]


def test_status_history_is_sorted_and_equals_per_message_windows() -> None:
    # Many messages, ties in event time and in arrival: the history must come sorted by
    # message then event-time order, and its running columns must be what per-message
    # windows (``over``) give on those rows.
    rng = random.Random(11)
    records = [
        status(f"wamid.{m:02d}", value, rng.randint(0, 4), rng.randint(0, 4))
        for m in range(60)
        for value in rng.sample(list(STATUS_RANK), rng.randint(1, 5))
    ]
    events, copies = dedup(records)
    history = message_status_history(events, copies=copies).collect()
    assert history.height == len(records)
    rank = pl.col("status").replace_strict(STATUS_RANK)
    keys = history.select("message_id", "occurred_at", "received_at", rank.alias("_rank"),
                          "event_key")  # fmt: skip
    assert keys.equals(keys.sort(keys.columns))
    expected = history.select(
        seq=(pl.int_range(pl.len(), dtype=pl.Int64) + 1).over("message_id"),
        # it arrived after an event that happened later: after the earliest arrival of
        # the rows that follow it in event-time order
        arrived_late=(pl.col("received_at") > pl.col("received_at").cum_min(reverse=True).shift(-1))
        .fill_null(False)
        .over("message_id"),
        _before=rank.cum_max().shift(1).over("message_id"),
        _after=rank.cum_max().over("message_id"),
    )
    got = history.select(
        "seq",
        "arrived_late",
        _before=pl.col("previous_status").replace_strict(STATUS_RANK, default=None),
        _after=pl.col("current_status").replace_strict(STATUS_RANK),
    )
    assert_frame_equal(got, expected, check_dtypes=False)
    assert got["arrived_late"].any()
    assert not got["arrived_late"].all()


def test_status_history_marks_steps_that_change_nothing() -> None:
    records = [
        status("wamid.A", "read", 60, 61),
        status("wamid.A", "failed", 70, 71, error=(1013, "User is blocked")),
    ]
    history = both("message_status_history", records)
    assert history["current_status"].to_list() == ["read", "read"]
    assert history["is_upgrade"].to_list() == [True, False]
    assert history["error_code"].to_list() == [None, "1013"]


def test_other_event_types_and_unknown_statuses_are_ignored() -> None:
    records = [status("wamid.A", "sent", 0, 1), status("wamid.A", "deleted", 3, 4)]
    got = both("message_timelines", records)
    assert got["n_events"].to_list() == [1]
    assert got["status"].to_list() == ["sent"]


def test_several_events_of_one_status_use_event_time_order() -> None:
    # Two shapes can report the same status of one message under different event keys
    # (Meta's wamid:status and the third shape's wamid:message.status:status).
    def legacy(record: EventRecord) -> EventRecord:
        return replace(record, event_key=f"{record.message_id}:message.status:{record.status}")

    records = [
        status("wamid.M", "sent", 0, 50),
        legacy(status("wamid.M", "sent", 3, 4)),
        status("wamid.M", "delivered", 5, 6),
        legacy(status("wamid.N", "failed", 1, 2, error=(132015, "Template is paused"))),
        status("wamid.N", "failed", 7, 8, error=(1013, "User is blocked")),
        status("wamid.O", "sent", 0, 1),
        legacy(status("wamid.O", "sent", 0, 2)),
    ]
    got = both("message_timelines", records)
    m = row(got, message_id="wamid.M")
    assert (m["n_events"], m["sent_at"], m["out_of_order"]) == (3, at(0), True)
    n = row(got, message_id="wamid.N")
    # the earliest failure's code and title, not the smallest code
    assert (n["error_code"], n["error_title"], n["failed_at"]) == (
        "132015",
        "Template is paused",
        at(1),
    )
    assert row(got, message_id="wamid.O")["out_of_order"] is False


def test_statuses_at_one_instant_and_arrival_come_lowest_first() -> None:
    # one Meta body may list sent and delivered with the same timestamp: by the key alone,
    # "delivered" sorted first and the history said delivered -> sent, not an upgrade
    records = [status("wamid.T", "delivered", 10, 20), status("wamid.T", "sent", 10, 20)]
    history = both("message_status_history", records)
    assert history["status"].to_list() == ["sent", "delivered"]
    assert history["previous_status"].to_list() == [None, "sent"]
    assert history["is_upgrade"].to_list() == [True, True]


def test_every_helper_takes_dataframes_as_well_as_lazyframes() -> None:
    """A DataFrame (an analyst's ``lake.events().collect()``) is read like its LazyFrame."""
    from test_analytics_support import conversation

    from kirim_events.analytics.conversations import conversation_cycles, conversation_lifecycles
    from kirim_events.analytics.health import delivery_health
    from kirim_events.analytics.timelines import status_events

    records = [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "delivered", 4, 5),
        status("wamid.B", "failed", 0, 1, error=(131047, "Re-engagement message")),
        conversation("evt_1", "assigned", "cnv_1", 0, 1, user="usr_a"),
        conversation("evt_2", "closed", "cnv_1", 600, 601, closed_by="usr_a"),
    ]
    events, copies = dedup(records)
    deliveries = pl.LazyFrame(
        {"origin": ["webhook"], "received_at": [at(1)], "event_type": ["message.status"],
         "attempt": [1], "delivery_id": ["wbd_1"], "outcome": ["new"]}
    )  # fmt: skip
    eager, eager_copies = events.collect(), copies.collect()
    for helper in (message_timelines, message_status_history, status_events,
                   conversation_lifecycles, conversation_cycles):  # fmt: skip
        lazy = helper(events, copies=copies)
        got = helper(eager, copies=eager_copies)
        assert isinstance(got, pl.LazyFrame), helper.__name__
        assert_frame_equal(got.collect(), lazy.collect(), check_row_order=False)
    health = delivery_health(eager, deliveries.collect())
    assert isinstance(health, pl.LazyFrame)
    assert_frame_equal(health.collect(), delivery_health(events, deliveries).collect())


def test_the_core_functions_take_a_duckdb_relation_of_events() -> None:
    """``message_timelines(lake.sql("select * from events where ..."))`` failed with "This
    relation does not contain a column by the name of 'lazy'". A relation from a session in
    another zone gives zoned timestamps; they come back in UTC, and ``as_of`` works on them."""
    import duckdb

    from kirim_events.analytics import conversations, health

    records = [
        status("wamid.A", "sent", 0, 1, conversation_id="cnv_1"),
        status("wamid.A", "delivered", 5, 6, conversation_id="cnv_1"),
        status("wamid.B", "failed", 10, 11, error=(131047, "Re-engagement message")),
    ]
    events, _ = dedup(records)
    frame = events.collect()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Jakarta'")
    relation = con.sql("SELECT * FROM frame")
    calls = {
        "message_timelines": message_timelines,
        "message_status_history": message_status_history,
        "conversation_lifecycles": conversations.conversation_lifecycles,
        "conversation_cycles": conversations.conversation_cycles,
    }
    for name, call in calls.items():
        for as_of in (None, at(5)):
            expected = call(events, as_of=as_of).collect()
            got = call(relation, as_of=as_of).collect()
            key = "message_id" if name.startswith("message") else "conversation_id"
            assert_frame_equal(got.sort(key), expected.sort(key), check_row_order=False)
    receipts = pl.from_arrow(deliveries_table([]))
    expected = health.delivery_health(events, receipts, as_of=at(5)).collect()
    got = health.delivery_health(relation, con.sql("SELECT * FROM receipts"), as_of=at(5))
    assert_frame_equal(got.collect(), expected)
    with pytest.raises(TypeError, match=r"events: expected a Polars .* got pyarrow\.lib\.Table"):
        message_timelines(frame.to_arrow())  # type: ignore[arg-type]


def test_the_core_functions_read_naive_and_zoned_frames_as_utc() -> None:
    """An analyst's own frame (``pl.from_pandas``, a CSV) has naive or zoned times in ms or
    ns: with ``as_of`` every helper failed with Polars' "could not evaluate '<=' comparison",
    and ``delivery_health`` counted the days of receipt in the frame's zone, not in UTC (an
    event received at 23:30 UTC fell on the next day in Berlin). Naive times are UTC, as
    ``as_of`` reads them; every timestamp comes out as the lake's, UTC in microseconds."""
    from test_analytics_support import conversation

    from kirim_events.analytics import conversations, health

    late_evening = 13.5 * 3600  # T0 is 10:00 UTC: 23:30 UTC, 00:30 the next day in Berlin
    records = [
        status("wamid.A", "sent", 0, 1, conversation_id="cnv_1"),
        status("wamid.A", "delivered", 5, late_evening),
        status("wamid.B", "failed", 10, 11, error=(131047, "Re-engagement message")),
        conversation("evt_1", "assigned", "cnv_1", 2, 3, user="usr_a"),
        conversation("evt_2", "closed", "cnv_1", 600, 601, closed_by="usr_a"),
    ]
    events, copies = dedup(records)
    utc = events.collect()
    times = pl.col("occurred_at", "received_at")
    frames = {
        "naive": utc.with_columns(times.dt.replace_time_zone(None)),
        "berlin, ms": utc.with_columns(
            times.dt.convert_time_zone("Europe/Berlin").dt.cast_time_unit("ms")
        ),
        "ns": utc.with_columns(times.dt.cast_time_unit("ns")),
    }
    calls = {
        "message_id": (message_timelines, message_status_history),
        "conversation_id": (
            conversations.conversation_lifecycles,
            conversations.conversation_cycles,
        ),
    }
    for label, frame in frames.items():
        for key, helpers in calls.items():
            for helper in helpers:
                for as_of in (None, at(5)):
                    expected = helper(utc, copies=copies, as_of=as_of).collect()
                    got = helper(frame, copies=copies, as_of=as_of).collect()
                    assert_frame_equal(got.sort(key), expected.sort(key))
        receipts = pl.from_arrow(deliveries_table([]))
        got = health.delivery_health(frame, receipts).collect()
        assert got["day"].unique().to_list() == [at(0).date()], label
        expected = health.delivery_health(utc, receipts).collect()
        assert_frame_equal(got, expected)
        cut = health.delivery_health(frame, receipts, as_of=at(late_evening)).collect()
        assert_frame_equal(cut, expected)


def test_times_given_as_text_are_refused_naming_the_input_column() -> None:
    """A CSV read as it is has its times as text: the helpers failed deep inside, with
    "casting from string to datetime is not supported" about ``delivered_at`` (a column of
    theirs, not the caller's), or compared text with ``as_of``."""
    from kirim_events.analytics import conversations, health

    events, _ = dedup([status("wamid.A", "sent", 0, 1), status("wamid.A", "read", 9, 9)])
    text = events.with_columns(pl.col("received_at").cast(pl.String))
    for helper in (message_timelines, conversations.conversation_lifecycles):
        with pytest.raises(TypeError, match=r"^events: received_at is String, not a datetime"):
            helper(text)
    receipts = pl.LazyFrame({"origin": ["webhook"], "received_at": [at(1).date()]})
    with pytest.raises(
        TypeError, match=r"deliveries: received_at is Date.*cast\(pl\.Datetime\('us', 'UTC'\)\)"
    ):
        health.delivery_health(events, receipts)
    # a column of nulls only (no delivery carried a created_at) is no text
    nulls = pl.LazyFrame({"origin": ["webhook"], "received_at": [at(1)], "created_at": [None]})
    health.delivery_health(events, nulls.with_columns(event_type=pl.lit("message.status")))


def test_ids_and_codes_read_back_as_numbers_are_read_as_their_text() -> None:
    """Events saved to CSV and read back (Polars' or pandas' inference) hold the ids and
    error codes made of digits as numbers, floats where pandas met a null: the timelines
    failed with "conversion from `str` to `i64` failed in column 'literal'" (Kirim's code
    names against a numeric error_code)."""
    records = [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "failed", 5, 6, error=(131047, "Re-engagement message")),
        status("wamid.B", "delivered", 3, 4, recipient="628222222222"),
    ]
    events, copies = dedup(records)
    expected = message_timelines(events, copies=copies).collect().sort("message_id")
    as_numbers = events.with_columns(
        pl.col("phone_number_id", "recipient_id").cast(pl.Int64),
        pl.col("error_code").cast(pl.Float64),  # 131047.0, and null: pandas' float column
    )
    got = message_timelines(as_numbers, copies=copies).collect().sort("message_id")
    assert_frame_equal(got, expected)
    assert got["error_label"].to_list() == ["outside_24h_window", None]


def test_a_bad_filter_on_a_status_time_names_the_column_filtered() -> None:
    """Polars refuses to compare the UTC ``sent_at`` with a naive datetime, and pushes the
    filter down to where the column is made: the error named ``_o_sent``, a column the
    caller never saw, instead of ``sent_at``."""
    from datetime import datetime

    events, copies = dedup([status("wamid.A", "sent", 0, 1), status("wamid.A", "read", 9, 9)])
    timelines = message_timelines(events, copies=copies)
    naive = datetime(2026, 5, 23, 10, 0)
    for column in ("sent_at", "delivered_at", "read_at", "failed_at"):
        with pytest.raises(pl.exceptions.PolarsError) as caught:
            timelines.filter(pl.col(column) >= naive).collect()
        assert f"'{column}'" in str(caught.value)
        assert "_o_" not in str(caught.value)
    aware = timelines.filter(pl.col("sent_at") >= naive.replace(tzinfo=at(0).tzinfo))
    assert aware.collect()["message_id"].to_list() == ["wamid.A"]


def test_every_meta_code_of_the_error_table_gets_its_kirim_name_in_both_engines() -> None:
    # kirim-api.md §6.1, written out here: a label swapped or lost in the shared table
    # passed every test, both engines reading the same table
    table = {
        131047: "outside_24h_window",
        132015: "template_paused",
        132016: "template_disabled",
        132000: "template_param_count_mismatch",
        132001: "template_param_format_mismatch",
        1006: "recipient_not_on_whatsapp",
        1013: "recipient_blocked",
        131053: "media_download_failed",
    }
    records = [status(f"wamid.{code}", "failed", 0, 1, error=(code, "x")) for code in table]
    got = both("message_timelines", records)
    labels = dict(zip(got["message_id"], got["error_label"], strict=True))
    assert labels == {f"wamid.{code}": label for code, label in table.items()}


def test_kirims_own_message_events_are_no_status_events() -> None:
    """Only Meta's ``message.status`` callbacks build a timeline: Kirim's ``message.sent``
    (which names the wamid as ``provider_id``) is not one of its status events."""
    body = {
        "id": "evt_S",
        "type": "message.sent",
        "created_at": at(0).isoformat(),
        "data": {"message": {"id": "msg_1", "provider_id": "wamid.A", "status": "sent"}},
    }
    (sent,) = parse_delivery(json.dumps(body).encode(), {}, received_at=at(1))
    assert (sent.message_id, sent.status) == ("wamid.A", "sent")
    got = row(both("message_timelines", [sent, status("wamid.A", "delivered", 5, 6)]),
              message_id="wamid.A")  # fmt: skip
    assert (got["n_events"], got["sent_at"], got["never_sent"]) == (1, None, True)
