"""history_slices on its own: the order Kirim pages in, as the rows read show it, and how many
refused cursors a walk survives (from mutation testing: the backfill and reconcile tests walk
slices, but let these rules change)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from kirim_events.client import format_time
from kirim_events.errors import CursorRefused, PermanentApiError
from kirim_events.history_slices import (
    ORDER_SLACK,
    RESTARTS_WITHOUT_PROGRESS,
    Slice,
    walk_restarting,
)

T0 = datetime(2026, 5, 23, 10, 0, tzinfo=UTC)


def _slice() -> Slice:
    return Slice(after=format_time(T0), before=format_time(T0 + timedelta(hours=1)))


def _newest_first_with_skew(skew: timedelta) -> Slice:
    """A slice that read rows newest first, one of them ``skew`` newer than the lowest
    before it (clock skew between Kirim's servers)."""
    s = _slice()
    s.note_order([T0 + timedelta(seconds=50), T0 + timedelta(seconds=40)])
    s.note_order([T0 + timedelta(seconds=40) + skew, T0 + timedelta(seconds=30)])
    return s


def test_skew_within_the_order_slack_keeps_the_order_seen() -> None:
    assert timedelta(seconds=1) == ORDER_SLACK  # half the overlap a restart reads back
    assert _newest_first_with_skew(timedelta(milliseconds=900)).direction() == "newest first"
    assert _newest_first_with_skew(ORDER_SLACK).direction() == "newest first"


def test_skew_beyond_the_order_slack_leaves_the_order_unknown() -> None:
    s = _newest_first_with_skew(timedelta(milliseconds=1100))
    assert (s.went_back, s.went_forward) == (True, True)
    assert s.direction() is None


def test_skew_up_to_the_order_slack_keeps_an_oldest_first_order_too() -> None:
    s = _slice()
    s.note_order([T0 + timedelta(seconds=30), T0 + timedelta(seconds=40)])
    s.note_order([T0 + timedelta(seconds=40) - ORDER_SLACK, T0 + timedelta(seconds=50)])
    assert s.direction() == "oldest first"
    s.note_order([T0 + timedelta(seconds=50) - ORDER_SLACK - timedelta(milliseconds=100)])
    assert s.direction() is None


class RefusingChain:
    """A walk of a slice whose cursor Kirim refuses ``refusals`` times, then lets it end.
    ``reads[i]`` are the row times (newest first) the i-th walk stores before its refusal;
    a walk that stores none gets no further, so the new chain after it skips no more."""

    def __init__(self, s: Slice, refusals: int, reads: dict[int, list[datetime]]) -> None:
        self.s, self.refusals, self.reads, self.walks = s, refusals, reads, 0

    def walk(self) -> None:
        n, self.walks = self.walks, self.walks + 1
        self.s.cursor = f"page-{n}"  # a page was read: the refusal is of a later one
        times = self.reads.get(n, [])
        self.s.note_order(times)
        self.s.stretch(times)
        if n < self.refusals:
            raise PermanentApiError(
                "the cursor has expired", status_code=400, code="invalid_cursor"
            )
        self.s.done = True


def _walk(refusals: int, reads: Iterable[tuple[int, list[datetime]]] = ()) -> Slice:
    """Walk a slice (restarted by Slice.restart) through ``refusals`` refused cursors."""
    s = _slice()
    chain = RefusingChain(s, refusals, dict(reads))
    walk_restarting(s, chain.walk)
    assert s.done
    assert chain.walks == refusals + 1
    return s


def _rows(minute: int) -> list[datetime]:
    """Rows newest first, down to ``minute`` of the slice: a chain that got that far."""
    return [T0 + timedelta(minutes=m) for m in (minute + 2, minute + 1, minute)]


def test_a_walk_survives_exactly_restarts_without_progress_refusals_in_a_row() -> None:
    assert RESTARTS_WITHOUT_PROGRESS == 3
    # No row read shows an order: each new chain reads the slice again from its start.
    s = _walk(RESTARTS_WITHOUT_PROGRESS)
    assert s.restarts == RESTARTS_WITHOUT_PROGRESS
    chain = RefusingChain(_slice(), RESTARTS_WITHOUT_PROGRESS + 1, {})
    with pytest.raises(CursorRefused, match="4 times in a row without the walk") as info:
        walk_restarting(chain.s, chain.walk)
    assert info.value.refusals == RESTARTS_WITHOUT_PROGRESS + 1
    assert chain.walks == RESTARTS_WITHOUT_PROGRESS + 1
    # the last refusal restarted the chain too: a walk run again skips what was read
    assert chain.s.restarts == RESTARTS_WITHOUT_PROGRESS + 1
    assert not chain.s.done


@pytest.mark.parametrize("got_further_at", [0, 1, RESTARTS_WITHOUT_PROGRESS - 1])
def test_a_chain_that_got_further_gives_the_walk_the_whole_count_again(
    got_further_at: int,
) -> None:
    """A refusal after a chain that stored rows further down starts the count afresh: from
    0, so ``RESTARTS_WITHOUT_PROGRESS`` more refusals that get no further still pass."""
    refusals = got_further_at + 1 + RESTARTS_WITHOUT_PROGRESS
    s = _walk(refusals, [(got_further_at, _rows(30))])
    assert s.direction() == "newest first"
    assert s.restarts == refusals
    chain = RefusingChain(_slice(), refusals + 1, {got_further_at: _rows(30)})
    with pytest.raises(CursorRefused, match="4 times in a row without the walk") as info:
        walk_restarting(chain.s, chain.walk)
    assert info.value.refusals == refusals + 1


def test_chains_that_each_get_further_are_never_refused_for_good() -> None:
    refusals = 5 * RESTARTS_WITHOUT_PROGRESS
    s = _walk(refusals, [(i, _rows(55 - 3 * i)) for i in range(refusals)])
    assert s.restarts == refusals
    assert s.window()[1] < T0 + timedelta(minutes=15)  # the last chain started down there
