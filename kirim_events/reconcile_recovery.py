"""Reconcile's recovery: choose each missing event's action, then import or ask Kirim to replay."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import datetime
from typing import Any

from kirim_events.backfill import delivery_row
from kirim_events.client import BULK_REPLAY_CAP, KirimClient
from kirim_events.errors import ApiError, AuthenticationError, RateLimitTooLong
from kirim_events.journal import Journal
from kirim_events.reconcile_report import TERMINAL, BulkWindow, MissingEvent, ReconcileReport
from kirim_events.reconcile_windows import bulk_replay_window, plan_windows

__all__ = ["SENT_BY_KIRIM", "check_subscriptions", "explain", "plan_recovery", "recover"]

_RESENDS_PER_CALL = 50
"""A bulk_replay window re-sends every dead/failed delivery in it, stored or not. It is chosen
over single replays when it costs less, counting 50 needless re-sends as one call (a call
spends Kirim's write quota, 60 a minute on the smallest plan; a re-send is one more request
the collector's dedup index absorbs)."""


def plan_recovery(
    report: ReconcileReport,
    terminal: list[tuple[str, str, datetime, str | None]],
    replayed: Collection[str] = frozenset(),
) -> None:
    """Give each missing event its action; bulk windows where they cost fewer calls.

    ``terminal`` holds the history's dead and failed rows (subscription, status, created,
    id). A delivery in ``replayed`` (a replay of it is in the history) is replayed alone: it
    may have left Kirim's dead-letter queue, which is all bulk_replay takes (kirim-api.md §3
    says a delivery waits there "until replayed"; the emulator reads it so), so a window
    would send nothing for it, while a single replay takes any delivery; nor is it counted
    in a window's rows, which :func:`recover` checks Kirim's ``enqueued`` against."""
    queued = [(sub, st, at) for sub, st, at, ident in terminal if ident not in replayed]
    for m in report.missing:
        m.action = "import" if m.records else "await" if m.pending else "replay"
    groups: dict[tuple[str, str], list[MissingEvent]] = {}
    for m in report.missing:
        if m.delivery_id in replayed:
            continue
        if m.action == "replay" and m.status in TERMINAL and m.subscription_id and m.created_at:
            groups.setdefault((m.subscription_id, m.status), []).append(m)
    for (sub, status), members in groups.items():
        # the windows must hold the very rows chosen for replay, not each event's first one
        first = min(m.created_at for m in members if m.created_at)
        last = max(m.created_at for m in members if m.created_at)
        rows = [r for r in queued if r[0] == sub and r[1] == status and first <= r[2] <= last]
        # recover checks Kirim's enqueued against the queued rows strictly inside each window
        windows = [_least(w, queued) for w in plan_windows(rows)]
        unique_deliveries = {m.delivery_id for m in members}
        crowded = any(w.rows > BULK_REPLAY_CAP for w in windows)  # Kirim would cap it
        needless = sum(w.rows for w in windows) - len(unique_deliveries)
        bulk_cost = len(windows) + needless / _RESENDS_PER_CALL
        if bulk_cost < len(unique_deliveries) and not crowded:
            report.windows.extend(windows)
            for m in members:
                m.action = "bulk_replay"


SENT_BY_KIRIM = ("replay", "bulk_replay", "await")  # actions that need Kirim to deliver


def check_subscriptions(
    report: ReconcileReport, client: KirimClient, known: dict[str, str | None] | None = None
) -> None:
    """Hold the replays to a subscription Kirim does not send to (``disabled`` after its
    auto-disable, kirim-api.md §3): they would only wait in its queue, and every run of
    reconcile would add more; and say that its pending deliveries are held, not retried.
    A subscription that cannot be read is replayed to, with a note. ``known``: the
    statuses the run already read (:func:`~kirim_events.subscription_health.read_statuses`),
    not asked for again.
    """
    subs = {
        m.subscription_id
        for m in report.missing
        if m.action in SENT_BY_KIRIM and m.subscription_id is not None
    }
    for sub in sorted(subs):
        if known is not None and sub in known:
            status = known[sub]
        else:
            try:
                status = client.get_subscription(sub).get("status")
            except RateLimitTooLong:
                raise
            except ApiError as exc:
                report.notes.append(
                    f"cannot read subscription {sub} ({exc}): taken to be active (its missing"
                    " events are replayed or awaited as the plan says)"
                )
                continue
        if status is None or status == "active":
            continue
        held = [m for m in report.missing if m.subscription_id == sub and m.action != "import"]
        for m in held:
            m.action = "held"
        report.windows = [w for w in report.windows if w.subscription_id != sub]
        message = (
            f"subscription {sub} is {status}: Kirim sends nothing to it, so its {len(held)}"
            " missing event(s) cannot come now (replays would only wait in its queue). Once the"
            " collector"
            f" answers, make it active again (PATCH /v1/webhook_subscriptions/{sub} with"
            ' {"status": "active"}, or in Kirim\'s dashboard) and run reconcile again'
        )
        (report.notes if report.dry_run else report.errors).append(message)


def explain(report: ReconcileReport) -> None:
    """Note why events awaiting Kirim's retries are not replayed."""
    waiting = report.actions["await"]
    if waiting:
        report.notes.append(
            f"{waiting} missing event(s) have a delivery Kirim is still retrying (pending): not"
            " replayed, they come with its next attempt; run reconcile again after Kirim's"
            " retries end (about 31 hours) to replay what is still missing then"
        )


def recover(
    report: ReconcileReport,
    client: KirimClient,
    journal: Journal,
    lake: Any,
    receipts: list[dict[str, Any]],
) -> None:
    """Import what can be, with its history rows and ``receipts``, and flush the journal
    (always: also what a killed run imported); ask Kirim for the rest."""
    journal.forget_keys(m.key for m in report.missing if m.lost)
    imports = [m for m in report.missing if m.action == "import"]
    records = [r for m in imports for r in m.records]
    if records or receipts:
        # one row per history row, however many of its events are missing
        rows = {
            (d.id, d.attempt, d.created_at, d.event_id): (d, n, m.records[0].received_at)
            for m in imports
            for d, n in m.sources
        }
        receipts = [
            *receipts,
            *(delivery_row(d, received_at=at, n_events=n) for d, n, at in rows.values()),
        ]
        flags = journal.append(records, receipts)
        report.imported = sum(flags)
    # always: what an earlier run imported and was killed before flushing is held by the
    # dedup index, so not missing now, and waits in the journal until a flush
    journal.flush(lake, batch_size=10_000)
    done: set[str] = set()
    try:
        for m in report.missing:
            if m.action == "replay" and m.delivery_id and m.delivery_id not in done:
                _replay_one(report, client, m.delivery_id, done)
        for w in report.windows:
            enqueued, errors = report.bulk_enqueued, len(report.errors)
            bulk_replay_window(client, w, report)
            if len(report.errors) == errors and report.bulk_enqueued - enqueued < w.least:
                _replay_left_out(report, client, w, report.bulk_enqueued - enqueued, done)
    except (RateLimitTooLong, AuthenticationError) as exc:
        # every further call would be refused the same way (a key refused: one error line,
        # not one per delivery)
        report.errors.append(f"replays stopped: {exc}")
        report.failures.append(exc)


def _least(w: BulkWindow, queued: list[tuple[str, str, datetime]]) -> BulkWindow:
    """``w`` with ``least`` the queued rows of its subscription and status strictly between
    its edges (those within its margin past the first and last member too): Kirim enqueues
    each of them, whichever of its ends it includes, unless it has left the queue."""
    least = sum(
        1
        for sub, status, at in queued
        if (sub, status) == (w.subscription_id, w.status)
        and w.created_after < at < w.created_before
    )
    return dataclasses.replace(w, least=least)


def _replay_left_out(
    report: ReconcileReport, client: KirimClient, w: BulkWindow, enqueued: int, done: set[str]
) -> None:
    """Replay alone each missing event of window ``w``, for which Kirim enqueued fewer
    deliveries than the history shows there: some had left its dead-letter queue, replayed
    before by a replay the walk did not see (created after ``--until``: an earlier
    reconcile of the same range whose replays died too, say), and a window sends nothing
    for those (kirim-api.md §3; the emulator's reading). Which ones Kirim left out is not
    said, so every missing event of the window is replayed alone: those it did enqueue
    come twice, and the collector's dedup index absorbs them."""
    members = [
        m
        for m in report.missing
        if m.action == "bulk_replay"
        and m.delivery_id
        and m.delivery_id not in done
        and (m.subscription_id, m.status) == (w.subscription_id, w.status)
        and m.created_at is not None
        and w.created_after <= m.created_at <= w.created_before
    ]
    report.notes.append(
        f"bulk_replay of {w.status} deliveries {w.created_after.isoformat()} to"
        f" {w.created_before.isoformat()} enqueued {enqueued} of the {w.least} the history"
        " shows: the others had left Kirim's dead-letter queue (replayed before), so its"
        f" {len(members)} missing event(s) were replayed one by one"
    )
    for m in members:
        assert m.delivery_id is not None
        _replay_one(report, client, m.delivery_id, done)


def _replay_one(
    report: ReconcileReport, client: KirimClient, delivery_id: str, done: set[str]
) -> None:
    """Replay one delivery (noted in ``done``); a refusal is an error line, except those
    every further call would get too (a key refused, a long rate limit), which are raised."""
    done.add(delivery_id)
    try:
        client.replay(delivery_id)
        report.replayed += 1
    except (RateLimitTooLong, AuthenticationError):
        raise
    except ApiError as exc:
        report.errors.append(f"replay {delivery_id}: {exc}")
        report.failures.append(exc)
