"""Parse one webhook delivery (headers + raw body) into normalized event records.

Three body shapes are accepted (kirim-api.md §4); the shape is detected from the body, the
``X-Kirim-Source`` header is only a hint:

1. Meta passthrough: ``object == "whatsapp_business_account"`` with a list ``entry``. Every
   ``messages[]`` and ``statuses[]`` item becomes one record, so a batched body with three
   statuses gives three records, each with the whole body as its payload (a very large
   batch: see ``BATCH_PAYLOAD_LIMIT``).
2. Kirim-native: string ``type`` and object ``data``.
3. The "third shape" from one older docs page: string ``event`` and object ``data``.

Event identity (``event_key``) -- the rule the whole store deduplicates on:

* Meta status: ``<statuses[].id>:<statuses[].status>``. The wamid is the *outbound message's*
  id and is shared by its sent, delivered, read and failed callbacks (and probably by their
  X-Kirim-Event-Id), so the status is part of the key: a retry collapses, the three
  statuses of one message stay three rows.
* Meta inbound message: ``messages[].id``.
* Kirim-native: the body ``id`` (``evt_...``), else ``X-Kirim-Event-Id``.
* Third shape: ``<data.message.id>:<type>[:<status>]``; its body ``id`` is a *delivery* id.
* Last resort only: ``sha256:<hex>`` of the raw body (plus the item position).

The key never uses the delivery id, the attempt, the signature ``t`` or a whole-body hash
while an id exists: those differ between retries and replays of the same event.

Event time (``occurred_at``) is the payload's own time; when the payload has none (or a
placeholder outside ``EVENT_TIME_RANGE``, such as Go's zero time or unix 0), the
signature ``t``, then ``received_at``; ``time_source`` says which was used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from kirim_events.errors import (
    InvalidEventType,
    InvalidJSON,
    NotAnObject,
    ParseFailure,
    PayloadError,
    UnknownShape,
)

__all__ = [
    "EVENT_TYPE_PATTERN",
    "EventRecord",
    "Records",
    "header_event_id",
    "parse_delivery",
    "parse_time",
]

EVENT_TYPE_PATTERN = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
MAX_TYPE_LENGTH = 64
ORIGINS = ("webhook", "backfill", "replay", "import")

# The third shape names the status event differently (kirim-api.md §4.3).
TYPE_ALIASES = {"message.status_updated": "message.status"}
KNOWN_TYPES = frozenset(
    {
        "message.received", "message.sent", "message.created", "message.status",
        "message.status_updated", "message.revoked", "message.edited",
        "conversation.assigned", "conversation.closed",
        "contact.created", "contact.updated", "contact.identity_updated",
    }
)  # fmt: skip
"""The event types Kirim is known to send (kirim-api.md §4); others are stored all the same."""
log = logging.getLogger(__name__)
# A batched Meta body is every record's payload while its copies stay under this many bytes;
# beyond it (5,000 statuses in 0.33 MB would store 1.6 GB), the first record keeps the whole
# body and each other one its own one-item body (payload_exact false).
BATCH_PAYLOAD_LIMIT = 16 * 1024 * 1024


@overload
def canonical_type(raw: str) -> str: ...
@overload
def canonical_type(raw: None) -> None: ...
def canonical_type(raw: str | None) -> str | None:
    """The event type under the name the lake stores it by (``message.status_updated``,
    the third shape's name, is ``message.status``); other names are kept as given."""
    return None if raw is None else TYPE_ALIASES.get(raw, raw)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One normalized event; the lake's ``events`` row (plus ``ingest_seq`` given at write)."""

    event_key: str
    event_id: str
    type: str
    occurred_at: datetime
    received_at: datetime
    origin: str
    source_format: str  # "meta" (Meta passthrough) or "kirim" (Kirim's own, both its shapes)
    time_source: str  # "payload", "signature" or "received"
    delivery_id: str | None
    attempt: int | None
    signature: str | None
    phone_number_id: str | None
    message_id: str | None
    conversation_id: str | None
    contact_id: str | None
    status: str | None
    error_code: str | None
    error_title: str | None
    recipient_id: str | None
    wa_id: str | None
    user_id: str | None
    previous_user_id: str | None
    closed_by_user_id: str | None
    team_id: str | None
    payload: str
    payload_exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a plain dict (column name -> value)."""
        return asdict(self)


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EventRecord))


# --------------------------------------------------------------------------- helpers


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip()
    return text or None


def _digits(value: Any) -> str | None:
    text = _str(value)
    if text is None:
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    return digits or None


EVENT_TIME_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
"""Payload times outside ``[start, end)`` are placeholders, not event times (Go's zero
time, unix 0, 9999-12-31; WhatsApp's business API began in 2018): the event takes the
signature's time instead."""

_UNIX = re.compile(r"\d{1,19}(\.\d+)?")
_UNIX_SCALED = 1e11
"""Unix times from this on are read as milliseconds (then micro-, nanoseconds): in seconds
they would be past the year 5000, and APIs that the docs say send seconds send these."""
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"([Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_time(value: Any) -> datetime | None:
    """Parse Kirim/Meta time values into an aware UTC datetime with microsecond precision.

    Accepts ISO-8601 (``Z`` or an offset, 0-9 fraction digits, seconds optional, either case
    of ``T`` and ``Z``; no offset means UTC) and unix seconds as a number or a decimal string
    (Meta's ``timestamp``); a number of 1e11 or more is read as milliseconds (1e14:
    microseconds, 1e17: nanoseconds). Returns None when the value is absent or unreadable.

    >>> parse_time("2026-05-23T10:00:00.123456789Z").isoformat()
    '2026-05-23T10:00:00.123456+00:00'
    >>> parse_time("1779531402").isoformat()
    '2026-05-23T10:16:42+00:00'
    >>> parse_time(1779531402250).isoformat()
    '2026-05-23T10:16:42.250000+00:00'
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
        for _ in range(3):
            if abs(seconds) < _UNIX_SCALED:
                break
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _UNIX.fullmatch(text):
        return parse_time(float(text))
    m = _ISO.fullmatch(text)
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro
        )
        if zone in (None, "Z", "z"):
            return dt.replace(tzinfo=UTC)
        zone = zone.replace(":", "")
        hours, minutes = int(zone[1:3]), int(zone[3:5])
        if hours > 23 or minutes > 59:
            return None  # no such offset (+99:99)
        offset = timedelta(hours=hours, minutes=minutes) * (1 if zone[0] == "+" else -1)
        return (dt - offset).replace(tzinfo=UTC)  # exact: no float seconds
    except (ValueError, OverflowError):
        return None


class _Headers:
    """Case-insensitive read-only view of request headers."""

    def __init__(self, headers: Mapping[str, str] | None) -> None:
        self._h = {k.lower(): v for k, v in (headers or {}).items()}

    def get(self, name: str) -> str | None:
        value = self._h.get(name.lower())
        return value.strip() if isinstance(value, str) and value.strip() else None


def header_number(text: str | None, digits: int = 9) -> int | None:
    """A header's whole number (ASCII digits, at most ``digits`` of them), else None.

    ``str.isdigit`` alone accepts "²" and "١", which ``int`` refuses or reads as another
    number, and ``int`` of thousands of digits raises.
    """
    value = (text or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= digits else None


def _signature_time(header: str | None) -> datetime | None:
    if not header:
        return None
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key.strip() == "t" and (seconds := header_number(value, 12)) is not None:
            return parse_time(seconds)
    return None


def _check_type(value: str) -> str:
    if len(value) > MAX_TYPE_LENGTH or not EVENT_TYPE_PATTERN.fullmatch(value):
        raise InvalidEventType(f"event type {value[:80]!r} is not a valid Kirim event type")
    return value


@dataclass(slots=True)
class _Context:
    """What every record of one delivery shares."""

    headers: _Headers
    payload: str
    body: bytes
    received_at: datetime
    origin: str
    signature: str | None
    signed_at: datetime | None
    payload_exact: bool
    delivery_id: str | None
    attempt: int | None
    header_keyed: bool = False  # some key came from X-Kirim-Event-Id (or its absence)

    @property
    def body_hash(self) -> str:
        """sha256 of the raw body, for the last-resort keys only (computed when needed)."""
        return hashlib.sha256(self.body).hexdigest()

    def base(self, source_format: str, time_value: Any, own: str | None = None) -> dict[str, Any]:
        """The columns every record of this delivery shares; ``own``: the record's own
        one-item body, stored instead of the whole body (see ``BATCH_PAYLOAD_LIMIT``)."""
        occurred = parse_time(time_value)
        if occurred is not None and EVENT_TIME_RANGE[0] <= occurred < EVENT_TIME_RANGE[1]:
            time_source = "payload"
        elif self.signed_at is not None:
            occurred, time_source = self.signed_at, "signature"
        else:
            occurred, time_source = self.received_at, "received"
        return {
            "occurred_at": occurred,
            "received_at": self.received_at,
            "origin": self.origin,
            "source_format": source_format,
            "time_source": time_source,
            "delivery_id": self.delivery_id,
            "attempt": self.attempt,
            "signature": self.signature,
            "payload": self.payload if own is None else own,
            "payload_exact": self.payload_exact and own is None,
        }


_TYPED = (
    "phone_number_id",
    "message_id",
    "conversation_id",
    "contact_id",
    "status",
    "error_code",
    "error_title",
    "recipient_id",
    "wa_id",
    "user_id",
    "previous_user_id",
    "closed_by_user_id",
    "team_id",
)


def _record(base: dict[str, Any], **values: Any) -> EventRecord:
    typed = {name: values.pop(name, None) for name in _TYPED}
    return EventRecord(**base, **values, **typed)


# --------------------------------------------------------------------------- shapes


def _list(value: Any) -> list[Any]:
    """``value`` when it is a JSON array, else no items (Meta's arrays, read tolerantly)."""
    return value if isinstance(value, list) else []


_MetaItem = tuple[dict[str, Any], str, dict[str, Any]]


def _meta_items(body: dict[str, Any]) -> Iterator[_MetaItem]:
    """``(change, kind, item)`` for every ``statuses[]`` / ``messages[]`` item, in order."""
    for entry in _list(body.get("entry")):
        for change in _list(_get(entry, "changes")):
            value = _get(change, "value")
            if isinstance(value, dict):
                for kind in ("statuses", "messages"):
                    for item in _list(value.get(kind)):
                        if isinstance(item, dict):
                            yield change, kind, item


def _meta_records(body: dict[str, Any], ctx: _Context) -> Iterator[EventRecord]:
    block = body.get("kirim")
    kirim: dict[str, Any] = block if isinstance(block, dict) else {}
    # Counting the items costs a second walk: only a body above 4 KiB can hold so many
    # items that its copies pass the limit (each item takes 3 bytes or more, "{},", so
    # 4096 bytes * 1366 items at most = 5.6 MB).
    items = sum(1 for _ in _meta_items(body)) if len(ctx.body) > 4096 else 0
    split = len(ctx.body) * items > BATCH_PAYLOAD_LIMIT
    bodies = _OneItemBodies(body, items) if split else None
    position = 0
    for change, kind, item in _meta_items(body):
        value = change["value"]
        shared = {
            "phone_number_id": _str(_get(value, "metadata", "phone_number_id"))
            or _str(_get(kirim, "phone_number_id")),
            "conversation_id": _str(_get(kirim, "conversation_id")),
            "contact_id": _str(_get(kirim, "contact_id")),
        }
        own = bodies.one(change, kind, item) if bodies is not None and position else None
        build = _meta_status if kind == "statuses" else _meta_message
        yield build(item, shared, ctx, position, own)
        position += 1
    if position == 0:
        yield _meta_other(kirim, ctx)


class _OneItemBodies:
    """The one-item bodies of a large batch (see ``BATCH_PAYLOAD_LIMIT``).

    Each is the whole body but the other items and their senders' contacts: what is no item
    (the ``kirim`` block, other changes of an entry, a contact of no item's sender) is in
    every one of them, so none is lost whichever copies the lake keeps. Only when that rest
    is itself too large to copy to every item (thousands of changes, megabytes of contacts
    of no item's sender; the copies would pass ``BATCH_PAYLOAD_LIMIT``) does each get just
    its own frame (the body's ``object``, the entry's ``id``, the change's ``field``, the
    value's ``messaging_product`` and ``metadata``, its sender's first contact), and the
    rest is in the first record's whole body only. Parsed again, one gives the same record
    (the same key too, when the item has an id). Written with ASCII escapes: a lone
    surrogate escape (valid JSON) must stay an escape, not become text no UTF-8 store takes.
    """

    def __init__(self, body: dict[str, Any], items: int) -> None:
        self.source = body
        self.body = {k: v for k, v in body.items() if k != "entry"}
        self.entries: list[Any] = []
        self.changes: list[list[Any]] = []
        self.where: dict[int, tuple[int, int]] = {}  # id(change) -> its place
        self.own_max = 0  # the largest contacts of one sender, in JSON bytes
        self.contacts: dict[tuple[int, int], dict[str, list[Any]]] = {}
        for e, entry in enumerate(_list(body.get("entry"))):
            skeletons: list[Any] = []
            for c, change in enumerate(_list(_get(entry, "changes"))):
                value = _get(change, "value")
                if isinstance(value, dict):
                    self.where[id(change)] = (e, c)
                    change = {**change, "value": self._skeleton(value, (e, c))}
                skeletons.append(change)
            self.changes.append(skeletons)
            is_list = isinstance(entry, dict) and isinstance(entry.get("changes"), list)
            self.entries.append({**entry, "changes": skeletons} if is_list else entry)
        rest = len(json.dumps({**self.body, "entry": self.entries}))
        self.framed = items * (rest + self.own_max) > BATCH_PAYLOAD_LIMIT
        self.frames: dict[tuple[int, int], tuple[dict[str, Any], ...]] = {}

    def _skeleton(self, value: dict[str, Any], place: tuple[int, int]) -> dict[str, Any]:
        """``value`` without its items, and without the contacts of its items' senders
        (each goes with its sender's message); anything else is kept as it is."""
        rest = dict(value)
        for kind in ("statuses", "messages"):
            if isinstance(value.get(kind), list):  # keep what in the array is no item
                rest[kind] = [x for x in value[kind] if not isinstance(x, dict)]
                if not rest[kind]:
                    del rest[kind]
        senders = {
            m["from"]
            for m in _list(value.get("messages"))
            if isinstance(m, dict) and isinstance(m.get("from"), str)
        }
        by_sender: dict[str, list[Any]] = {}
        if isinstance(value.get("contacts"), list):
            kept = []
            for contact in value["contacts"]:
                wa_id = _get(contact, "wa_id")
                if isinstance(wa_id, str) and wa_id in senders:
                    by_sender.setdefault(wa_id, []).append(contact)
                else:
                    kept.append(contact)
            rest["contacts"] = kept
        for sender, contacts in by_sender.items():  # one copy each (Meta lists one a message)
            distinct = list({json.dumps(c, sort_keys=True): c for c in contacts}.values())
            by_sender[sender] = distinct
            self.own_max = max(self.own_max, len(json.dumps(distinct)))
        self.contacts[place] = by_sender
        return rest

    def one(self, change: dict[str, Any], kind: str, item: dict[str, Any]) -> str:
        e, c = self.where[id(change)]
        if self.framed:
            return self._framed(e, c, change, kind, item)
        skeleton = self.changes[e][c]
        value = dict(skeleton["value"])
        value[kind] = [*value.get(kind, ()), item]
        sender = item.get("from") if kind == "messages" else None
        if isinstance(sender, str) and (own := self.contacts[(e, c)].get(sender)):
            value["contacts"] = [*value.get("contacts", ()), *own]
        changes = list(self.changes[e])
        changes[c] = {**skeleton, "value": value}
        entries = list(self.entries)
        entries[e] = {**entries[e], "changes": changes}
        return json.dumps({**self.body, "entry": entries})

    def _framed(
        self, e: int, c: int, change: dict[str, Any], kind: str, item: dict[str, Any]
    ) -> str:
        """``item`` in its own frame only: fields kept whole when small, like ids (the
        frame of each change is made once, not once per item)."""
        frame = self.frames.get((e, c))
        if frame is None:
            entry = self.source["entry"][e]
            frame = self.frames[(e, c)] = (
                {k: v for k, v in self.body.items() if k in _FRAME_BODY and _small(v)},
                {k: v for k, v in entry.items() if k == "id" and _small(v)},
                {k: v for k, v in change.items() if k == "field" and _small(v)},
                {k: v for k, v in change["value"].items() if k in _FRAME_VALUE and _small(v)},
            )
        top, one_entry, one_change, base = frame
        value = dict(base)
        sender = item.get("from") if kind == "messages" else None
        if isinstance(sender, str) and (own := self.contacts[(e, c)]):
            value["contacts"] = own.get(sender, [])[:1]
        value[kind] = [item]
        changes = [{**one_change, "value": value}]
        return json.dumps({**top, "entry": [{**one_entry, "changes": changes}]})


_FRAME_BODY = frozenset({"object", "kirim"})
_FRAME_VALUE = frozenset({"messaging_product", "metadata"})


def _small(value: Any) -> bool:
    """Small enough to copy to every item of a batch: a scalar, or JSON under 1 KiB."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return len(value if isinstance(value, str) else json.dumps(value)) <= 1024


def _meta_status(
    item: dict[str, Any], shared: dict[str, Any], ctx: _Context, position: int, own: str | None
) -> EventRecord:
    wamid = _str(item.get("id"))
    status = (_str(item.get("status")) or "unknown").lower()
    errors = item.get("errors")
    first_error = errors[0] if isinstance(errors, list) and errors else {}
    key = f"{wamid}:{status}" if wamid else f"sha256:{ctx.body_hash}:{position}"
    recipient = _digits(item.get("recipient_id"))
    return _record(
        ctx.base("meta", item.get("timestamp"), own),
        event_key=key,
        event_id=wamid or ctx.headers.get("X-Kirim-Event-Id") or key,
        type="message.status",
        message_id=wamid,
        status=status,
        error_code=_str(_get(first_error, "code")),
        error_title=_str(_get(first_error, "title")),
        recipient_id=recipient,
        wa_id=recipient,
        **shared,
    )


def _meta_message(
    item: dict[str, Any], shared: dict[str, Any], ctx: _Context, position: int, own: str | None
) -> EventRecord:
    wamid = _str(item.get("id"))
    key = wamid or f"sha256:{ctx.body_hash}:{position}"
    return _record(
        ctx.base("meta", item.get("timestamp"), own),
        event_key=key,
        event_id=wamid or ctx.headers.get("X-Kirim-Event-Id") or key,
        type="message.received",
        message_id=wamid,
        wa_id=_digits(item.get("from")),
        **shared,
    )


def _meta_other(kirim: dict[str, Any], ctx: _Context) -> EventRecord:
    # A Meta body with neither messages nor statuses (another Meta field): keep it whole.
    header_type = ctx.headers.get("X-Kirim-Event")
    kind = "meta.other"  # the header is only a hint: a bad one must not refuse a valid body
    if header_type and len(header_type) <= MAX_TYPE_LENGTH:
        kind = header_type if EVENT_TYPE_PATTERN.fullmatch(header_type) else kind
    event_id = ctx.headers.get("X-Kirim-Event-Id")
    key = event_id or f"sha256:{ctx.body_hash}"
    ctx.header_keyed = True
    return _record(
        ctx.base("meta", None),
        event_key=key,
        event_id=event_id or key,
        type=_check_type(kind),
        phone_number_id=_str(_get(kirim, "phone_number_id")),
        conversation_id=_str(_get(kirim, "conversation_id")),
        contact_id=_str(_get(kirim, "contact_id")),
    )


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _kirim_typed(data: dict[str, Any]) -> dict[str, Any]:
    """Pull the typed ids out of a Kirim-native ``data`` object (any event type)."""
    message = _get(data, "message") if isinstance(_get(data, "message"), dict) else {}
    conversation = _get(data, "conversation")
    contact = _get(data, "contact")
    assignee = _get(data, "assignee")
    error = _get(message, "error")
    recipient = _digits(_get(message, "to"))
    contact_phone = _digits(_get(contact, "phone_number"))
    return {
        "phone_number_id": _str(_get(data, "meta", "phone_number_id"))
        or _str(_get(data, "phone_number_id"))
        or _str(_get(message, "phone_number_id"))
        or _str(_get(data, "session")),
        # Outbound messages join Meta status callbacks on the wamid (provider_id).
        "message_id": _str(_get(message, "provider_id")) or _str(_get(message, "id")),
        "conversation_id": _str(_get(conversation, "id")) or _str(_get(data, "conversation_id")),
        "contact_id": _str(_get(contact, "id")) or _str(_get(data, "contact_id")),
        # lower case, as Meta statuses are (the analytics rank "read", not "READ")
        "status": _lower(_str(_get(message, "status")) or _str(_get(conversation, "status"))),
        "error_code": _str(_get(error, "provider_code")) or _str(_get(error, "code")),
        "error_title": _str(_get(error, "message")),
        "recipient_id": recipient,
        "wa_id": recipient or contact_phone or _digits(_get(data, "contact", "wa_id")),
        "user_id": _str(_get(assignee, "user_id")),
        "previous_user_id": _str(_get(assignee, "previous_user_id")),
        "closed_by_user_id": _str(_get(conversation, "closed_by_user_id")),
        "team_id": _str(_get(assignee, "team_id")),
    }


def _kirim_records(body: dict[str, Any], ctx: _Context) -> Iterator[EventRecord]:
    kind = _check_type(body["type"])
    own_id = _str(body.get("id"))
    event_id = own_id or ctx.headers.get("X-Kirim-Event-Id")
    key = event_id or f"sha256:{ctx.body_hash}"
    ctx.header_keyed = own_id is None
    yield _record(
        ctx.base("kirim", body.get("created_at")),
        event_key=key,
        event_id=event_id or key,
        type=kind,
        **_kirim_typed(body["data"]),
    )


def _legacy_records(body: dict[str, Any], ctx: _Context) -> Iterator[EventRecord]:
    raw_type = body["event"]
    kind = _check_type(canonical_type(raw_type))
    data = body["data"]
    message = _get(data, "message") if isinstance(_get(data, "message"), dict) else {}
    typed = _kirim_typed(data)
    message_id = _str(_get(message, "id"))
    status = typed["status"]
    if message_id:
        key = f"{message_id}:{kind}" + (f":{status}" if status else "")
    else:
        key = ctx.headers.get("X-Kirim-Event-Id") or f"sha256:{ctx.body_hash}"
        ctx.header_keyed = True
    typed["message_id"] = typed["message_id"] or message_id
    time_value = message.get("created_at") or message.get("timestamp") or body.get("delivered_at")
    yield _record(
        # Kirim's own envelope too (design.md names two formats, kirim and meta); the
        # payload keeps the shape it came in
        ctx.base("kirim", time_value),
        event_key=key,
        event_id=ctx.headers.get("X-Kirim-Event-Id") or message_id or key,
        type=kind,
        **typed,
    )


def _detect(body: dict[str, Any]) -> str:
    if body.get("object") == "whatsapp_business_account" and isinstance(body.get("entry"), list):
        return "meta"
    if isinstance(body.get("type"), str) and isinstance(body.get("data"), dict):
        return "kirim"
    if isinstance(body.get("event"), str) and isinstance(body.get("data"), dict):
        return "legacy"
    raise UnknownShape("body matches none of the Meta, Kirim-native or third shapes")


def decode_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """Decode a raw body as UTF-8 JSON object; return ``(text, object)``.

    Raises InvalidJSON or NotAnObject (the receiver quarantines such bodies).
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidJSON(f"body is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise InvalidJSON("body is JSON nested too deeply to read") from None
    if not isinstance(value, dict):
        raise NotAnObject(f"body is JSON {type(value).__name__}, not an object")
    return text, value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a pair is fine: json.loads joins it


def _refuse_lone_surrogates(records: list[EventRecord]) -> None:
    """Valid JSON may escape half a UTF-16 pair ("\\ud800"): no Unicode text, so no UTF-8
    store (the journal, Parquet) takes it in a column. In the raw payload it is harmless."""
    for record in records:
        for name in EVENT_FIELDS:
            value = getattr(record, name)
            if name == "payload" or not isinstance(value, str) or value.isascii():
                continue
            if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
                raise InvalidJSON(f"{name} holds a lone UTF-16 surrogate escape (\\ud800)")


class Records(list[EventRecord]):
    """The records of one delivery; ``header_keyed``: some event key came from the
    ``X-Kirim-Event-Id`` header (or from its absence), which the signature does not cover,
    because the body has no id of its own."""

    header_keyed: bool = False


def header_event_id(headers: Mapping[str, str] | None) -> str | None:
    """``X-Kirim-Event-Id`` as the parser reads it (any case, blanks trimmed, empty: None)."""
    return _Headers(headers).get("X-Kirim-Event-Id")


def parse_delivery(
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    received_at: datetime | None = None,
    origin: str = "webhook",
    payload_exact: bool = True,
) -> Records:
    """Turn one delivery into event records.

    Parameters
    ----------
    body
        The raw request body, byte-exact; it is stored as each record's ``payload``.
    headers
        Request headers (any case). ``X-Kirim-Event-Id``, ``X-Kirim-Delivery-Id``,
        ``X-Kirim-Attempt`` and ``X-Kirim-Signature`` (or ``-256``) are read when present.
    received_at
        When we received it (aware datetime); now when omitted.
    origin
        ``webhook``, ``backfill``, ``replay`` or ``import``.
    payload_exact
        False when ``body`` is a re-serialisation (the original bytes were lost).

    Returns
    -------
    Records
        A list of one record per event (a Meta body with three statuses gives three), with
        ``header_keyed``.

    Raises
    ------
    InvalidJSON, NotAnObject, UnknownShape, InvalidEventType
        Subclasses of PayloadError: the body is kept in quarantine, not lost.
    """
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
    text, obj = decode_body(body)
    received = received_at or datetime.now(UTC)
    if received.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    received = received.astimezone(UTC)
    hdrs = _Headers(headers)
    signature = hdrs.get("X-Kirim-Signature") or hdrs.get("X-Kirim-Signature-256")
    ctx = _Context(
        headers=hdrs,
        payload=text,
        body=body,
        received_at=received,
        origin=origin,
        signature=signature,
        signed_at=_signature_time(signature),
        payload_exact=payload_exact,
        delivery_id=hdrs.get("X-Kirim-Delivery-Id"),
        attempt=header_number(hdrs.get("X-Kirim-Attempt")),
    )
    shape = _detect(obj)
    build = {"meta": _meta_records, "kirim": _kirim_records}.get(shape, _legacy_records)
    try:
        records = Records(build(obj, ctx))
    except PayloadError:
        raise
    except Exception as exc:  # quarantine, never lose; and say so, it may be our bug
        log.error(
            "parser failed on a %s-shape body (%s); quarantining it", shape, type(exc).__name__
        )
        raise ParseFailure(
            f"the parser failed on a {shape}-shape body ({type(exc).__name__}: {exc})"
        ) from exc
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(records)
    records.header_keyed = ctx.header_keyed
    return records
