"""A seeded, generator-based simulation of one Kirim organisation's WhatsApp traffic.

The world has phone numbers, agents, contacts and conversations. Sessions start at random
(exponential gaps): a customer writes in, or the business sends a campaign message. Agents
are assigned and reassigned, reply with outbound messages whose statuses move
sent -> delivered -> read (some fail with real Meta error codes, some are never delivered or
never read), and close conversations; a later message reopens them. Contacts are created and
updated.

Each session is a Python generator that yields how many seconds to wait; it schedules
events on a heap and :meth:`World.bundles` pops them in event-time order. Nothing but the
live entities (contacts, open sessions, pending statuses) is kept, so a million events stream
through in bounded memory. A :class:`Bundle` is what one webhook body carries: usually one
event, sometimes two statuses of one message in one Meta body.

Invariants the ground truth relies on (see :mod:`kirim_events.emulator.truth`):

* all times are whole unix seconds (Meta's ``timestamp`` has second precision);
* within one conversation, a close never shares a second with another event, and neither
  do two assignments, so ordering by event time is unambiguous where it matters;
* a close comes after every status of the conversation's messages sent so far, so statuses
  never reopen a conversation by accident (a new inbound or outbound message does).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from kirim_events.emulator.ids import derive_rng, ulid, wamid
from kirim_events.emulator.model import (
    DEFAULT_START,
    INBOUND_TEXTS,
    META_ERRORS,
    NAMES,
    SURNAMES,
    Bundle,
    Contact,
    Phone,
    WorldConfig,
    WorldEvent,
)

__all__ = [
    "DEFAULT_START",
    "META_ERRORS",
    "Bundle",
    "Contact",
    "Phone",
    "World",
    "WorldConfig",
    "WorldEvent",
]


@dataclass(slots=True)
class _Conversation:
    id: str
    phone: int
    contact: int
    open: bool = True
    assignee: tuple[str, str] | None = None  # (user_id, team_id)
    last_main: int = 0  # last assignment/close/inbound time
    last_any: int = 0  # last scheduled event of any kind (statuses included)


_Process = Generator[float, None, None]


_Body = _Process | tuple[str, tuple[WorldEvent, ...]]
# Heap entries are plain tuples (time, seq, body): much cheaper to compare than dataclasses.
_Item = tuple[int, int, _Body]


class World:
    """A deterministic stream of Kirim events with their ground truth.

    Parameters
    ----------
    config
        The organisation's knobs (:class:`WorldConfig`).
    seed
        Same seed, same config and same start give the same events, byte for byte.
    start
        Simulated start time (unix seconds or an aware datetime); 2026-05-01 by default.

    Examples
    --------
    >>> world = World(seed=7)
    >>> bundles = list(world.bundles(max_events=50))
    >>> sum(len(b.events) for b in bundles)
    50
    """

    def __init__(
        self,
        config: WorldConfig | None = None,
        *,
        seed: int = 0,
        start: int | datetime | None = None,
    ) -> None:
        self.config = (config or WorldConfig()).validate()
        self.seed = seed
        self._rng = random.Random(seed)
        if isinstance(start, datetime):
            start = int(start.timestamp())
        self.start = DEFAULT_START if start is None else int(start)
        self.now = self.start
        # Wamids carry no time, as the ULIDs do: drawn from the seed alone, a second run
        # (same seed, another start: `emulate` twice without --start) repeated the first
        # run's, and a collector took its messages and statuses for copies of the first's.
        self._wamid_salt = derive_rng(seed, "wamid", self.start).getrandbits(72)
        rng = self._rng
        self.phones = [
            Phone(
                phone_number_id=str(rng.randrange(10**14, 10**15)),
                display_phone_number=f"628{rng.randrange(10**9, 10**10)}",
                waba_id=str(rng.randrange(10**14, 10**15)),
            )
            for _ in range(self.config.phone_numbers)
        ]
        teams = ("team_support", "team_sales")
        self.agents = [
            (ulid("usr", self.start * 1000 - 10**9, rng), teams[i % 2])
            for i in range(self.config.agents)
        ]
        self.contacts: list[Contact] = []
        self._busy: set[tuple[int, int]] = set()
        self._conversations: dict[tuple[int, int], _Conversation] = {}
        self._heap: list[_Item] = []
        self._seq = 0
        self.emitted = 0

    # ------------------------------------------------------------------ scheduling

    def _push(self, at: int, body: _Body) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, body))

    def _schedule(self, *events: WorldEvent, shape: str) -> None:
        self._push(max(e.at for e in events), (shape, events))

    def bundles(self, max_events: int | None = None) -> Iterator[Bundle]:
        """Yield bundles in event-time order until ``max_events`` events (forever if None).

        The last bundle is cut short if it would pass ``max_events``. Call once per World.
        """
        if self.emitted:
            raise RuntimeError("World.bundles() can run only once; make a new World")
        if max_events is not None and max_events <= 0:
            return
        self._push(self.start, self._spawner())
        while self._heap:
            at, _, body = heapq.heappop(self._heap)
            self.now = at
            if isinstance(body, tuple):
                shape, events = body
                if max_events is not None and self.emitted + len(events) > max_events:
                    events = events[: max_events - self.emitted]
                self.emitted += len(events)
                yield Bundle(self.emitted - len(events), at, shape, events)
                if max_events is not None and self.emitted >= max_events:
                    return
                continue
            try:
                delay = next(body)
            except StopIteration:
                continue
            self._push(at + max(0, math.ceil(delay)), body)

    def events(self, max_events: int | None = None) -> Iterator[WorldEvent]:
        """Yield single events (bundles flattened) in emission order."""
        for bundle in self.bundles(max_events):
            yield from bundle.events

    # ------------------------------------------------------------------ helpers

    def _lognormal(self, median: float, sigma: float, cap: float) -> int:
        return max(1, min(int(cap), round(self._rng.lognormvariate(math.log(median), sigma))))

    def _ms(self, at: int) -> int:
        return at * 1000 + self._rng.randrange(1000)

    def _new_contact(self) -> Contact:
        rng = self._rng
        name = f"{rng.choice(NAMES)} {rng.choice(SURNAMES)}" if rng.random() < 0.8 else None
        contact = Contact(
            index=len(self.contacts),
            id=ulid("ctc", self._ms(self.now), rng),
            digits=f"628{rng.randrange(10**9, 10**10)}",
            name=name,
            email=None,
            created_at=self.now,
            updated_at=self.now,
        )
        self.contacts.append(contact)
        return contact

    def _pick(self, phone: int, new_share: float) -> tuple[Contact, bool] | None:
        rng = self._rng
        full = len(self.contacts) >= self.config.max_contacts
        if self.contacts and (full or rng.random() >= new_share):
            for _ in range(8):
                contact = rng.choice(self.contacts)
                if (phone, contact.index) not in self._busy:
                    return contact, False
            if full:
                return None
        return self._new_contact(), True

    def _conversation(self, phone: int, contact: Contact) -> _Conversation:
        key = (phone, contact.index)
        conv = self._conversations.get(key)
        if conv is None:
            conv = _Conversation(ulid("cnv", self._ms(self.now), self._rng), phone, contact.index)
            self._conversations[key] = conv
        return conv

    def _next_main(self, conv: _Conversation) -> int:
        return max(self.now, conv.last_main + 1)

    # ------------------------------------------------------------------ events

    def _contact_event(
        self,
        kind: str,
        contact: Contact,
        phone: int,
        changed: tuple[str, ...] = (),
        source: str | None = None,
    ) -> None:
        at = self.now
        self._schedule(
            WorldEvent(
                type=kind,
                at=at,
                event_id=ulid("evt", self._ms(at), self._rng),
                phone=self.phones[phone],
                contact=contact,
                changed_fields=changed,
                acquisition_source=source,
            ),
            shape="kirim",
        )

    def _update_contact(self, conv: _Conversation) -> None:
        rng = self._rng
        old = self.contacts[conv.contact]
        field_name = rng.choice(("name", "email", "labels"))
        if field_name == "name":
            new = replace(old, name=f"{rng.choice(NAMES)} {rng.choice(SURNAMES)}")
        elif field_name == "email":
            new = replace(old, email=f"cust{old.index}.{rng.randrange(100)}@example.com")
        else:
            new = replace(old, labels=(*old.labels, rng.choice(("vip", "reseller", "complaint"))))
        new = replace(new, updated_at=self.now)
        self.contacts[conv.contact] = new
        self._contact_event("contact.updated", new, conv.phone, (field_name,))

    def _inbound(self, conv: _Conversation) -> None:
        rng = self._rng
        at = self._next_main(conv)
        contact = self.contacts[conv.contact]
        roll = rng.random()
        kind = "text" if roll < 0.8 else ("image" if roll < 0.9 else "interactive")
        event = WorldEvent(
            type="message.received",
            at=at,
            event_id=wamid(contact.digits, rng, salt=self._wamid_salt),
            phone=self.phones[conv.phone],
            contact=contact,
            conversation_id=conv.id,
            message_type=kind,
            text=rng.choice(INBOUND_TEXTS),
        )
        event = replace(event, message_id=event.event_id)
        conv.open = True
        conv.last_main = at
        conv.last_any = max(conv.last_any, at)
        self._schedule(event, shape=self._message_shape())

    def _message_shape(self) -> str:
        rate = self.config.third_shape_rate
        return "legacy" if rate and self._rng.random() < rate else "meta"

    def _assign(self, conv: _Conversation) -> None:
        rng = self._rng
        choices = [a for a in self.agents if conv.assignee is None or a[0] != conv.assignee[0]]
        user, team = rng.choice(choices)
        at = self._next_main(conv)
        self._schedule(
            WorldEvent(
                type="conversation.assigned",
                at=at,
                event_id=ulid("evt", self._ms(at), rng),
                phone=self.phones[conv.phone],
                contact=self.contacts[conv.contact],
                conversation_id=conv.id,
                user_id=user,
                team_id=team,
                previous_user_id=conv.assignee[0] if conv.assignee else None,
            ),
            shape="kirim",
        )
        conv.assignee = (user, team)
        conv.open = True
        conv.last_main = at
        conv.last_any = max(conv.last_any, at)

    def _close(self, conv: _Conversation, automatic: bool = False) -> int:
        at = max(self.now, conv.last_main + 1, conv.last_any + 1)
        closer = None if automatic or conv.assignee is None else conv.assignee[0]
        self._schedule(
            WorldEvent(
                type="conversation.closed",
                at=at,
                event_id=ulid("evt", self._ms(at), self._rng),
                phone=self.phones[conv.phone],
                contact=self.contacts[conv.contact],
                conversation_id=conv.id,
                closed_by_user_id=closer,
            ),
            shape="kirim",
        )
        conv.open = False
        conv.last_main = conv.last_any = at
        return at

    def _send(self, conv: _Conversation, category: str) -> tuple[bool, int]:
        """Schedule one outbound message's statuses; return (delivered, last status time)."""
        rng, cfg = self._rng, self.config
        contact = self.contacts[conv.contact]
        base = WorldEvent(
            type="message.status",
            at=0,
            event_id=wamid(contact.digits, rng, salt=self._wamid_salt),
            phone=self.phones[conv.phone],
            contact=contact,
            conversation_id=conv.id,
            category=category,
        )
        base = replace(base, message_id=base.event_id)
        conv.open = True
        sent = self._next_main(conv) + rng.randint(0, 2)
        statuses: list[WorldEvent] = []
        delivered = False
        if rng.random() < cfg.failure_rate:
            code, title = self._error()
            failed_at = sent
            if rng.random() < 0.3:
                statuses.append(replace(base, at=sent, status="sent"))
                failed_at = sent + rng.randint(1, 30)
            statuses.append(replace(base, at=failed_at, status="failed", error=(code, title)))
        else:
            statuses.append(replace(base, at=sent, status="sent"))
            if rng.random() < cfg.delivered_rate:
                delivered = True
                t = sent + self._lognormal(4, 1.0, 600)
                statuses.append(replace(base, at=t, status="delivered"))
                if rng.random() < cfg.read_rate:
                    statuses.append(
                        replace(base, at=t + self._lognormal(180, 1.2, 3600), status="read")
                    )
        if (
            len(statuses) >= 2
            and statuses[1].status == "delivered"
            and statuses[1].at - statuses[0].at <= 5
            and rng.random() < cfg.batch_rate
        ):
            self._schedule(statuses[0], statuses[1], shape="meta")
            statuses = statuses[2:]
        for status in statuses:
            self._schedule(status, shape=self._message_shape())
        last = max(s.at for s in [*statuses, replace(base, at=sent)])
        conv.last_any = max(conv.last_any, last)
        return delivered, last

    def _error(self) -> tuple[int, str]:
        roll = self._rng.random() * sum(w for _, _, w in META_ERRORS)
        for code, title, weight in META_ERRORS:
            roll -= weight
            if roll <= 0:
                return code, title
        return META_ERRORS[-1][0], META_ERRORS[-1][1]

    # ------------------------------------------------------------------ processes

    def _spawner(self) -> _Process:
        rng, cfg = self._rng, self.config
        while True:
            if rng.random() < cfg.outbound_share:
                self._push(self.now, self._campaign())
            else:
                self._push(self.now, self._inbound_session())
            yield rng.expovariate(1.0 / cfg.session_interval)

    def _claim(self, new_share: float) -> tuple[_Conversation, bool] | None:
        phone = self._rng.randrange(len(self.phones))
        picked = self._pick(phone, new_share)
        if picked is None:
            return None
        contact, is_new = picked
        self._busy.add((phone, contact.index))
        return self._conversation(phone, contact), is_new

    def _inbound_session(self) -> _Process:
        claimed = self._claim(new_share=0.5)
        if claimed is None:
            return
        conv, is_new = claimed
        try:
            if is_new:
                contact = self.contacts[conv.contact]
                self._contact_event("contact.created", contact, conv.phone, source="inbound")
                yield self._rng.randint(1, 3)
            self._inbound(conv)
            yield from self._handle(conv)
        finally:
            self._busy.discard((conv.phone, conv.contact))

    def _campaign(self) -> _Process:
        rng, cfg = self._rng, self.config
        claimed = self._claim(new_share=0.1)
        if claimed is None:
            return
        conv, is_new = claimed
        try:
            if is_new:
                contact = self.contacts[conv.contact]
                self._contact_event("contact.created", contact, conv.phone, source="api")
                yield rng.randint(1, 3)
            delivered, last = self._send(conv, "marketing")
            if delivered and rng.random() < cfg.reply_rate / 2:
                yield max(1, last - self.now) + self._lognormal(600, 1.0, 7200)
                self._inbound(conv)
                yield from self._handle(conv)
            elif rng.random() < 0.3:
                # Unanswered campaigns are closed automatically (no closing user).
                yield self._lognormal(4 * 3600, 0.5, 86400)
                yield max(0, self._close(conv, automatic=True) - self.now)
        finally:
            self._busy.discard((conv.phone, conv.contact))

    def _handle(self, conv: _Conversation) -> _Process:
        rng, cfg = self._rng, self.config
        if conv.assignee is None or not rng.random() < 0.8:
            yield self._lognormal(90, 1.2, 7200)
            self._assign(conv)
        turns = rng.randint(1, 4)
        for turn in range(turns):
            yield self._lognormal(120, 1.0, 3600)
            if rng.random() < cfg.reassign_rate:
                self._assign(conv)
                yield rng.randint(5, 60)
            self._send(conv, "service")
            if rng.random() < cfg.contact_update_rate:
                self._update_contact(conv)
            if turn == turns - 1 or not rng.random() < cfg.reply_rate:
                break
            yield self._lognormal(300, 1.0, 7200)
            self._inbound(conv)
        if rng.random() < cfg.close_rate:
            yield self._lognormal(600, 1.0, 7200)
            yield max(0, self._close(conv) - self.now)
