"""The emulator's state: webhook subscriptions with their secrets, delivery rows, attempts.

One delivery row per (event, subscription) pair, as Kirim's replay semantics imply (a replay
makes a *new* row whose ``replayed_from`` names the original). The row keeps one
``X-Kirim-Delivery-Id`` across its attempts (kirim-api.md §2: docs disagree; we pick one id
per row) and shows its latest state; every attempt is also appended to :attr:`Store.attempts`
with its outcome. Rows live in memory in creation order (``seq``), which is also the order the
REST API pages through (newest first).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kirim_events.config import Secret
from kirim_events.emulator.bodies import iso
from kirim_events.emulator.ids import ulid, webhook_secret
from kirim_events.events_record import canonical_type

__all__ = [
    "AttemptRecord",
    "DeliveryRow",
    "SecretRecord",
    "Store",
    "Subscription",
    "same_event_type",
]


def same_event_type(a: str, b: str) -> bool:
    """Whether the event names ``a`` and ``b`` name one event type.

    Names match exactly (kirim-api.md §7.5), except the status event's two names: Kirim's
    ``/sending/receive-messages/`` page calls it ``message.status_updated`` where every other
    page says ``message.status`` (§4.3, docs disagree), and our receiver stores both as
    ``message.status``. A subscription (or history filter) naming either gets both, so a
    handler subscribed to ``message.status`` is sent the third shape's status bodies too.
    """
    return a == b or canonical_type(a) == canonical_type(b)


@dataclass(slots=True)
class SecretRecord:
    """A signing secret; ``value`` is shown once at creation, never in listings."""

    id: str
    value: Secret
    created_at: float
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        """True while the secret has not expired."""
        return self.expires_at is None or now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The listing form (no plaintext)."""
        return {
            "id": self.id,
            "created_at": iso(self.created_at, ms=True),
            "expires_at": None if self.expires_at is None else iso(self.expires_at, ms=True),
        }


@dataclass(slots=True)
class Subscription:
    """A webhook subscription (``wbs_``)."""

    id: str
    url: str = field(repr=False)  # it may carry a user name, a password or a token
    events: list[str]
    description: str | None
    created_at: float
    updated_at: float
    secrets: list[SecretRecord] = field(default_factory=list)
    status: str = "active"
    consecutive_failures: int = 0
    deleted: bool = False
    ordinal: int = 0  # created first, second, ...: what a run with the same seed repeats

    def matches(self, event_type: str) -> bool:
        """Whether deliveries of ``event_type`` go to this subscription (``*`` = all; the
        status event's two names are one, :func:`same_event_type`)."""
        return "*" in self.events or any(same_event_type(event_type, e) for e in self.events)

    def active_secrets(self, now: float) -> list[Secret]:
        """Every secret that signs at ``now`` (one ``v1`` each)."""
        return [s.value for s in self.secrets if s.active(now)]

    def to_json(self) -> dict[str, Any]:
        """The REST form."""
        return {
            "id": self.id,
            "object": "webhook_subscription",
            "url": self.url,
            "events": list(self.events),
            "description": self.description,
            "status": self.status,
            "secrets": [s.to_json() for s in self.secrets],
            "created_at": iso(self.created_at, ms=True),
            "updated_at": iso(self.updated_at, ms=True),
        }


@dataclass(slots=True)
class DeliveryRow:
    """One (event, subscription) delivery and its latest state."""

    seq: int
    id: str
    subscription_id: str
    event_id: str
    event_type: str
    source: str
    event_keys: tuple[str, ...]
    payload: bytes
    url: str
    created_at: float
    updated_at: float
    status: str = "pending"
    attempt: int = 0
    response_status_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    next_retry_at: float | None = None
    replayed_from: str | None = None
    acknowledged: bool = False

    def to_json(self) -> dict[str, Any]:
        """The REST delivery object (kirim-api.md §7.4 superset; ``payload`` = raw body)."""
        return {
            "id": self.id,
            "object": "webhook_delivery",
            "status": self.status,
            "replayed_from": self.replayed_from,
            "subscription_id": self.subscription_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            # Kirim counts attempts from 1 (kirim-api.md §7.4): none yet is no number
            "attempt": self.attempt or None,
            "url": self.url,
            "response_status_code": self.response_status_code,
            "response_body": self.response_body,
            "error": self.error,
            "next_retry_at": None
            if self.next_retry_at is None
            else iso(self.next_retry_at, ms=True),
            "created_at": iso(self.created_at, ms=True),
            "updated_at": iso(self.updated_at, ms=True),
            "payload": self.payload.decode("utf-8"),
        }


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One POST attempt and what came of it."""

    delivery_id: str
    attempt: int
    subscription_id: str
    event_id: str
    event_type: str
    sent_at: float
    signature_t: int
    outcome: str  # succeeded | retry | failed | dead | lost_ack
    response_status_code: int | None
    error: str | None
    next_retry_at: float | None


class Store:
    """Subscriptions, delivery rows and attempts of one emulated organisation.

    Parameters
    ----------
    rng
        Source for ids and secrets (seeded for reproducible runs).
    record_attempts
        Keep every :class:`AttemptRecord` (turn off for very long runs).
    """

    def __init__(self, *, rng: random.Random | None = None, record_attempts: bool = True) -> None:
        self.rng = rng or random.Random(0)
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: list[DeliveryRow] = []
        self.by_id: dict[str, DeliveryRow] = {}
        self.attempts: list[AttemptRecord] = []
        self.record_attempts = record_attempts
        self.on_enqueue: Callable[[DeliveryRow], None] | None = None
        # subscription id -> rows queued for it while it was not active (sent on reactivate)
        self.held: dict[str, list[DeliveryRow]] = {}
        # subscription -> keys of events never sent to it (it was disabled: Kirim keeps no row)
        self.unsent: dict[str, set[str]] = {}
        # ids of the rows a replay was made of: out of the dead-letter queue, so bulk_replay
        # passes them over (their rows are unchanged: still dead or failed in the history)
        self.replayed: set[str] = set()

    # ------------------------------------------------------------------ subscriptions

    def create_subscription(
        self,
        url: str,
        *,
        now: float,
        events: list[str] | None = None,
        description: str | None = None,
        secrets: list[Secret] | None = None,
    ) -> tuple[Subscription, list[Secret]]:
        """Create a subscription; return it and its plaintext secret(s) (shown only here).

        ``secrets`` adopts existing secrets (the CLI uses ``KIRIM_WEBHOOK_SECRET``); otherwise
        one new ``whsec_`` secret is minted.
        """
        ms = int(now * 1000)
        sub = Subscription(
            id=ulid("wbs", ms, self.rng),
            url=url,
            events=list(events or ["*"]),
            description=description,
            created_at=now,
            updated_at=now,
            ordinal=len(self.subscriptions),
        )
        values = list(secrets) if secrets else [Secret(webhook_secret(self.rng))]
        for value in values:
            sub.secrets.append(SecretRecord(ulid("sec", ms, self.rng), value, now))
        self.subscriptions[sub.id] = sub
        return sub, values

    def mint_secret(
        self, sub: Subscription, *, now: float, expires_in_hours: float
    ) -> SecretRecord:
        """Add a secret; the older ones expire ``expires_in_hours`` from now (kirim-api §7.5)."""
        expiry = now + expires_in_hours * 3600
        for old in sub.secrets:
            if old.active(now) and (old.expires_at is None or old.expires_at > expiry):
                old.expires_at = expiry
        record = SecretRecord(
            ulid("sec", int(now * 1000), self.rng), Secret(webhook_secret(self.rng)), now
        )
        sub.secrets.append(record)
        sub.updated_at = now
        return record

    def live_subscriptions(self, event_type: str) -> Iterator[Subscription]:
        """Active subscriptions that want ``event_type``, in creation order."""
        for sub in self.subscriptions.values():
            if sub.status == "active" and not sub.deleted and sub.matches(event_type):
                yield sub

    # ------------------------------------------------------------------ deliveries

    def new_delivery(
        self,
        sub: Subscription,
        *,
        event_id: str,
        event_type: str,
        source: str,
        event_keys: tuple[str, ...],
        payload: bytes,
        now: float,
        delivery_id: str | None = None,
        replayed_from: str | None = None,
    ) -> DeliveryRow:
        """Create (and keep) a pending delivery row."""
        # In whole milliseconds, the precision the API shows it in and reads filters in: a
        # clock's 14:13:20.1229997 showed as .123 (rounded to the microsecond first), and
        # created_after=.123 (inclusive) left that row out, created_before=.123 took it in
        now = math.floor(now * 1000) / 1000
        row = DeliveryRow(
            seq=len(self.deliveries),
            id=delivery_id or ulid("wbd", int(now * 1000), self.rng),
            subscription_id=sub.id,
            event_id=event_id,
            event_type=event_type,
            source=source,
            event_keys=event_keys,
            payload=payload,
            url=sub.url,
            created_at=now,
            updated_at=now,
            replayed_from=replayed_from,
        )
        self.deliveries.append(row)
        self.by_id[row.id] = row
        return row

    def hold(self, row: DeliveryRow, why: str) -> None:
        """Keep a pending row whose subscription is ``why`` (disabled, deleted) unsent."""
        row.error, row.next_retry_at = f"not sent: subscription is {why}", None
        self.held.setdefault(row.subscription_id, []).append(row)

    def reactivate(self, sub: Subscription) -> int:
        """Make ``sub`` active again and hand its held rows to the engine, if one listens
        (else they stay held). Returns how many rows were handed over."""
        sub.status, sub.consecutive_failures = "active", 0
        if self.on_enqueue is None:
            return 0
        rows = [r for r in self.held.pop(sub.id, []) if r.id in self.by_id]  # not purged
        for row in rows:
            row.error = None
            self.on_enqueue(row)
        return len(rows)

    def replay(self, original: DeliveryRow, *, now: float) -> DeliveryRow:
        """A new pending row for ``original``'s event, handed to the engine if one listens."""
        sub = self.subscriptions[original.subscription_id]
        row = self.new_delivery(
            sub,
            event_id=original.event_id,
            event_type=original.event_type,
            source=original.source,
            event_keys=original.event_keys,
            payload=original.payload,
            now=now,
            replayed_from=original.id,
        )
        self.replayed.add(original.id)
        if self.on_enqueue is not None:
            self.on_enqueue(row)
        return row

    def purge(self, before: float) -> int:
        """Delete delivery rows created before ``before`` (Kirim's daily 30-day purge).

        Seqs are kept, so cursors issued earlier stay valid. Returns how many rows went.
        """
        gone = 0
        for index, row in enumerate(self.deliveries):
            if row.seq >= 0 and row.created_at < before and row.id in self.by_id:
                del self.by_id[row.id]
                self.deliveries[index] = _tombstone(row)
                gone += 1
        return gone

    def record(self, attempt: AttemptRecord) -> None:
        """Append an attempt (when attempts are recorded)."""
        if self.record_attempts:
            self.attempts.append(attempt)

    def sent_event_keys(self) -> set[str]:
        """Event keys of the deliveries attempted at least once (recorded as delivered, for
        a history made without sending): what a receiver can have seen."""
        return {key for row in self.deliveries if row.attempt for key in row.event_keys}

    def unacknowledged_event_keys(self, subscription_id: str | None = None) -> set[str]:
        """Event keys that no delivery (of ``subscription_id``, or any) got a 2xx for,
        those never sent to a disabled subscription included."""
        acked: set[str] = set()
        seen: set[str] = set()
        for row in self.deliveries:
            if subscription_id is not None and row.subscription_id != subscription_id:
                continue
            seen.update(row.event_keys)
            if row.acknowledged:
                acked.update(row.event_keys)
        for sub_id, keys in self.unsent.items():
            if subscription_id in (None, sub_id):
                seen |= keys
        return seen - acked


def _tombstone(row: DeliveryRow) -> DeliveryRow:
    # A purged row keeps its place (seq) but matches no filter and carries no payload.
    return DeliveryRow(
        seq=row.seq,
        id=row.id,
        subscription_id="",
        event_id="",
        event_type="",
        source="",
        event_keys=(),
        payload=b"",
        url="",
        created_at=row.created_at,
        updated_at=row.updated_at,
        status="purged",
    )
