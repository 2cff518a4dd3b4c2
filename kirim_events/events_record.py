"""The normalized event record, and the event type names it may carry."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, overload

from kirim_events.errors import InvalidEventType

__all__ = [
    "EVENT_FIELDS",
    "EVENT_TYPE_PATTERN",
    "KNOWN_TYPES",
    "MAX_TYPE_LENGTH",
    "ORIGINS",
    "TYPE_ALIASES",
    "EventRecord",
    "canonical_type",
    "check_type",
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


def check_type(value: str) -> str:
    """``value`` when it is a valid event type name, else InvalidEventType."""
    if len(value) > MAX_TYPE_LENGTH or not EVENT_TYPE_PATTERN.fullmatch(value):
        raise InvalidEventType(f"event type {value[:80]!r} is not a valid Kirim event type")
    return value
