"""conversation_lifecycles / conversation_cycles on hand-built deliveries, Polars and DuckDB."""

from __future__ import annotations

import random

from polars.testing import assert_frame_equal
from test_analytics_support import at, both, conversation, row, status

from kirim_events.events import EventRecord


def _story() -> list[EventRecord]:
    """cnv_1: opened by a message at 5, assigned at 10, reassigned at 20, closed at 50,
    reopened by a message at 100."""
    return [
        status("wamid.O", "sent", 5, 6, conversation_id="cnv_1"),
        conversation("evt_a1", "assigned", "cnv_1", 10, 11, user="usr_a"),
        conversation("evt_a2", "assigned", "cnv_1", 20, 21, user="usr_b", previous="usr_a"),
        conversation("evt_c1", "closed", "cnv_1", 50, 51, closed_by="usr_b"),
        status("wamid.R", "sent", 100, 101, conversation_id="cnv_1"),
        conversation("evt_a3", "assigned", "cnv_1", 130, 131, user="usr_a", previous="usr_b"),
    ]


def test_lifecycle_of_a_reopened_conversation() -> None:
    got = row(both("conversation_lifecycles", _story()), conversation_id="cnv_1")
    assert got["opened_at"] == at(5)
    assert got["first_assigned_at"] == at(10)
    assert (got["n_assignments"], got["n_assignees"], got["assignee_id"]) == (3, 2, "usr_a")
    assert (got["n_closes"], got["n_reopens"], got["n_cycles"]) == (1, 1, 2)
    assert (got["closed_at"], got["closed_by_user_id"]) == (at(50), "usr_b")
    assert got["is_open"] is True
    assert got["time_to_first_assignment"] == 5.0
    assert got["time_to_close"] is None  # open now
    assert got["missing_opening"] is False
    assert (got["missing_first_assignment"], got["n_missing_assignments"]) == (False, 0)
    assert got["n_events"] == 6


def test_cycles_split_at_each_close() -> None:
    cycles = both("conversation_cycles", _story())
    assert cycles["cycle"].to_list() == [1, 2]
    first, second = cycles.to_dicts()
    assert (first["opened_at"], first["closed_at"], first["is_open"]) == (at(5), at(50), False)
    assert first["time_to_close"] == 45.0
    assert (first["n_assignments"], first["assignee_id"]) == (2, "usr_b")
    assert (second["opened_at"], second["is_reopen"], second["is_open"]) == (at(100), True, True)
    assert second["first_assigned_at"] == at(130)
    assert second["time_to_first_assignment"] == 30.0
    assert second["closed_at"] is None


def test_cycles_with_closes_at_one_instant_or_at_several() -> None:
    # Conversations closed never, once, several times at one instant, or at several instants,
    # with other events tying with the closes. The Polars cycles (a hash join, or an as-of
    # join for closes at several instants) must equal the DuckDB view (a window over every
    # event), and each event must fall in cycle 1 + the close instants strictly before it
    # (closes at one instant end one cycle: counting each made cycle numbers skip).
    rng = random.Random(5)
    records: list[EventRecord] = []
    times: dict[str, list[int]] = {}
    closes: dict[str, list[int]] = {}
    for c in range(48):
        cnv = f"cnv_{c:02d}"
        one_instant = c % 2 == 0
        close_times = [20 if one_instant else rng.choice([10, 20, 30]) for _ in range(c % 4)]
        user_times = [rng.choice([5, 10, 15, 20, 25, 30, 35]) for _ in range(3)]
        closes[cnv] = close_times
        times[cnv] = close_times + user_times
        for i, t in enumerate(close_times):
            records.append(conversation(f"evt_{c}_c{i}", "closed", cnv, t, t, closed_by="usr"))
        for i, t in enumerate(user_times):
            records.append(conversation(f"evt_{c}_a{i}", "assigned", cnv, t, t, user=f"u{i}"))
    expected: dict[tuple[str, int], int] = {}
    for cnv, ts in times.items():
        for t in ts:
            cycle = 1 + len({x for x in closes[cnv] if x < t})
            expected[(cnv, cycle)] = expected.get((cnv, cycle), 0) + 1
    cycles = both("conversation_cycles", records)
    got = {(r["conversation_id"], r["cycle"]): r["n_events"] for r in cycles.to_dicts()}
    assert got == expected
    assert max(cycle for _, cycle in got) >= 3
    for cnv in times:  # no cycle number is skipped
        numbers = sorted(cycle for c, cycle in got if c == cnv)
        assert numbers == list(range(1, len(numbers) + 1))


def test_closes_at_one_instant_make_one_reopen_not_two() -> None:
    records = [
        conversation("evt_a", "assigned", "cnv_9", 0, 0, user="u1"),
        conversation("evt_c1", "closed", "cnv_9", 10, 10, closed_by="u1"),
        conversation("evt_c2", "closed", "cnv_9", 10, 11, closed_by="u1"),
        conversation("evt_b", "assigned", "cnv_9", 15, 15, user="u1"),
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_9")
    assert (got["n_cycles"], got["n_reopens"], got["n_closes"]) == (2, 1, 2)
    cycles = both("conversation_cycles", records)
    assert cycles["cycle"].to_list() == [1, 2]


def test_close_arriving_before_the_assignment_uses_event_time() -> None:
    # Arrival order close, then assignment; event time says assignment came first.
    records = [
        conversation("evt_c", "closed", "cnv_2", 50, 60, closed_by="usr_a"),
        conversation("evt_a", "assigned", "cnv_2", 10, 70, user="usr_a"),
        status("wamid.O", "sent", 10, 80, conversation_id="cnv_2"),  # the opening, at 10 too
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_2")
    assert (got["n_cycles"], got["n_reopens"], got["is_open"]) == (1, 0, False)
    assert got["time_to_close"] == 40.0


def test_result_does_not_depend_on_arrival_order() -> None:
    expected = both("conversation_lifecycles", _story())
    rng = random.Random(3)
    for _ in range(5):
        records = _story()
        rng.shuffle(records)
        # Re-stamp arrival in the shuffled order; event times stay.
        restamped = [_restamp(r, i) for i, r in enumerate(records)]
        assert_frame_equal(both("conversation_lifecycles", restamped), expected)


def _restamp(record: EventRecord, received: int) -> EventRecord:
    from dataclasses import replace

    return replace(record, received_at=at(received))


def test_missing_first_assignment_is_flagged_not_invented() -> None:
    # The first assignment we see already names a previous user: the real first one is lost.
    records = [
        conversation("evt_x", "assigned", "cnv_3", 10, 11, user="usr_b", previous="usr_a"),
        conversation("evt_y", "closed", "cnv_3", 40, 41, closed_by="usr_b"),
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_3")
    assert got["missing_first_assignment"] is True
    assert got["first_assigned_at"] is None
    assert got["time_to_first_assignment"] is None
    assert got["n_missing_assignments"] == 1
    # The cycles say the same of cycle 1, rather than a time to first assignment of 0 s.
    (cycle,) = both("conversation_cycles", records).to_dicts()
    assert (cycle["missing_first_assignment"], cycle["first_assigned_at"]) == (True, None)
    assert cycle["time_to_first_assignment"] is None


def test_an_opening_never_seen_is_flagged_and_no_time_is_counted_from_it() -> None:
    """The first event seen an assignment (Meta messages without Kirim's block carry no
    conversation id) or a close (the lake starts mid-conversation): opened_at stood in for
    the opening, and the times from it came out 0 s (a median time to first assignment of
    0 s on a lake without the block)."""
    records = [
        conversation("evt_1", "assigned", "cnv_a", 600, 601, user="usr_a"),
        conversation("evt_2", "closed", "cnv_b", 900, 901, closed_by="usr_b"),
        status("wamid.O", "sent", 0, 1, conversation_id="cnv_c"),
        conversation("evt_3", "assigned", "cnv_c", 60, 61, user="usr_a"),
        conversation("evt_4", "closed", "cnv_c", 120, 121, closed_by="usr_a"),
        conversation("evt_5", "closed", "cnv_c", 300, 301, closed_by="usr_a"),  # no reopening
    ]
    life = both("conversation_lifecycles", records).sort("conversation_id")
    assert life["missing_opening"].to_list() == [True, True, False]
    assert life["opened_at"].to_list() == [at(600), at(900), at(0)]  # the first event seen
    assert life["time_to_first_assignment"].to_list() == [None, None, 60.0]
    assert life["time_to_close"].to_list() == [None, None, 300.0]
    cycles = both("conversation_cycles", records)
    assert cycles.select("conversation_id", "cycle", "missing_opening", "time_to_close").rows() == [
        ("cnv_a", 1, True, None),
        ("cnv_b", 1, True, None),
        ("cnv_c", 1, False, 120.0),
        ("cnv_c", 2, True, None),  # a cycle of one close: no zero-length time to close
    ]


def test_a_first_assignment_never_seen_is_flagged_in_its_own_cycle() -> None:
    """History that starts mid-conversation may show a close first: the first assignment
    seen then falls in cycle 2, and that cycle carries the flag."""
    records = [
        conversation("evt_0", "closed", "cnv_9", 5, 6, closed_by="usr_x"),
        conversation("evt_1", "assigned", "cnv_9", 10, 11, user="usr_b", previous="usr_a"),
    ]
    life = row(both("conversation_lifecycles", records), conversation_id="cnv_9")
    assert (life["missing_first_assignment"], life["first_assigned_at"]) == (True, None)
    first, second = both("conversation_cycles", records).to_dicts()
    assert first["missing_first_assignment"] is False
    assert (second["missing_first_assignment"], second["first_assigned_at"]) == (True, None)
    assert second["time_to_first_assignment"] is None


def test_a_later_cycle_starts_from_the_assignee_before_it() -> None:
    """After a reopen the first assignment is a reassignment from the last assignee: not
    missing, and the cycle's first assignment all the same."""
    records = [
        conversation("evt_1", "assigned", "cnv_5", 10, 11, user="usr_a"),
        conversation("evt_2", "closed", "cnv_5", 20, 21, closed_by="usr_a"),
        conversation("evt_3", "assigned", "cnv_5", 30, 31, user="usr_b", previous="usr_a"),
    ]
    first, second = both("conversation_cycles", records).to_dicts()
    assert (first["first_assigned_at"], first["missing_first_assignment"]) == (at(10), False)
    assert (second["first_assigned_at"], second["missing_first_assignment"]) == (at(30), False)
    # no message seen reopened it: the assignment stands in for the opening, no time from it
    assert (second["missing_opening"], second["time_to_first_assignment"]) == (True, None)
    assert first["n_missing_assignments"] + second["n_missing_assignments"] == 0


def test_missing_reassignment_is_counted() -> None:
    records = [
        conversation("evt_1", "assigned", "cnv_4", 10, 11, user="usr_a"),
        # usr_a -> usr_b was never seen: this one says its previous user is usr_b.
        conversation("evt_2", "assigned", "cnv_4", 30, 31, user="usr_c", previous="usr_b"),
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_4")
    assert (got["missing_first_assignment"], got["n_missing_assignments"]) == (False, 1)
    assert got["first_assigned_at"] == at(10)


def test_unassignment_is_not_an_assignment() -> None:
    records = [
        conversation("evt_1", "assigned", "cnv_5", 10, 11, user="usr_a"),
        conversation("evt_2", "assigned", "cnv_5", 20, 21, user=None, previous="usr_a"),
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_5")
    assert (got["n_assignments"], got["n_assignees"], got["assignee_id"]) == (1, 1, None)
    assert got["n_missing_assignments"] == 0


def test_event_at_the_instant_of_a_close_does_not_reopen() -> None:
    records = [
        conversation("evt_1", "assigned", "cnv_6", 10, 11, user="usr_a"),
        conversation("evt_2", "closed", "cnv_6", 40, 41, closed_by="usr_a"),
        status("wamid.S", "read", 40, 42, conversation_id="cnv_6"),
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_6")
    assert (got["n_cycles"], got["is_open"]) == (1, False)


def test_duplicates_counted_once() -> None:
    records = [
        conversation("evt_1", "assigned", "cnv_7", 10, 11, user="usr_a"),
        conversation("evt_1", "assigned", "cnv_7", 10, 21, user="usr_a", attempt=2),
        conversation("evt_2", "closed", "cnv_7", 40, 41, closed_by="usr_a"),
    ]
    got = row(both("conversation_lifecycles", records), conversation_id="cnv_7")
    assert (got["n_assignments"], got["n_events"], got["n_duplicates"]) == (1, 2, 1)


def test_as_of_answers_as_the_world_looked_then() -> None:
    story = _story()
    before = both("conversation_lifecycles", story, as_of=at(4))
    assert before.height == 0  # not opened yet
    waiting = row(both("conversation_lifecycles", story, as_of=at(15)), conversation_id="cnv_1")
    assert (waiting["is_open"], waiting["n_assignments"], waiting["assignee_id"]) == (
        True,
        1,
        "usr_a",
    )
    closed = row(both("conversation_lifecycles", story, as_of=at(60)), conversation_id="cnv_1")
    assert (closed["is_open"], closed["n_cycles"], closed["time_to_close"]) == (False, 1, 45.0)
    reopened = row(both("conversation_lifecycles", story, as_of=at(100)), conversation_id="cnv_1")
    assert (reopened["is_open"], reopened["n_reopens"]) == (True, 1)
    cycles = both("conversation_cycles", story, as_of=at(100))
    assert cycles["cycle"].to_list() == [1, 2]
    assert cycles["first_assigned_at"].to_list() == [at(10), None]
