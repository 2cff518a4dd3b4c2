"""history_slices.Slice on its own: the order Kirim pages in, as the rows read show it (from
mutation testing: the backfill and reconcile tests walk slices, but let these rules change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kirim_events.client import format_time
from kirim_events.history_slices import ORDER_SLACK, Slice

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
