"""Bulk-replay windows: cut terminal deliveries into windows, replay one (halved when capped)."""

from __future__ import annotations

from datetime import datetime, timedelta

from kirim_events.client import BULK_REPLAY_CAP, KirimClient
from kirim_events.errors import ApiError, AuthenticationError, RateLimitTooLong
from kirim_events.reconcile_report import BulkWindow, ReconcileReport

__all__ = ["bulk_replay_window", "plan_windows"]


def plan_windows(
    rows: list[tuple[str, str, datetime]], cap: int = BULK_REPLAY_CAP
) -> list[BulkWindow]:
    """Cut (subscription, status, created_at) rows into windows of at most ``cap`` rows each.

    Windows meet at a whole millisecond halfway between two rows of different times (never
    between rows of one instant), so no row lies on an edge whether Kirim compares its
    milliseconds (the precision its times show) or microseconds, and a row is in exactly
    one window whether Kirim's ``created_after`` and ``created_before`` include their
    instant or not (kirim-api.md §7.4 does not say); rows under 2 ms apart have no such
    millisecond between them, and there the windows overlap (:func:`_edges`).
    Edges on row times left the row where one window ends and the next begins in neither
    when Kirim excludes both ends. (A Kirim comparing whole seconds could still drop a row
    of the second an edge falls in: only overlapping windows, each re-sending some rows,
    would cover that.) The first window opens a second before its first row, the last
    closes a second after its last.
    More than ``cap`` rows at one instant cannot be cut: their window holds them all (its
    ``rows`` above ``cap``), and :func:`~kirim_events.reconcile.reconcile` replays them one
    by one instead.
    """
    out: list[BulkWindow] = []
    groups: dict[tuple[str, str], list[datetime]] = {}
    for sub, status, created in rows:
        groups.setdefault((sub, status), []).append(created)
    for (sub, status), times in sorted(groups.items()):
        times.sort()
        start = 0
        while start < len(times):
            end = min(start + cap, len(times))
            while end < len(times) and end > start + 1 and times[end] == times[end - 1]:
                end -= 1  # never cut between equal times
            while end < len(times) and times[end] == times[start]:
                end += 1  # more than cap rows at one instant: one window holds them all
            lo = times[start] - timedelta(seconds=1) if start == 0 else _edges(times, start)[1]
            hi = _edges(times, end)[0] if end < len(times) else times[-1] + timedelta(seconds=1)
            out.append(BulkWindow(sub, status, lo, hi, end - start))
            start = end
    return out


_MS = timedelta(milliseconds=1)


def _ms(when: datetime) -> datetime:
    """``when`` to its whole millisecond (the precision Kirim's times show)."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def _edges(times: list[datetime], i: int) -> tuple[datetime, datetime]:
    """Where the window that ends before row ``i`` closes, and where the one that begins
    with it opens (``times`` sorted, ``times[i - 1]`` before ``times[i]``).

    The whole millisecond nearest halfway between the two rows, when one lies strictly
    between them: one edge for both windows, read alike by a Kirim comparing micro- or
    milliseconds. (A halfway edge in microseconds between rows 1 ms apart was read to its
    millisecond as the earlier row's time, which both windows then excluded.) With no
    whole millisecond between them (rows under 2 ms apart), the earlier window closes at
    the first millisecond after its last row and the later opens at the last millisecond
    before its first: each row stays inside its own window at either precision, and a
    Kirim including an end replays the row beyond it twice (the dedup index absorbs it).
    """
    before, after = times[i - 1], times[i]
    edge = _ms(before + (after - before) / 2)
    if edge <= before:
        edge += _MS  # the first whole millisecond after ``before``
    if edge < after:
        return edge, edge
    return _ms(before) + _MS, _ms(after) - _MS if after == _ms(after) else _ms(after)


def bulk_replay_window(
    client: KirimClient,
    window: BulkWindow,
    report: ReconcileReport,
    *,
    event_type: str | None = None,
    depth: int = 0,
) -> None:
    """``bulk_replay`` one window; when Kirim answers ``capped``, halve it and repeat both.

    Counts calls and enqueued deliveries into ``report``; API errors are recorded in
    ``report.errors`` (and ``report.failures``) rather than raised, so one bad window does
    not stop the others; except those that every later call would meet too, raised to stop
    them all: RateLimitTooLong, and AuthenticationError (the key refused).
    """
    try:
        result = client.bulk_replay(
            window.subscription_id,
            status=window.status,
            event_type=event_type,
            created_after=window.created_after,
            created_before=window.created_before,
        )
    except (RateLimitTooLong, AuthenticationError):
        raise
    except ApiError as exc:
        report.errors.append(f"bulk_replay {window.subscription_id} {window.status}: {exc}")
        report.failures.append(exc)
        return
    report.bulk_calls += 1
    report.bulk_enqueued += result.enqueued
    if not result.capped:
        return
    # More rows than planned (new ones since the walk, or no plan): halve the window and
    # repeat both halves. The capped call already replayed up to 1000 of them; the repeats
    # send those again, which the collector's dedup index absorbs.
    if depth >= 20:
        report.errors.append(f"bulk_replay still capped at {window.created_after.isoformat()}")
        return
    w = window
    # The halves overlap by the millisecond either side of the midpoint, which may be a
    # row's own time: meeting there, that row was in neither half when Kirim excludes both
    # ends, and never replayed (as _edges says for planned windows)
    mid = _ms(w.created_after + (w.created_before - w.created_after) / 2)
    for half in (
        BulkWindow(w.subscription_id, w.status, w.created_after, mid + _MS, w.rows // 2),
        BulkWindow(w.subscription_id, w.status, mid - _MS, w.created_before, w.rows - w.rows // 2),
    ):
        bulk_replay_window(client, half, report, event_type=event_type, depth=depth + 1)
