"""Time slices of Kirim's delivery history, and walks over them that survive a refused cursor.

Backfill cuts its range into slices (checkpointed, walked by several threads); reconcile walks
its range as one slice (not saved). Both read ``HISTORY_OVERLAP`` past each end of a slice
and keep only the rows inside it, learn from the rows read in which time order Kirim pages
(kirim-api.md §7.3 only assumes newest first), and, when Kirim refuses a cursor (expired during
a long walk, say), start a new chain of pages that skips what was read
(:meth:`Slice.restart`, :func:`walk_restarting`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kirim_events.client import Delivery, format_time
from kirim_events.errors import CursorRefused, PermanentApiError
from kirim_events.events import parse_time

__all__ = [
    "HISTORY_OVERLAP",
    "MIN_SLICE",
    "ORDER_SLACK",
    "RESTARTS_WITHOUT_PROGRESS",
    "Slice",
    "split",
    "stale_cursor",
    "untimed_mark",
    "walk_restarting",
]

HISTORY_OVERLAP = timedelta(seconds=2)
"""Walks of the history reach this far past each end, then keep only the rows inside the
range: Kirim does not say whether ``created_after`` / ``created_before`` are inclusive, nor
to what precision it compares them (its times show milliseconds; a server comparing whole
seconds, both ends exclusive, lost every row of the second at each slice's edge with 1 ms).
A row fetched twice is harmless (dedup index; exact copies of delivery rows)."""
ORDER_SLACK = HISTORY_OVERLAP / 2
"""How far a row may be out of time order and still count as in order (clock skew between
Kirim's servers): half the margin a restarted chain reads back (:meth:`Slice.restart`)."""
RESTARTS_WITHOUT_PROGRESS = 3
"""Refused cursors in a row whose new chain skipped no more than the one before, before the
refusal stands."""
MIN_SLICE = timedelta(minutes=1)
"""The shortest time slice a range is cut into (a shorter range is fewer slices): each
slice reads ``HISTORY_OVERLAP`` past both ends, which must stay a small part of it."""


def _time(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


@dataclass
class Slice:
    """A stretch ``[after, before)`` of the history and how far its walk has come (the
    fields are a backfill checkpoint's, as JSON: keep their names)."""

    after: str  # ISO; rows kept when after <= created_at < before
    before: str
    cursor: str | None = None
    started: bool = False
    done: bool = False
    pages: int = 0
    rows: int = 0
    oldest: str | None = None  # oldest created_at stored
    newest: str | None = None  # newest created_at stored
    fetch_before: str | None = None  # created_before the cursor is bound to (None: before)
    fetch_after: str | None = None  # created_after the cursor is bound to (None: after)
    restarts: int = 0  # cursor chains restarted after Kirim refused a stale cursor
    # The order Kirim pages in, as seen: the lowest and highest created_at of the current
    # chain's rows, and whether a row was ever more than ORDER_SLACK older than the chain's
    # highest (went_back) or newer than its lowest (went_forward) before it. Clock skew below
    # that does not count: a restart reads HISTORY_OVERLAP, twice as much, back past what
    # was stored.
    low: str | None = None
    high: str | None = None
    went_back: bool = False
    went_forward: bool = False

    def direction(self) -> str | None:
        """``newest first`` or ``oldest first`` once the rows read show it, else None."""
        if self.went_back != self.went_forward:
            return "newest first" if self.went_back else "oldest first"
        return None

    def fraction(self) -> float:
        """How much of the slice has been read, from 0 to 1."""
        if self.done:
            return 1.0
        lo, hi = _seconds(self.after), _seconds(self.before)
        if self.direction() == "oldest first" and self.newest is not None:
            read = _seconds(self.newest) - lo
        elif self.oldest is not None:
            read = hi - _seconds(self.oldest)
        else:
            return 0.0
        return min(1.0, max(0.0, read / max(hi - lo, 1e-6)))

    def window(self) -> tuple[datetime, datetime]:
        """The ``created_after`` / ``created_before`` the current chain asks for."""
        lo, hi = _time(self.fetch_after), _time(self.fetch_before)
        after, before = parse_time(self.after), parse_time(self.before)
        assert after is not None
        assert before is not None
        return (
            lo if lo is not None else after - HISTORY_OVERLAP,
            hi if hi is not None else before + HISTORY_OVERLAP,
        )

    def stretch(self, times: Iterable[datetime]) -> None:
        """Widen the stored bounds (``oldest``, ``newest``) to the times of rows stored."""
        times = list(times)
        if not times:
            return
        oldest, newest = _time(self.oldest), _time(self.newest)
        low, high = min(times), max(times)
        self.oldest = format_time(low if oldest is None else min(oldest, low))
        self.newest = format_time(high if newest is None else max(newest, high))

    def note_order(self, times: Iterable[datetime]) -> None:
        """Add a page's row times (in the order served) to what is known of Kirim's order."""
        low, high = _time(self.low), _time(self.high)
        for t in times:
            if low is not None and high is not None:
                self.went_back = self.went_back or t < high - ORDER_SLACK
                self.went_forward = self.went_forward or t > low + ORDER_SLACK
            low = t if low is None else min(low, t)
            high = t if high is None else max(high, t)
        self.low = None if low is None else format_time(low)
        self.high = None if high is None else format_time(high)

    def restart(self) -> bool:
        """Start a new chain of pages after Kirim refused the cursor; True when the new chain
        asks for less than the last one did (progress).

        Newest first (no row was more than ``ORDER_SLACK`` newer than the lowest before it),
        the rows to come are at most that much newer than the oldest stored: the chain starts
        ``HISTORY_OVERLAP`` (twice that) above it, which also covers a Kirim that compares
        whole seconds. Oldest first, likewise below the newest stored. While the order is
        unknown (too few rows, or rows that go both ways), the whole slice is read again,
        which is no progress.
        """
        lo, hi = self.window()
        direction = self.direction()
        oldest, newest = _time(self.oldest), _time(self.newest)
        if direction == "newest first" and oldest is not None:
            self.fetch_before = format_time(min(oldest + HISTORY_OVERLAP, hi))
        elif direction == "oldest first" and newest is not None:
            self.fetch_after = format_time(max(newest - HISTORY_OVERLAP, lo))
        else:
            self.fetch_after = self.fetch_before = None
        self.cursor, self.low, self.high = None, None, None
        self.restarts += 1
        new_lo, new_hi = self.window()
        return new_lo > lo or new_hi < hi


def _seconds(text: str) -> float:
    value = parse_time(text)
    assert value is not None
    return value.timestamp()


def split(since: datetime, until: datetime, n: int) -> list[Slice]:
    """``[since, until)`` cut into ``n`` slices of equal length, none shorter than
    ``MIN_SLICE`` (so fewer for a short range)."""
    n = max(1, min(n, (until - since) // MIN_SLICE))
    step = (until - since) / n
    edges = [since + step * i for i in range(n)] + [until]
    return [
        Slice(after=format_time(a), before=format_time(b))
        for a, b in itertools.pairwise(edges)
        if b > a
    ]


def stale_cursor(exc: PermanentApiError) -> bool:
    """Kirim refused the cursor: ``invalid_cursor`` (kirim-api.md §7.3), or, tolerantly, any
    code naming the cursor or a 410 Gone (how an expired one is refused is undocumented)."""
    return "cursor" in (exc.code or "") or exc.status_code == 410


def untimed_mark(d: Delivery) -> str:
    """What tells one row without a readable time from another: its id, or without one
    what the row holds (the same row sent to two slices is one row)."""
    if d.id:
        return f"id:{d.id}"
    row = json.dumps(dataclasses.asdict(d), sort_keys=True, default=str)
    return "row:" + hashlib.sha256(row.encode()).hexdigest()


def walk_restarting(
    s: Slice,
    walk: Callable[[], None],
    *,
    restart: Callable[[], bool] | None = None,
    needs_order: bool = False,
) -> None:
    """Call ``walk`` (which pages ``s`` from its cursor, keeping the cursor and the order
    seen in ``s``) until it returns. When Kirim refuses the cursor, ``restart`` (by default
    ``s.restart``; a backfill's also saves its checkpoint) starts a new chain and ``walk``
    runs again. The refusal stands when ``s`` has no cursor (the first page was refused),
    with ``needs_order`` while the rows read show no plain order, and after
    ``RESTARTS_WITHOUT_PROGRESS`` new chains in a row that skipped no more than before: the
    last two raise :class:`CursorRefused`, saying so, from Kirim's error (after the last
    restart: what was read stays skipped when the walk is run again)."""
    stuck = refusals = 0
    while True:
        try:
            walk()
            return
        except PermanentApiError as exc:
            if not stale_cursor(exc) or s.cursor is None:
                raise
            refusals += 1
            if needs_order and s.direction() is None:
                raise CursorRefused(
                    f"Kirim refused the cursor of the history's pages ({_stretch(s)}), and the"
                    " rows read so far show no time order to start a new chain of pages from"
                    " without skipping rows: stopped; the rows read are kept. The refusal:",
                    refusals=refusals,
                    cause=exc,
                ) from exc
            stuck = 0 if (restart or s.restart)() else stuck + 1
            if stuck > RESTARTS_WITHOUT_PROGRESS:
                how = (
                    "the rows read show no plain time order (too few of them, or going both"
                    " ways), so each new chain read the stretch again from its start"
                    if s.direction() is None
                    else f"each new chain starts {HISTORY_OVERLAP.seconds} s back from the"
                    " rows stored, and none got further than that before its cursor was"
                    " refused (a history denser than a few pages per"
                    f" {HISTORY_OVERLAP.seconds} s)"
                )
                raise CursorRefused(
                    f"Kirim refused the cursor of the history's pages {stuck} times in a row"
                    f" without the walk getting further ({_stretch(s)}; {refusals} refusals"
                    f" in all): {how}. Stopped rather than read the same pages again; the"
                    " rows read are kept. The last refusal:",
                    refusals=refusals,
                    cause=exc,
                ) from exc


def _stretch(s: Slice) -> str:
    """The part of the slice still to read, for an error message."""
    lo, hi = s.window()
    return f"created {format_time(lo)} to {format_time(hi)}"
