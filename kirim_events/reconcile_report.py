"""Reconcile's findings: the missing events, the planned bulk windows and the report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from kirim_events.client import Delivery
from kirim_events.errors import ApiError
from kirim_events.events import EventRecord
from kirim_events.history_filter import FilterTally
from kirim_events.subscription_health import SubscriptionAlert

__all__ = ["ACTIONS", "TERMINAL", "BulkWindow", "MissingEvent", "ReconcileReport"]

TERMINAL = ("dead", "failed")


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


@dataclass(frozen=True)
class BulkWindow:
    """One planned bulk_replay call."""

    subscription_id: str
    status: str
    created_after: datetime
    created_before: datetime
    rows: int  # terminal rows of that status the history shows in the window
    # of those, the rows still in Kirim's dead-letter queue (no replay of them in the
    # history) strictly inside the window: the least Kirim enqueues for it (reconcile's
    # plan; 0 when not known)
    least: int = 0


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
    # rows Kirim returned outside the range asked (beyond the margin read past each end)
    filtered: FilterTally = field(default_factory=FilterTally)
    lost: int = 0  # missing events the dedup index remembers: stored once, lost since
    unparseable: int = 0  # history payloads that are no known body: replaying cannot help
    quarantined: int = 0  # of those, newly kept under DATA/quarantine/ by this run
    imported: int = 0
    replayed: int = 0
    bulk_calls: int = 0
    bulk_enqueued: int = 0
    errors: list[str] = field(default_factory=list)
    # the API errors of the replay and bulk_replay calls that failed (one line each in
    # ``errors``): what they were, not only what they said (a 401 names the key to check)
    failures: list[ApiError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a look, not a failure
    # subscriptions Kirim sends nothing to (disabled) or whose newest deliveries all failed:
    # said on every run, also when nothing is missing (new events then make no history row)
    subscriptions: list[SubscriptionAlert] = field(default_factory=list)
    subscriptions_unread: str | None = None  # why they could not be read (one line), if so

    @property
    def by_type_day(self) -> list[tuple[str, str, int]]:
        """``(type, day, count)`` of missing events, oldest day first."""
        counts = Counter((m.day, m.event_type or "?") for m in self.missing)
        return [(t, d, n) for (d, t), n in sorted(counts.items())]

    @property
    def actions(self) -> Counter[str]:
        """How many missing events each recovery action covers."""
        return Counter(m.action for m in self.missing)
