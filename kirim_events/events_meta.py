"""Reader of Meta passthrough bodies: a record per status or message item; large batches split."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kirim_events.events_context import Context, as_digits, as_text, at_path, make_record
from kirim_events.events_record import (
    EVENT_TYPE_PATTERN,
    MAX_TYPE_LENGTH,
    EventRecord,
    canonical_type,
    check_type,
)

__all__ = ["BATCH_PAYLOAD_LIMIT", "meta_records"]

# A batched Meta body is every record's payload while its copies stay under this many bytes;
# beyond it (5,000 statuses in 0.33 MB would store 1.6 GB), the first record keeps the whole
# body and each other one its own one-item body (payload_exact false).
BATCH_PAYLOAD_LIMIT = 16 * 1024 * 1024


def _list(value: Any) -> list[Any]:
    """``value`` when it is a JSON array, else no items (Meta's arrays, read tolerantly)."""
    return value if isinstance(value, list) else []


_MetaItem = tuple[dict[str, Any], str, dict[str, Any]]


def _meta_items(body: dict[str, Any]) -> Iterator[_MetaItem]:
    """``(change, kind, item)`` for every ``statuses[]`` / ``messages[]`` item, in order."""
    for entry in _list(body.get("entry")):
        for change in _list(at_path(entry, "changes")):
            value = at_path(change, "value")
            if isinstance(value, dict):
                for kind in ("statuses", "messages"):
                    for item in _list(value.get(kind)):
                        if isinstance(item, dict):
                            yield change, kind, item


def meta_records(body: dict[str, Any], ctx: Context) -> Iterator[EventRecord]:
    """One record per status or message item of a Meta body; one for the body without any."""
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
            "phone_number_id": as_text(at_path(value, "metadata", "phone_number_id"))
            or as_text(at_path(kirim, "phone_number_id")),
            "conversation_id": as_text(at_path(kirim, "conversation_id")),
            "contact_id": as_text(at_path(kirim, "contact_id")),
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
            for c, change in enumerate(_list(at_path(entry, "changes"))):
                value = at_path(change, "value")
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
                wa_id = at_path(contact, "wa_id")
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
    item: dict[str, Any], shared: dict[str, Any], ctx: Context, position: int, own: str | None
) -> EventRecord:
    wamid = as_text(item.get("id"))
    status = (as_text(item.get("status")) or "unknown").lower()
    errors = item.get("errors")
    first_error = errors[0] if isinstance(errors, list) and errors else {}
    key = f"{wamid}:{status}" if wamid else f"sha256:{ctx.body_hash}:{position}"
    recipient = as_digits(item.get("recipient_id"))
    return make_record(
        ctx.base("meta", item.get("timestamp"), own),
        event_key=key,
        event_id=wamid or ctx.headers.get("X-Kirim-Event-Id") or key,
        type="message.status",
        message_id=wamid,
        status=status,
        error_code=as_text(at_path(first_error, "code")),
        error_title=as_text(at_path(first_error, "title")),
        recipient_id=recipient,
        wa_id=recipient,
        **shared,
    )


def _meta_message(
    item: dict[str, Any], shared: dict[str, Any], ctx: Context, position: int, own: str | None
) -> EventRecord:
    wamid = as_text(item.get("id"))
    key = wamid or f"sha256:{ctx.body_hash}:{position}"
    return make_record(
        ctx.base("meta", item.get("timestamp"), own),
        event_key=key,
        event_id=wamid or ctx.headers.get("X-Kirim-Event-Id") or key,
        type="message.received",
        message_id=wamid,
        wa_id=as_digits(item.get("from")),
        **shared,
    )


def _meta_other(kirim: dict[str, Any], ctx: Context) -> EventRecord:
    # A Meta body with neither messages nor statuses (another Meta field): keep it whole.
    header_type = ctx.headers.get("X-Kirim-Event")
    kind = "meta.other"  # the header is only a hint: a bad one must not refuse a valid body
    if header_type and len(header_type) <= MAX_TYPE_LENGTH:
        kind = header_type if EVENT_TYPE_PATTERN.fullmatch(header_type) else kind
    event_id = ctx.headers.get("X-Kirim-Event-Id")
    key = event_id or f"sha256:{ctx.body_hash}"
    ctx.header_keyed = True
    return make_record(
        ctx.base("meta", None),
        event_key=key,
        event_id=event_id or key,
        type=check_type(canonical_type(kind)),  # the lake's name, as in every shape
        phone_number_id=as_text(at_path(kirim, "phone_number_id")),
        conversation_id=as_text(at_path(kirim, "conversation_id")),
        contact_id=as_text(at_path(kirim, "contact_id")),
    )
