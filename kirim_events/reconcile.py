"""Reconcile: find the events Kirim's delivery history knows that the store lacks; recover them.

``reconcile(data, client=..., since=...)`` walks the history for ``[since, until)`` (a
cursor Kirim refuses on the way starts a new chain that skips what was read, as in a backfill)
and decides, per event, whether the store already holds it:

* A history row with its ``payload`` is parsed into events; an ``event_key`` that neither the
  journal's dedup index nor the lake holds is missing.
* A row without ``payload`` only names ``event_id`` and ``event_type``. For most types the
  event id is the event's key (``evt_`` ids, inbound wamids), checked against the index and
  the lake's ``event_id``.
* An event the dedup index holds is checked against the journal's inbox and then the lake
  as well (by an 8-byte hash kept per such event during the walk; the lake's rows with those
  hashes are read once): one that neither holds was stored, then lost (a file deleted, an S3
  lake restored from an older copy). Not when the journal flushes into another lake than
  the one reconciled (it records which), nor when a journal that never recorded it finds
  most of the range missing: a note says so. The history is then walked a second time to fetch
  those events, which count as missing (``lost``); recovery first forgets their index
  entries, so that the import, or the collector receiving their replays, stores them again.
* A Meta ``message.status`` id is the *message's* wamid, shared by
  its sent/delivered/read events (kirim-api.md §5), so the store cannot tell them apart; such
  a row counts as missing when no delivery of its chain (the row and its replays) was
  acknowledged (:func:`acknowledged`) -- Kirim's own record that our endpoint never took it
  -- and also when one was, yet the store holds no status event of that wamid at all (the
  index has no ``<wamid>:`` key, the lake no such ``event_id``): stored, then lost.
* A delivery kept under ``DATA/quarantine/`` (acknowledged, but no body we could read)
  counts as held: a replay would bring the same bytes.
* Only the deliveries of one subscription count (``subscription_id``; required when the
  history holds several): a replay goes to the URL of the delivery it repeats.

The report lists the missing events by type and day, oldest first, and warns when one is
within ``warn_days`` of Kirim's 30-day purge. Recovery, unless ``dry_run``:

1. events whose payload came with the history are imported through the journal (one dedup
   index) and flushed to the lake, with the history rows that carried them (and those of
   bodies quarantined) as ``deliveries`` rows, as a backfill stores them;
2. the rest are replayed by Kirim to the subscription URL, where the collector receives them:
   ``bulk_replay`` for dead/failed deliveries when it needs fewer calls than single replays
   (windows planned to hold at most 1000 rows; a ``capped`` answer splits its window and
   repeats), else one ``replay`` each. Every call goes through the client's write-rate pacing.

Every run, dry or not and whatever it finds, also reads the subscriptions once (one request
after the walk) and reports in ``subscriptions`` those Kirim sends nothing to (disabled: their
new events make no history row, so no reconcile finds them) or whose newest deliveries all
failed (:mod:`kirim_events.subscription_health`); a read that fails is one line in
``subscriptions_unread``, and the run goes on.

The library never prints; the CLI renders the :class:`ReconcileReport`. This module runs the
steps; ``reconcile_scan`` walks the history, ``reconcile_lake`` checks the lake,
``reconcile_recovery`` plans and recovers, ``reconcile_windows`` cuts and sends bulk replays,
``reconcile_report`` holds what they find.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kirim_events.backfill import check_order, delivery_headers, delivery_row
from kirim_events.client import KirimClient
from kirim_events.errors import ConfigError
from kirim_events.history_filter import HistoryFilter
from kirim_events.journal import Journal
from kirim_events.journal_index import (
    JournalView,
    KeyIndex,
    data_folder,
    journal_path,
    refuse_foreign_folder,
)
from kirim_events.journal_quarantine import read_quarantine
from kirim_events.reconcile_lake import check_lake, in_lake, lost_from_lake
from kirim_events.reconcile_recovery import (
    SENT_BY_KIRIM,
    check_subscriptions,
    explain,
    plan_recovery,
    recover,
)
from kirim_events.reconcile_report import ACTIONS, BulkWindow, MissingEvent, ReconcileReport
from kirim_events.reconcile_scan import Scan, walk
from kirim_events.reconcile_scan import acknowledged as acknowledged
from kirim_events.reconcile_windows import bulk_replay_window, plan_windows
from kirim_events.subscription_health import alerts, reaches_now, read_statuses
from kirim_events.timearg import parse_when

# all but reconcile are defined in reconcile_* (acknowledged too, imported ``as`` itself):
# they stay importable from here, where the CLI and users have always found them
__all__ = [
    "ACTIONS",
    "BulkWindow",
    "MissingEvent",
    "ReconcileReport",
    "bulk_replay_window",
    "plan_windows",
    "reconcile",
]

PURGE_DAYS = 30


def reconcile(
    data: str | Path,
    *,
    client: KirimClient,
    since: str | datetime,
    until: str | datetime | None = None,
    dry_run: bool = False,
    warn_days: float = 3.0,
    lake: Any = None,
    journal: Journal | None = None,
    subscription_id: str | None = None,
    now: Callable[[], float] = time.time,
) -> ReconcileReport:
    """Compare Kirim's delivery history with the store; report and recover what is missing.

    Parameters
    ----------
    data
        The data folder.
    client
        A :class:`KirimClient` (reads page the history; replays are writes).
    since, until
        Range of delivery ``created_at`` (as for :func:`kirim_events.backfill`).
    dry_run
        Only plan: nothing is imported, replayed or written.
    warn_days
        Flag missing events whose first delivery is within this many days of the purge.
    lake, journal
        Reuse open ones; by default they are opened on ``data``. A dry run only reads the
        journal (:class:`~kirim_events.journal_index.JournalView`), so it works on a folder
        it may not write, and creates none that does not exist yet.
    subscription_id
        Only this subscription's deliveries count, and replays go to its URL. Required when
        the history holds deliveries of several subscriptions (ConfigError otherwise).
    now
        Clock (unix seconds).

    Returns
    -------
    ReconcileReport

    Examples
    --------
    >>> plan = reconcile("data", client=client, since="7d", dry_run=True)  # doctest: +SKIP
    >>> plan.by_type_day[:1]  # doctest: +SKIP
    [('message.status', '2026-05-02', 14)]
    """
    if not 0 <= warn_days <= PURGE_DAYS:  # NaN too
        raise ConfigError(f"warn_days must be 0 to {PURGE_DAYS}, got {warn_days}")
    start = datetime.fromtimestamp(now(), UTC)
    lo = parse_when(since, now=start, name="since")
    asked = None if until is None else parse_when(until, now=start, name="until")
    check_order(lo, asked, now=start)
    hi = start if asked is None else min(asked, start)
    # "~" expanded as the journal and the lake expand it: the lake named by the words given
    # was not the one the journal records (the run was refused) nor its quarantine read
    root = data_folder(data)
    if journal is None and not dry_run:
        refuse_foreign_folder(root)  # before a journal is made there (a dry run makes none)
    if lake is None:
        from kirim_events.lake import Lake

        lake = Lake(root)
    own_journal = journal is None
    index: KeyIndex | None = journal
    if journal is None and not dry_run:
        index = journal = Journal(root)
    elif journal is None and journal_path(root).is_file():
        index = JournalView(root)  # a dry run writes nothing, even on a read-only folder
    report = ReconcileReport(since=lo, until=hi, dry_run=dry_run)
    try:
        ours = check_lake(index, lake, root, report)
        scan = walk(client, lo, hi, Scan(index, subscription_id, received_at=start), report)
        # newest only when the range reaches now: an --until in the past ends older rows
        streaks = scan.streaks.streaks() if reaches_now(asked, start) else {}
        # every run, one request: a subscription Kirim disabled gets no new events and makes
        # no history row of them, so a run that found nothing missing looked like a recovery
        statuses, report.subscriptions_unread = read_statuses(client, subscription_id)
        report.subscriptions = alerts(statuses, streaks, subscription_id)
        lost = None if ours is False else lost_from_lake(lake, scan, index, report, ours)
        if lost is not None:
            # rare: walk again, keeping the events of those hashes this time
            again = ReconcileReport(since=lo, until=hi, dry_run=dry_run)
            scan = walk(
                client, lo, hi, Scan(index, subscription_id, lost, received_at=start), again
            )
            report.history_pages += again.history_pages
        report.notes.extend(report.filtered.notes(HistoryFilter(), stored="compared with the lake"))
        if report.items_unreadable:
            report.notes.append(
                f"{report.items_unreadable} item(s) of the history's pages are no delivery"
                " object (null, a number ...) and were skipped: what they stand for is unknown"
            )
        seen = scan.subscriptions
        if subscription_id is not None and seen and subscription_id not in seen:
            # A quiet range, or a typo, which would report nothing missing without a word.
            report.notes.append(
                f"no delivery of subscription {subscription_id} in this range; the history"
                f" holds deliveries of {', '.join(sorted(seen))}: check --subscription-id"
            )
        scan.status_chains()
        cands = scan.candidates
        keys = [k for k, m in cands.items() if m.records]
        ids = [m.event_id for m in cands.values() if not m.records and m.event_id]
        unindexed = scan.unindexed_acked()
        lake_keys, lake_ids = in_lake(lake, keys, [i for i in [*ids, *unindexed.values()] if i])
        # a quarantined delivery was acknowledged and kept: replaying it brings the same body
        quarantine = read_quarantine(root)
        report.notes.extend(quarantine.notes())
        held_ids = lake_ids | quarantine.event_ids
        scan.lost_acked(unindexed, held_ids)
        missing = [
            m
            for k, m in cands.items()
            if not (k in lake_keys or (not m.records and "@" not in k and m.event_id in held_ids))
        ]
        missing.sort(key=lambda m: (m.day, m.first_seen or start, m.key))
        report.lost = sum(m.lost for m in missing)
        if report.lost:
            done = "would be" if dry_run else "are"
            report.notes.append(
                f"{report.lost} missing event(s) were stored once (the journal's dedup index"
                " remembers them) and are no longer in the lake: files deleted or lost since."
                f" Their index entries {done} forgotten, so that they are stored again"
            )
        report.missing = missing
        report.warn_before = start - timedelta(days=PURGE_DAYS - warn_days)
        report.near_purge = sum(
            1 for m in missing if m.first_seen is not None and m.first_seen <= report.warn_before
        )
        plan_recovery(report, scan.terminal, scan.replayed)
        if any(m.action in SENT_BY_KIRIM for m in missing):
            check_subscriptions(report, client, statuses)
        explain(report)
        report.unparseable = len(scan.unparseable)
        if not dry_run:
            assert journal is not None
            for d, reason in scan.unparseable:
                body = d.body() or b""
                report.quarantined += journal.quarantine_once(body, delivery_headers(d), reason)
            # the unparseable rows' history rows too, as a backfill stores them
            kept = [
                delivery_row(
                    d, received_at=scan.received_at, n_events=0, reason=f"quarantined: {why}"
                )
                for d, why in scan.unparseable
            ]
            recover(report, client, journal, lake, kept)
    finally:
        if own_journal and journal is not None:
            journal.close()
    return report
