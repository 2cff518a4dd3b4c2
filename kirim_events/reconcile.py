"""Reconcile: find the events Kirim's delivery history knows that the store lacks; recover them.

``reconcile(data, client=..., since=...)`` walks the history for ``[since, until)`` and
decides, per event, whether the store already holds it:

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

The library never prints; the CLI renders the :class:`ReconcileReport`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from kirim_events.backfill import (
    HISTORY_OVERLAP,
    check_order,
    delivery_events,
    delivery_headers,
    delivery_row,
)
from kirim_events.client import BULK_REPLAY_CAP, Delivery, KirimClient
from kirim_events.errors import ApiError, ConfigError, PayloadError, RateLimitTooLong
from kirim_events.events import EventRecord
from kirim_events.journal import Journal
from kirim_events.journal_index import JournalView, KeyIndex, journal_path, lake_identity
from kirim_events.journal_quarantine import quarantined_event_ids
from kirim_events.printable import printable
from kirim_events.timearg import parse_when

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
_SHARED_ID_TYPES = frozenset({"message.status", "message.status_updated"})
_TERMINAL = ("dead", "failed")
# kirim-api.md §7.4: only pending, failed and dead are documented; Kirim's name for success
# is unknown ("succeeded" is the emulator's guess). A delivery counts as acknowledged under
# any of these names or with a 2xx response; anything else counts as not, which at worst
# replays an event the lake already holds (deduplicated), never skips a lost one.
_ACKNOWLEDGED = frozenset({"succeeded", "success", "successful", "delivered", "sent", "ok"})


def acknowledged(d: Delivery) -> bool:
    """Our endpoint answered this delivery with a 2xx, by its status or response code."""
    code = d.response_status_code
    return (d.status or "").lower() in _ACKNOWLEDGED or (code is not None and 200 <= code < 300)


@dataclass
class MissingEvent:
    """One event Kirim knows that the store lacks, and how it will be recovered."""

    key: str  # event_key when the payload was seen, else the event id (+ delivery for statuses)
    event_id: str | None
    event_type: str | None
    day: str  # UTC date of the event time (payload), else of the first delivery
    first_seen: datetime | None  # earliest delivery created_at: the purge clock
    delivery_id: str | None  # the delivery to replay
    subscription_id: str | None
    status: str | None  # Kirim status of that delivery
    created_at: datetime | None  # and its created_at (a bulk_replay window must hold it)
    action: str = "replay"  # import | replay | bulk_replay | await | held (see ACTIONS)
    lost: bool = False  # the dedup index remembers it, the lake does not hold it
    pending: bool = False  # one of its deliveries is still being retried by Kirim
    records: list[EventRecord] = field(default_factory=list, repr=False)
    # the history rows that carried it, each with its number of events: stored with an
    # import as the ``deliveries`` rows a backfill would store for them
    sources: list[tuple[Delivery, int]] = field(default_factory=list, repr=False)


ACTIONS = {
    "import": "parsed from the history's payload and stored",
    "replay": "replayed by Kirim to the collector, one delivery at a time",
    "bulk_replay": "replayed by Kirim to the collector in bulk (dead/failed deliveries)",
    "await": "not replayed: Kirim is still retrying its delivery (pending)",
    "held": "not replayed: Kirim sends nothing to its subscription (not active)",
}
"""What each :attr:`MissingEvent.action` means."""

_RESENDS_PER_CALL = 50
"""A bulk_replay window re-sends every dead/failed delivery in it, stored or not. It is chosen
over single replays when it costs less, counting 50 needless re-sends as one call (a call
spends Kirim's write quota, 60 a minute on the smallest plan; a re-send is one more request
the collector's dedup index absorbs)."""


@dataclass(frozen=True)
class BulkWindow:
    """One planned bulk_replay call."""

    subscription_id: str
    status: str
    created_after: datetime
    created_before: datetime
    rows: int  # terminal rows of that status the history shows in the window


@dataclass
class ReconcileReport:
    """What reconcile found and (unless dry_run) did."""

    since: datetime
    until: datetime
    dry_run: bool
    history_rows: int = 0
    history_pages: int = 0
    missing: list[MissingEvent] = field(default_factory=list)
    near_purge: int = 0
    warn_before: datetime | None = None
    windows: list[BulkWindow] = field(default_factory=list)
    items_unreadable: int = 0  # page items that are no delivery object (null, a number)
    lost: int = 0  # missing events the dedup index remembers: stored once, lost since
    unparseable: int = 0  # history payloads that are no known body: replaying cannot help
    quarantined: int = 0  # of those, newly kept under DATA/quarantine/ by this run
    imported: int = 0
    replayed: int = 0
    bulk_calls: int = 0
    bulk_enqueued: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a look, not a failure

    @property
    def by_type_day(self) -> list[tuple[str, str, int]]:
        """``(type, day, count)`` of missing events, oldest day first."""
        counts = Counter((m.day, m.event_type or "?") for m in self.missing)
        return [(t, d, n) for (d, t), n in sorted(counts.items())]

    @property
    def actions(self) -> Counter[str]:
        """How many missing events each recovery action covers."""
        return Counter(m.action for m in self.missing)


@dataclass
class _Chain:
    """A no-payload status delivery and its replays."""

    ok: bool = False
    rows: list[Delivery] = field(default_factory=list)


_HASH_SEED = 0x6B6972696D  # any fixed seed: the hashes are compared within one process


def _hashes(values: list[str]) -> pl.Series:
    return pl.Series(values, dtype=pl.String).hash(seed=_HASH_SEED)


@dataclass
class _Lost:
    """Hashes of event keys and event ids that the dedup index holds and the lake lacks."""

    keys: set[int]
    ids: set[int]


class _Scan:
    """Accumulates one walk of the history (memory grows with what is missing, not with all;
    and with 8 bytes per event the dedup index holds, to check the lake for them after).

    With ``lost`` (a second walk), the events the index holds whose hash is in it count as
    missing too: the lake lost them after they were stored.
    """

    def __init__(
        self, journal: KeyIndex | None, subscription_id: str | None, lost: _Lost | None = None
    ) -> None:
        self.journal = journal
        self.subscription_id = subscription_id
        self.lost = lost
        self.indexed_keys: list[pl.Series] = []  # hashes of keys the index holds
        self.indexed_ids: list[pl.Series] = []  # hashes of bare rows' ids the index holds
        self._page_ids: list[str] = []  # this page's, hashed when it ends
        self.subscriptions: set[str] = set()
        self.unparseable: list[tuple[Delivery, str]] = []
        self.candidates: dict[str, MissingEvent] = {}
        self.by_id: dict[str, MissingEvent] = {}  # no-payload unique-id candidates
        self.parent: dict[str, str] = {}
        self.chains: dict[str, _Chain] = {}
        self.acked: dict[str, _Chain] = {}  # acknowledged status chains, by candidate key
        self.terminal: list[tuple[str, str, datetime]] = []  # (subscription, status, created)
        self.received_at = datetime.now(UTC)

    def seen(self, keys: list[str]) -> set[str]:
        return self.journal.seen(keys) if self.journal is not None and keys else set()

    def page(self, rows: list[Delivery]) -> None:
        pending: list[tuple[Delivery, list[EventRecord]]] = []
        keys: list[str] = []
        for d in rows:
            if not self._ours(d):
                continue
            if d.status in _TERMINAL and d.subscription_id and d.created_at:
                self.terminal.append((d.subscription_id, d.status, d.created_at))
            if d.payload is not None:
                try:
                    found = delivery_events(d, received_at=self.received_at)
                except PayloadError as exc:
                    # no known body: a replay would bring the same bytes; keep them instead
                    self.unparseable.append((d, exc.reason))
                    continue
                if found:
                    pending.append((d, found))
                    keys.extend(r.event_key for r in found)
                    continue
            self.bare(d)
        if self._page_ids:
            self.indexed_ids.append(_hashes(self._page_ids))
            self._page_ids = []
        have = self.seen(keys)
        present = [k for k in dict.fromkeys(keys) if k in have]
        lost: set[str] = set()
        if present and self.lost is None:
            self.indexed_keys.append(_hashes(present))
        elif present and self.lost is not None:
            lost = {
                k for k, h in zip(present, _hashes(present), strict=True) if h in self.lost.keys
            }
        for d, found in pending:
            for r in found:
                if r.event_key not in have or r.event_key in lost:
                    lose = r.event_key in lost
                    m = self.add(r.event_key, d, r.type, r.occurred_at, [r], lost=lose)
                    m.sources.append((d, len(found)))

    def _ours(self, d: Delivery) -> bool:
        """Whether ``d`` went to the subscription reconciled. Replays go to the URL of the
        delivery replayed, so with several subscriptions the one to use must be named."""
        if d.subscription_id is None:
            return True
        self.subscriptions.add(d.subscription_id)
        if self.subscription_id is not None:
            return d.subscription_id == self.subscription_id
        if len(self.subscriptions) > 1:
            names = ", ".join(sorted(self.subscriptions))
            raise ConfigError(
                f"Kirim's history holds deliveries of several subscriptions ({names}); a replay"
                " goes to its delivery's URL, so name the one that feeds this collector with"
                " --subscription-id"
            )
        return True

    def bare(self, d: Delivery) -> None:
        if d.event_type in _SHARED_ID_TYPES or d.event_id is None:
            if d.id is None:
                return
            if d.replayed_from:
                self.parent[d.id] = d.replayed_from
            chain = self.chains.setdefault(d.id, _Chain())
            chain.rows.append(d)
            chain.ok = chain.ok or acknowledged(d)
            return
        if not self.seen([d.event_id]):
            self.add(d.event_id, d, d.event_type, None, [])
        elif self.lost is None:
            self._page_ids.append(d.event_id)
        elif int(_hashes([d.event_id])[0]) in self.lost.ids:
            self.add(d.event_id, d, d.event_type, None, [], lost=True)

    def add(
        self,
        key: str,
        d: Delivery,
        event_type: str | None,
        occurred: datetime | None,
        records: list[EventRecord],
        *,
        lost: bool = False,
    ) -> MissingEvent:
        m = self.candidates.get(key)
        if m is None:
            when = occurred or d.created_at
            m = self.candidates[key] = MissingEvent(
                key=key,
                event_id=d.event_id,
                event_type=event_type,
                day=when.date().isoformat() if when else "unknown",
                first_seen=d.created_at,
                delivery_id=d.id,
                subscription_id=d.subscription_id,
                status=d.status,
                created_at=d.created_at,
                records=records,
                lost=lost,
                pending=d.status == "pending",
            )
        else:
            m.pending = m.pending or d.status == "pending"
            if d.created_at and (m.first_seen is None or d.created_at < m.first_seen):
                m.first_seen = d.created_at
            if _better(d, m):
                m.delivery_id, m.subscription_id, m.status = d.id, d.subscription_id, d.status
                m.created_at = d.created_at
            if records and not m.records:
                m.records = records
        return m

    def status_chains(self) -> None:
        """Turn never-acknowledged no-payload status chains into candidates."""
        merged: dict[str, _Chain] = {}
        for ident, chain in self.chains.items():
            root = ident
            for _ in range(100):  # replay of a replay...; bounded against cycles
                if root not in self.parent:
                    break
                root = self.parent[root]
            target = merged.setdefault(root, _Chain())
            target.ok = target.ok or chain.ok
            target.rows.extend(chain.rows)
        for root, chain in merged.items():
            first = min(chain.rows, key=lambda d: d.created_at or datetime.max.replace(tzinfo=UTC))
            chain.rows.sort(key=lambda d: d is not first)  # the first row first
            if not chain.ok:
                self.add_chain(f"{first.event_id}@{root}", chain)
            elif first.event_id is not None:
                self.acked[f"{first.event_id}@{root}"] = chain

    def add_chain(self, key: str, chain: _Chain) -> None:
        """One missing status event for a chain, replayed through its best delivery."""
        for d in chain.rows:
            self.add(key, d, d.event_type, None, [])

    def unindexed_acked(self) -> dict[str, str]:
        """Acknowledged status chains (candidate key -> wamid) with no ``<wamid>:`` key in
        the dedup index: the store may have lost them; the lake and quarantine decide."""
        ids = {key: chain.rows[0].event_id or "" for key, chain in self.acked.items()}
        indexed = {p[:-1] for p in self.seen_prefixes([f"{i}:" for i in ids.values()])}
        return {key: i for key, i in ids.items() if i not in indexed}

    def lost_acked(self, unindexed: dict[str, str], held_ids: set[str]) -> None:
        """Add the acknowledged chains whose wamid the store holds no status of: lost since."""
        for key, event_id in unindexed.items():
            if event_id not in held_ids:
                self.add_chain(key, self.acked[key])

    def seen_prefixes(self, prefixes: list[str]) -> set[str]:
        if self.journal is None or not prefixes:
            return set()
        return self.journal.seen_prefixes(prefixes)


def _better(d: Delivery, m: MissingEvent) -> bool:
    """Prefer replaying a terminal delivery (bulk_replay can take it), then the newest."""
    return (d.status in _TERMINAL) and (m.status not in _TERMINAL)


def _in_lake(lake: Any, keys: list[str], ids: list[str]) -> tuple[set[str], set[str]]:
    if not keys and not ids:
        return set(), set()
    storage = getattr(lake, "storage", None)
    if storage is not None and storage.local and not os.path.isdir(storage.root):
        return set(), set()  # a data folder not made yet (a dry run makes none) holds nothing
    frame = (
        lake.events()
        .select("event_key", "event_id")
        .filter(pl.col("event_key").is_in(keys) | pl.col("event_id").is_in(ids))
        .collect()
    )
    return set(frame["event_key"].to_list()), set(frame["event_id"].to_list())


def plan_windows(
    rows: list[tuple[str, str, datetime]], cap: int = BULK_REPLAY_CAP
) -> list[BulkWindow]:
    """Cut (subscription, status, created_at) rows into windows of at most ``cap`` rows each.

    Window edges fall on row times (cut only between different times), so a row is in exactly
    one window whether Kirim's ``created_after`` is inclusive or not at millisecond precision.
    More than ``cap`` rows at one instant cannot be cut: their window holds them all (its
    ``rows`` above ``cap``), and :func:`reconcile` replays them one by one instead.
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
            lo = times[start] - timedelta(seconds=1) if start == 0 else times[start]
            hi = times[end] if end < len(times) else times[-1] + timedelta(seconds=1)
            out.append(BulkWindow(sub, status, lo, hi, end - start))
            start = end
    return out


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
    hi = start if until is None else min(parse_when(until, now=start, name="until"), start)
    check_order(lo, hi)
    root = Path(data)
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
        ours = _check_lake(index, lake, root, report)
        scan = _walk(client, lo, hi, _Scan(index, subscription_id), report)
        lost = None if ours is False else _lost_from_lake(lake, scan, index, report, ours)
        if lost is not None:
            # rare: walk again, keeping the events of those hashes this time
            again = ReconcileReport(since=lo, until=hi, dry_run=dry_run)
            scan = _walk(client, lo, hi, _Scan(index, subscription_id, lost), again)
            report.history_pages += again.history_pages
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
        lake_keys, lake_ids = _in_lake(lake, keys, [i for i in [*ids, *unindexed.values()] if i])
        # a quarantined delivery was acknowledged and kept: replaying it brings the same body
        held_ids = lake_ids | quarantined_event_ids(root)
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
        _plan(report, scan.terminal)
        if any(m.action in _SENT_BY_KIRIM for m in missing):
            _check_subscriptions(report, client)
        _explain(report)
        report.unparseable = len(scan.unparseable)
        if not dry_run:
            assert journal is not None
            for d, reason in scan.unparseable:
                body = (d.payload or "").encode("utf-8")
                report.quarantined += journal.quarantine_once(body, delivery_headers(d), reason)
            # the unparseable rows' history rows too, as a backfill stores them
            kept = [
                delivery_row(
                    d, received_at=scan.received_at, n_events=0, reason=f"quarantined: {why}"
                )
                for d, why in scan.unparseable
            ]
            _recover(report, client, journal, lake, kept)
    finally:
        if own_journal and journal is not None:
            journal.close()
    return report


def _plan(report: ReconcileReport, terminal: list[tuple[str, str, datetime]]) -> None:
    for m in report.missing:
        m.action = "import" if m.records else "await" if m.pending else "replay"
    groups: dict[tuple[str, str], list[MissingEvent]] = {}
    for m in report.missing:
        if m.action == "replay" and m.status in _TERMINAL and m.subscription_id and m.created_at:
            groups.setdefault((m.subscription_id, m.status), []).append(m)
    for (sub, status), members in groups.items():
        # the windows must hold the very rows chosen for replay, not each event's first one
        first = min(m.created_at for m in members if m.created_at)
        last = max(m.created_at for m in members if m.created_at)
        rows = [r for r in terminal if r[0] == sub and r[1] == status and first <= r[2] <= last]
        windows = plan_windows(rows)
        unique_deliveries = {m.delivery_id for m in members}
        crowded = any(w.rows > BULK_REPLAY_CAP for w in windows)  # Kirim would cap it
        needless = sum(w.rows for w in windows) - len(unique_deliveries)
        bulk_cost = len(windows) + needless / _RESENDS_PER_CALL
        if bulk_cost < len(unique_deliveries) and not crowded:
            report.windows.extend(windows)
            for m in members:
                m.action = "bulk_replay"


_SENT_BY_KIRIM = ("replay", "bulk_replay", "await")  # actions that need Kirim to deliver


def _check_subscriptions(report: ReconcileReport, client: KirimClient) -> None:
    """Hold the replays to a subscription Kirim does not send to (``disabled`` after its
    auto-disable, kirim-api.md §3): they would only wait in its queue, and every run of
    reconcile would add more; and say that its pending deliveries are held, not retried.
    A subscription that cannot be read is replayed to, with a note.
    """
    subs = {
        m.subscription_id
        for m in report.missing
        if m.action in _SENT_BY_KIRIM and m.subscription_id is not None
    }
    for sub in sorted(subs):
        try:
            status = client.get_subscription(sub).get("status")
        except RateLimitTooLong:
            raise
        except ApiError as exc:
            report.notes.append(
                f"cannot read subscription {sub} ({exc}): taken to be active (its missing events"
                " are replayed or awaited as the plan says)"
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


def _explain(report: ReconcileReport) -> None:
    waiting = report.actions["await"]
    if waiting:
        report.notes.append(
            f"{waiting} missing event(s) have a delivery Kirim is still retrying (pending): not"
            " replayed, they come with its next attempt; run reconcile again after Kirim's"
            " retries end (about 31 hours) to replay what is still missing then"
        )


def _walk(
    client: KirimClient, lo: datetime, hi: datetime, scan: _Scan, report: ReconcileReport
) -> _Scan:
    """Page the history of ``[lo, hi)`` into ``scan``, counting into ``report``."""
    pages = client.iter_pages(
        created_after=lo - HISTORY_OVERLAP, created_before=hi + HISTORY_OVERLAP
    )
    for page, _ in pages:
        report.history_pages += 1
        rows = [d for d in page.deliveries if d.created_at is None or lo <= d.created_at < hi]
        report.history_rows += len(rows)
        report.items_unreadable += len(page.unreadable)
        scan.page(rows)
    return scan


def _check_lake(
    index: KeyIndex | None, lake: Any, root: Path, report: ReconcileReport
) -> bool | None:
    """Whether the journal flushes into ``lake``: True, False, or None when unknown (no
    record, or no Lake). False is a ConfigError unless on a dry run (a note then): events
    imported would land in the wrong lake."""
    target = None if index is None else index.flush_target()
    ours = lake_identity(lake, root)
    if target is None or ours is None:
        return None
    if target == ours:
        return True
    kind, _, where = target.partition(":")
    shown = {"file": where, "s3": f"s3://{where}"}.get(kind, "the data folder")
    message = (
        f"the journal flushes into the lake at {printable(shown)}, not the one reconciled:"
        " pass that one (--lake), or what reconcile imports would land in another lake"
    )
    if not report.dry_run:
        raise ConfigError(message)
    report.notes.append(message)
    return False


def _lost_from_lake(
    lake: Any, scan: _Scan, index: KeyIndex | None, report: ReconcileReport, ours: bool | None
) -> _Lost | None:
    """The hashes of the keys and ids that the dedup index holds and neither the journal's
    inbox nor the lake does (files deleted or lost after the events were stored), or None
    when there are none (or, for a journal that never recorded its lake, when most of the
    range is missing: a lake mix-up more likely than a loss; a note says so).

    The inbox is read before the lake: a flush moves an event from the one to the other
    only after the lake holds it, so an event is found in one of the two whenever the flush
    runs. Only the lake rows whose hash the walk kept are collected. ``ours`` says whether
    the journal flushes into ``lake`` (:func:`_check_lake`; None: unknown).
    """
    if index is None or (not scan.indexed_keys and not scan.indexed_ids):
        return None
    waiting = _hashes(sorted(index.inbox_keys()))
    wanted_keys = pl.concat([_hashes([]), *scan.indexed_keys]).unique()
    wanted_ids = pl.concat([_hashes([]), *scan.indexed_ids]).unique()
    storage = getattr(lake, "storage", None)
    if storage is not None and storage.local and not os.path.isdir(storage.root):
        held_keys = held_ids = pl.Series([], dtype=pl.UInt64)  # no lake yet: it holds none
    else:
        held = (
            lake.events()
            .select(
                k=pl.col("event_key").hash(seed=_HASH_SEED),
                i=pl.col("event_id").hash(seed=_HASH_SEED),
                has_id=pl.col("event_id").is_not_null(),
            )
            .filter(
                pl.col("k").is_in(wanted_keys.implode())
                | (pl.col("has_id") & pl.col("i").is_in(wanted_ids.implode()))
            )
            .collect()
        )
        held_keys, held_ids = held["k"], held.filter("has_id")["i"]
    lost_keys = wanted_keys.filter(~wanted_keys.is_in(pl.concat([held_keys, waiting]).implode()))
    lost_ids = wanted_ids.filter(~wanted_ids.is_in(pl.concat([held_ids, waiting]).implode()))
    n_lost, n_wanted = len(lost_keys) + len(lost_ids), len(wanted_keys) + len(wanted_ids)
    if ours is None and n_lost > 100 and 2 * n_lost > n_wanted:
        # a journal that never said where it flushes (older ones) may flush elsewhere
        report.notes.append(
            f"the lake lacks {n_lost} of the {n_wanted} events the journal's dedup index"
            " remembers in this range: if the journal flushes into another lake, pass it with"
            " --lake; they were not taken for lost"
        )
        return None
    if not n_lost:
        return None
    return _Lost(set(lost_keys.to_list()), set(lost_ids.to_list()))


def _recover(
    report: ReconcileReport,
    client: KirimClient,
    journal: Journal,
    lake: Any,
    receipts: list[dict[str, Any]],
) -> None:
    """Import what can be, with its history rows and ``receipts``; ask Kirim for the rest."""
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
        journal.flush(lake, batch_size=10_000)
    done: set[str] = set()
    try:
        for m in report.missing:
            if m.action != "replay" or not m.delivery_id or m.delivery_id in done:
                continue
            done.add(m.delivery_id)
            try:
                client.replay(m.delivery_id)
                report.replayed += 1
            except RateLimitTooLong:
                raise
            except ApiError as exc:
                report.errors.append(f"replay {m.delivery_id}: {exc}")
        for w in report.windows:
            bulk_replay_window(client, w, report)
    except RateLimitTooLong as exc:  # every further call would be refused the same way
        report.errors.append(f"replays stopped: {exc}")


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
    ``report.errors`` rather than raised, so one bad window does not stop the others (except
    RateLimitTooLong, which stops them all).
    """
    try:
        result = client.bulk_replay(
            window.subscription_id,
            status=window.status,
            event_type=event_type,
            created_after=window.created_after,
            created_before=window.created_before,
        )
    except RateLimitTooLong:
        raise
    except ApiError as exc:
        report.errors.append(f"bulk_replay {window.subscription_id} {window.status}: {exc}")
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
    mid = w.created_after + (w.created_before - w.created_after) / 2
    for half in (
        BulkWindow(w.subscription_id, w.status, w.created_after, mid, w.rows // 2),
        BulkWindow(w.subscription_id, w.status, mid, w.created_before, w.rows - w.rows // 2),
    ):
        bulk_replay_window(client, half, report, event_type=event_type, depth=depth + 1)
