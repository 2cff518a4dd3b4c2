"""conversation_lifecycles / conversation_cycles edge cases from mutation testing, Polars and
DuckDB (each test fails with a mutant of conversations.py that the other tests let live)."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal
from test_analytics_support import at, both, by_key, conversation, dedup, duck, from_duck, row

from kirim_events.analytics.conversations import conversation_cycles, conversation_lifecycles


def test_the_closer_shown_is_the_one_of_the_last_close() -> None:
    records = [
        conversation("evt_a", "assigned", "cnv_1", 0, 1, user="usr_a"),
        conversation("evt_c1", "closed", "cnv_1", 10, 11, closed_by="usr_a"),
        conversation("evt_b", "assigned", "cnv_1", 20, 21, user="usr_b", previous="usr_a"),
        conversation("evt_c2", "closed", "cnv_1", 30, 31, closed_by="usr_b"),
        # two closes at one instant end one cycle: the later one names its closer
        conversation("evt_d", "assigned", "cnv_2", 0, 1, user="usr_a"),
        conversation("evt_c3", "closed", "cnv_2", 10, 11, closed_by="usr_a"),
        conversation("evt_c4", "closed", "cnv_2", 10, 12, closed_by="usr_c"),
    ]
    lifecycles = both("conversation_lifecycles", records)
    got = row(lifecycles, conversation_id="cnv_1")
    assert (got["closed_at"], got["closed_by_user_id"]) == (at(30), "usr_b")
    assert row(lifecycles, conversation_id="cnv_2")["closed_by_user_id"] == "usr_c"
    cycles = both("conversation_cycles", records)
    assert row(cycles, conversation_id="cnv_2")["closed_by_user_id"] == "usr_c"


def test_uncopied_conversations_keep_their_rows_when_copies_list_only_copied_events() -> None:
    # The lake's event_copies lists only events received more than once.
    records = [
        conversation("evt_1", "assigned", "cnv_a", 10, 11, user="usr_a"),
        conversation("evt_1", "assigned", "cnv_a", 10, 21, user="usr_a", attempt=2),
        conversation("evt_2", "assigned", "cnv_b", 10, 12, user="usr_b"),
    ]
    events, copies = dedup(records)
    copied_only = copies.filter(pl.col("n_copies") > 1)
    for view, helper in (
        ("conversation_lifecycles", conversation_lifecycles),
        ("conversation_cycles", conversation_cycles),
    ):
        got = by_key(helper(events, copies=copied_only).collect(), view)
        assert got.select("conversation_id", "n_duplicates").rows() == [
            ("cnv_a", 1),
            ("cnv_b", 0),
        ], view
        assert_frame_equal(got, by_key(from_duck(duck(events, copied_only), view), view))


def test_an_unassignment_naming_nobody_is_no_first_assignment() -> None:
    records = [
        conversation("evt_1", "assigned", "cnv_5", 5, 6, user=None),
        conversation("evt_2", "assigned", "cnv_5", 10, 11, user="usr_a"),
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_5")
    assert (got["first_assigned_at"], got["missing_first_assignment"]) == (at(10), False)


def test_assignments_of_one_second_follow_their_chain_not_their_arrival() -> None:
    # Kirim's created_at has whole seconds: an assignment and the reassignment after it can
    # share one. The reassignment arrived first (the other was retried); ordered by arrival,
    # the helpers showed usr_a as the assignee and two missing transitions, and took the
    # first assignment for unseen. Its previous_user_id names the one it follows.
    records = [
        conversation("evt_m", "message.received", "cnv_1", 0, 1),
        conversation("evt_a", "assigned", "cnv_1", 5, 20, user="usr_a"),
        conversation("evt_b", "assigned", "cnv_1", 5, 10, user="usr_b", previous="usr_a"),
        # a chain of three in one second, arriving backwards
        conversation("evt_m2", "message.received", "cnv_2", 0, 1),
        conversation("evt_c", "assigned", "cnv_2", 5, 30, user="usr_a"),
        conversation("evt_d", "assigned", "cnv_2", 5, 20, user="usr_b", previous="usr_a"),
        conversation("evt_e", "assigned", "cnv_2", 5, 10, user="usr_c", previous="usr_b"),
    ]
    want = {
        "cnv_1": ("usr_b", 0, False, at(5)),
        "cnv_2": ("usr_c", 0, False, at(5)),
    }
    columns = ["assignee_id", "n_missing_assignments", "missing_first_assignment"]
    for view in ("conversation_lifecycles", "conversation_cycles"):
        got = both(view, records)
        for cnv, expected in want.items():
            found = row(got, conversation_id=cnv)
            assert (*(found[c] for c in columns), found["first_assigned_at"]) == expected, view
