"""Reconcile's walk of Kirim's delivery history: which events the journal's dedup index lacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from kirim_events.backfill import delivery_events
from kirim_events.client import Delivery, KirimClient, format_time
from kirim_events.errors import ConfigError, PayloadError
from kirim_events.events import EventRecord, parse_time
from kirim_events.history_filter import TIME_FILTER, HistoryFilter
from kirim_events.history_slices import HISTORY_OVERLAP, Slice, untimed_mark, walk_restarting
from kirim_events.journal_index import KeyIndex
from kirim_events.reconcile_report import TERMINAL, MissingEvent, ReconcileReport
from kirim_events.subscription_health import FailureStreaks

__all__ = ["HASH_SEED", "Lost", "Scan", "acknowledged", "hashes", "walk"]

_SHARED_ID_TYPES = frozenset({"message.status", "message.status_updated"})

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
class _Chain:
    """A no-payload status delivery and its replays."""

    ok: bool = False
    rows: list[Delivery] = field(default_factory=list)


HASH_SEED = 0x6B6972696D  # any fixed seed: the hashes are compared within one process


def hashes(values: list[str]) -> pl.Series:
    """8-byte hashes of ``values``, comparable with the lake's columns hashed by HASH_SEED."""
    return pl.Series(values, dtype=pl.String).hash(seed=HASH_SEED)


@dataclass
class Lost:
    """Hashes of event keys and event ids that the dedup index holds and the lake lacks."""

    keys: set[int]
    ids: set[int]


class Scan:
    """Accumulates one walk of the history (memory grows with what is missing, not with all;
    and with 8 bytes per event the dedup index holds, to check the lake for them after).

    With ``lost`` (a second walk), the events the index holds whose hash is in it count as
    missing too: the lake lost them after they were stored.
    """

    def __init__(
        self,
        journal: KeyIndex | None,
        subscription_id: str | None,
        lost: Lost | None = None,
        *,
        received_at: datetime,
    ) -> None:
        self.journal = journal
        self.subscription_id = subscription_id
        self.filter = HistoryFilter(subscription_id=subscription_id)
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
        # (subscription, status, created, delivery id) of the dead and failed rows
        self.terminal: list[tuple[str, str, datetime, str | None]] = []
        self.replayed: set[str] = set()  # ids of the rows a replay names in replayed_from
        self.received_at = received_at  # of the events it imports: the run's clock
        self.streaks = FailureStreaks()  # failures at the newest end, per subscription

    def seen(self, keys: list[str]) -> set[str]:
        return self.journal.seen(keys) if self.journal is not None and keys else set()

    def page(self, rows: list[Delivery]) -> None:
        pending: list[tuple[Delivery, list[EventRecord]]] = []
        keys: list[str] = []
        for d in rows:
            if not self._ours(d):
                continue
            if d.replayed_from:
                self.replayed.add(d.replayed_from)
            self.streaks.see(d)
            if d.status in TERMINAL and d.subscription_id and d.created_at:
                self.terminal.append((d.subscription_id, d.status, d.created_at, d.id))
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
            self.indexed_ids.append(hashes(self._page_ids))
            self._page_ids = []
        have = self.seen(keys)
        present = [k for k in dict.fromkeys(keys) if k in have]
        lost: set[str] = set()
        if present and self.lost is None:
            self.indexed_keys.append(hashes(present))
        elif present and self.lost is not None:
            lost = {k for k, h in zip(present, hashes(present), strict=True) if h in self.lost.keys}
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
            return self.filter.check(d)[0] is None  # as backfill matches a filter
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
        elif int(hashes([d.event_id])[0]) in self.lost.ids:
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
    """Prefer replaying a terminal delivery (bulk_replay can take it), then the newest (the
    furthest from Kirim's purge)."""
    terminal, chosen_terminal = d.status in TERMINAL, m.status in TERMINAL
    if terminal != chosen_terminal:
        return terminal
    return d.created_at is not None and (m.created_at is None or d.created_at > m.created_at)


def walk(
    client: KirimClient, lo: datetime, hi: datetime, scan: Scan, report: ReconcileReport
) -> Scan:
    """Page the history of ``[lo, hi)`` into ``scan``, counting into ``report``.

    A cursor Kirim refuses (``invalid_cursor``: expired during a long walk, say) starts a new
    chain of pages that skips what was read, as a backfill's slice does
    (:meth:`kirim_events.history_slices.Slice.restart`), once the rows read show Kirim's
    order; the rows it reads again are not scanned twice unless their delivery moved on
    since (a row read ``pending`` is scanned again once answered). Refused while the order is not
    plain, or four times in a row with nothing more skipped, the error stands.
    """
    s = Slice(after=format_time(lo), before=format_time(hi))
    read = _Read()

    def inside(d: Delivery) -> bool:
        # a row without a time cannot be shown outside (history_filter); one beyond the
        # margin asked for past each end says Kirim ignored created_after/created_before
        if d.created_at is None or lo <= d.created_at < hi:
            return True
        if not lo - HISTORY_OVERLAP <= d.created_at < hi + HISTORY_OVERLAP:
            report.filtered.outside[TIME_FILTER] += 1
        return False

    def chain() -> None:
        after, before = s.window()
        for page, _ in client.iter_pages(
            cursor=s.cursor, created_after=after, created_before=before
        ):
            report.history_pages += 1
            report.items_unreadable += len(page.unreadable)
            rows = [d for d in page.deliveries if inside(d) and read.first(d)]
            report.history_rows += len(rows)
            scan.page(rows)
            s.cursor = page.next_cursor
            s.note_order(d.created_at for d in page.deliveries if d.created_at)
            read.advance(s, [d.created_at for d in rows if d.created_at])

    walk_restarting(s, chain, needs_order=True)
    return scan


class _Read:
    """The rows a walk scanned where a new chain may read them again: within twice
    ``HISTORY_OVERLAP`` of the oldest row read (newest first; of the newest, oldest first),
    every row until the order shows, and the rows without a time; none once the rows go
    both ways (no new chain then)."""

    def __init__(self) -> None:
        self.marks: dict[tuple[object, ...], datetime | None] = {}
        self.off = False

    def first(self, d: Delivery) -> bool:
        """Whether ``d`` was not scanned yet as it is now (and remember it): a row whose
        delivery moved on since (answered, say, after it was read ``pending``) is scanned
        again, for what it says now."""
        if self.off:
            return True
        state = (d.status, d.response_status_code, d.updated_at, d.next_retry_at)
        mark = (untimed_mark(d), d.attempt, d.created_at, *state)
        if mark in self.marks:
            return False
        self.marks[mark] = d.created_at
        return True

    def advance(self, s: Slice, times: list[datetime]) -> None:
        """Move the walk's frontier by the times of the rows scanned; forget the marks no new
        chain can reach."""
        s.stretch(times)
        if s.went_back and s.went_forward:  # no plain order: a refusal stops the walk
            self.off, self.marks = True, {}
            return
        direction = s.direction()
        edge = parse_time(s.oldest if direction == "newest first" else s.newest)
        if direction is None or edge is None:
            return
        reach = 2 * HISTORY_OVERLAP
        self.marks = {
            m: t
            for m, t in self.marks.items()
            if t is None or (t < edge + reach if direction == "newest first" else t > edge - reach)
        }
