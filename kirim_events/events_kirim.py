"""Readers of Kirim's own body shapes: native (``type`` + ``data``) and the third (``event``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kirim_events.events_context import Context, as_digits, as_text, at_path, make_record
from kirim_events.events_record import EventRecord, canonical_type, check_type

__all__ = ["kirim_records", "legacy_records"]


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _kirim_typed(data: dict[str, Any]) -> dict[str, Any]:
    """Pull the typed ids out of a Kirim-native ``data`` object (any event type)."""
    message = at_path(data, "message") if isinstance(at_path(data, "message"), dict) else {}
    conversation = at_path(data, "conversation")
    contact = at_path(data, "contact")
    assignee = at_path(data, "assignee")
    error = at_path(message, "error")
    recipient = as_digits(at_path(message, "to"))
    contact_phone = as_digits(at_path(contact, "phone_number"))
    return {
        "phone_number_id": as_text(at_path(data, "meta", "phone_number_id"))
        or as_text(at_path(data, "phone_number_id"))
        or as_text(at_path(message, "phone_number_id"))
        or as_text(at_path(data, "session")),
        # Outbound messages join Meta status callbacks on the wamid (provider_id).
        "message_id": as_text(at_path(message, "provider_id")) or as_text(at_path(message, "id")),
        "conversation_id": as_text(at_path(conversation, "id"))
        or as_text(at_path(data, "conversation_id")),
        "contact_id": as_text(at_path(contact, "id")) or as_text(at_path(data, "contact_id")),
        # lower case, as Meta statuses are (the analytics rank "read", not "READ")
        "status": _lower(
            as_text(at_path(message, "status")) or as_text(at_path(conversation, "status"))
        ),
        "error_code": as_text(at_path(error, "provider_code")) or as_text(at_path(error, "code")),
        "error_title": as_text(at_path(error, "message")),
        "recipient_id": recipient,
        "wa_id": recipient or contact_phone or as_digits(at_path(data, "contact", "wa_id")),
        "user_id": as_text(at_path(assignee, "user_id")),
        "previous_user_id": as_text(at_path(assignee, "previous_user_id")),
        "closed_by_user_id": as_text(at_path(conversation, "closed_by_user_id")),
        "team_id": as_text(at_path(assignee, "team_id")),
    }


def kirim_records(body: dict[str, Any], ctx: Context) -> Iterator[EventRecord]:
    """The one record of a Kirim-native body (``type`` and ``data``)."""
    # under the lake's name, as in the third shape: a message.status_updated stored as it
    # came sat in a folder that lake.events() of either name never reads
    kind = check_type(canonical_type(body["type"]))
    own_id = as_text(body.get("id"))
    event_id = own_id or ctx.headers.get("X-Kirim-Event-Id")
    key = event_id or f"sha256:{ctx.body_hash}"
    ctx.header_keyed = own_id is None
    yield make_record(
        ctx.base("kirim", body.get("created_at")),
        event_key=key,
        event_id=event_id or key,
        type=kind,
        **_kirim_typed(body["data"]),
    )


def legacy_records(body: dict[str, Any], ctx: Context) -> Iterator[EventRecord]:
    """The one record of a third-shape body (``event`` and ``data``)."""
    raw_type = body["event"]
    kind = check_type(canonical_type(raw_type))
    data = body["data"]
    message = at_path(data, "message") if isinstance(at_path(data, "message"), dict) else {}
    typed = _kirim_typed(data)
    message_id = as_text(at_path(message, "id"))
    status = typed["status"]
    if message_id:
        key = f"{message_id}:{kind}" + (f":{status}" if status else "")
    else:
        key = ctx.headers.get("X-Kirim-Event-Id") or f"sha256:{ctx.body_hash}"
        ctx.header_keyed = True
    typed["message_id"] = typed["message_id"] or message_id
    time_value = message.get("created_at") or message.get("timestamp") or body.get("delivered_at")
    yield make_record(
        # Kirim's own envelope too (design.md names two formats, kirim and meta); the
        # payload keeps the shape it came in
        ctx.base("kirim", time_value),
        event_key=key,
        event_id=ctx.headers.get("X-Kirim-Event-Id") or message_id or key,
        type=kind,
        **typed,
    )
