"""Parse one webhook delivery (headers + raw body) into normalized event records.

Three body shapes are accepted (kirim-api.md §4); the shape is detected from the body, the
``X-Kirim-Source`` header is only a hint:

1. Meta passthrough: ``object == "whatsapp_business_account"`` with a list ``entry``. Every
   ``messages[]`` and ``statuses[]`` item becomes one record, so a batched body with three
   statuses gives three records, each with the whole body as its payload (a very large
   batch: see ``events_meta.BATCH_PAYLOAD_LIMIT``).
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
placeholder outside ``events_time.EVENT_TIME_RANGE``, such as Go's zero time or unix 0), the
signature ``t``, then ``received_at``; ``time_source`` says which was used.

This module detects the shape and runs its reader: ``events_meta`` (Meta passthrough) and
``events_kirim`` (Kirim's two shapes), on what ``events_context`` gives them; the record and
the type names are in ``events_record``, time and header numbers in ``events_time``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kirim_events.errors import (
    InvalidJSON,
    NotAnObject,
    ParseFailure,
    PayloadError,
    UnknownShape,
)
from kirim_events.events_context import Context, Headers
from kirim_events.events_kirim import kirim_records, legacy_records
from kirim_events.events_meta import meta_records
from kirim_events.events_record import EVENT_FIELDS as EVENT_FIELDS
from kirim_events.events_record import EVENT_TYPE_PATTERN, ORIGINS, EventRecord
from kirim_events.events_record import KNOWN_TYPES as KNOWN_TYPES
from kirim_events.events_record import MAX_TYPE_LENGTH as MAX_TYPE_LENGTH
from kirim_events.events_record import TYPE_ALIASES as TYPE_ALIASES
from kirim_events.events_record import canonical_type as canonical_type
from kirim_events.events_time import header_number as header_number
from kirim_events.events_time import parse_time, signature_time

# most are defined in events_*: they (and the names imported ``as`` themselves above) stay
# importable from here, where the package and its users have always found them
__all__ = [
    "EVENT_TYPE_PATTERN",
    "EventRecord",
    "Records",
    "header_event_id",
    "parse_delivery",
    "parse_time",
]

log = logging.getLogger(__name__)


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
    return Headers(headers).get("X-Kirim-Event-Id")


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
    hdrs = Headers(headers)
    signature = hdrs.get("X-Kirim-Signature") or hdrs.get("X-Kirim-Signature-256")
    ctx = Context(
        headers=hdrs,
        payload=text,
        body=body,
        received_at=received,
        origin=origin,
        signature=signature,
        signed_at=signature_time(signature),
        payload_exact=payload_exact,
        delivery_id=hdrs.get("X-Kirim-Delivery-Id"),
        attempt=header_number(hdrs.get("X-Kirim-Attempt")),
    )
    shape = _detect(obj)
    build = {"meta": meta_records, "kirim": kirim_records}.get(shape, legacy_records)
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
