"""What every body shape's reader shares: the delivery's context, tolerant JSON reads, records."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kirim_events.events_record import EventRecord
from kirim_events.events_time import EVENT_TIME_RANGE, parse_time

__all__ = ["Context", "Headers", "as_digits", "as_text", "at_path", "make_record"]


def at_path(obj: Any, *path: str) -> Any:
    """The value at the nested keys ``path`` of ``obj``, or None where an object is missing."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def as_text(value: Any) -> str | None:
    """A scalar as trimmed text (booleans as JSON writes them); None for absent, empty or nested."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip()
    return text or None


def as_digits(value: Any) -> str | None:
    """Only the digits of a scalar (a phone number as wa_id), or None when it has none."""
    text = as_text(value)
    if text is None:
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    return digits or None


class Headers:
    """Case-insensitive read-only view of request headers."""

    def __init__(self, headers: Mapping[str, str] | None) -> None:
        self._h = {k.lower(): v for k, v in (headers or {}).items()}

    def get(self, name: str) -> str | None:
        value = self._h.get(name.lower())
        return value.strip() if isinstance(value, str) and value.strip() else None


@dataclass(slots=True)
class Context:
    """What every record of one delivery shares."""

    headers: Headers
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
        one-item body, stored instead of the whole body (see
        ``events_meta.BATCH_PAYLOAD_LIMIT``)."""
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


def make_record(base: dict[str, Any], **values: Any) -> EventRecord:
    """The EventRecord of ``base`` (shared) and ``values``; typed ids not given are None."""
    typed = {name: values.pop(name, None) for name in _TYPED}
    return EventRecord(**base, **values, **typed)
