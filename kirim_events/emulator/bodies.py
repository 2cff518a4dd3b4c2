"""Render a world bundle into the exact webhook body and headers Kirim would send.

Three body shapes (kirim-api.md §4): Kirim-native envelopes for ``contact.*`` and
``conversation.*``, Meta passthrough for ``message.received`` / ``message.status`` (one body
may batch a message's sent and delivered statuses), and, when a world asks for it, the third
shape from ``/sending/receive-messages/``. Bodies are compact UTF-8 JSON, rendered once per
event and sent byte-identical on every attempt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kirim_events.emulator.ids import derive_rng, meta_billing_id, ulid
from kirim_events.emulator.truth import event_key
from kirim_events.emulator.world import Bundle, WorldEvent

__all__ = ["USER_AGENT", "Rendered", "delivery_headers", "iso", "render"]

USER_AGENT = "Kirim-Webhook/1.0"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered body with what the headers and the bookkeeping need."""

    body: bytes
    event_type: str  # X-Kirim-Event
    event_id: str  # X-Kirim-Event-Id
    source: str  # X-Kirim-Source: "meta" or "kirim"
    event_keys: tuple[str, ...]
    at: int  # event time of the bundle (its latest item), unix seconds


def iso(seconds: float, *, ms: bool = False) -> str:
    """ISO-8601 UTC with ``Z``: whole seconds, or milliseconds when ``ms``."""
    dt = datetime.fromtimestamp(seconds, UTC)
    if ms:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _e164(digits: str) -> str:
    return "+" + digits


def _display(digits: str) -> str:
    return f"+{digits[:2]} {digits[2:5]}-{digits[5:9]}-{digits[9:]}"


def _contact_obj(event: WorldEvent) -> dict[str, Any]:
    c = event.contact
    assert c is not None
    obj: dict[str, Any] = {
        "id": c.id,
        "object": "contact",
        "phone_number": _e164(c.digits),
        "name": c.name,
        "email": c.email,
        "metadata": None,
        "whatsapp_account": {"phone_number": _display(c.digits)},
        "created_at": iso(c.created_at, ms=True),
        "updated_at": iso(c.updated_at, ms=True),
    }
    if c.labels:
        obj["labels"] = list(c.labels)
    return obj


def _kirim_data(event: WorldEvent) -> dict[str, Any]:
    if event.type == "contact.created":
        return {"contact": _contact_obj(event), "acquisition_source": event.acquisition_source}
    if event.type == "contact.updated":
        return {"contact": _contact_obj(event), "changed_fields": list(event.changed_fields)}
    if event.type == "conversation.assigned":
        return {
            "conversation": {
                "id": event.conversation_id,
                "object": "conversation",
                "status": "open",
            },
            "assignee": {
                "user_id": event.user_id,
                "team_id": event.team_id,
                "previous_user_id": event.previous_user_id,
            },
        }
    if event.type == "conversation.closed":
        return {
            "conversation": {
                "id": event.conversation_id,
                "object": "conversation",
                "status": "resolved",
                "closed_by_user_id": event.closed_by_user_id,
            }
        }
    raise ValueError(f"no Kirim-native rendering for {event.type}")


def _meta_message(event: WorldEvent) -> dict[str, Any]:
    assert event.contact is not None
    item: dict[str, Any] = {
        "from": event.contact.digits,
        "id": event.message_id,
        "timestamp": str(event.at),
        "type": event.message_type,
    }
    if event.message_type == "image":
        item["image"] = {
            "id": str(int(meta_billing_id("media", str(event.message_id))[:12], 16)),
            "mime_type": "image/jpeg",
            "sha256": meta_billing_id(str(event.message_id)) * 2,
            "caption": event.text,
        }
    elif event.message_type == "interactive":
        item["interactive"] = {
            "type": "button_reply",
            "button_reply": {"id": "btn_track", "title": "Lacak pesanan"},
        }
    else:
        item["text"] = {"body": event.text}
    return item


def _meta_status(event: WorldEvent) -> dict[str, Any]:
    assert event.contact is not None
    item: dict[str, Any] = {
        "id": event.message_id,
        "status": event.status,
        "timestamp": str(event.at),
        "recipient_id": event.contact.digits,
    }
    if event.status in ("sent", "delivered"):
        origin = "marketing" if event.category == "marketing" else "user_initiated"
        day = str(event.at // 86400)
        item["conversation"] = {
            "id": meta_billing_id(str(event.conversation_id), day),
            "origin": {"type": origin},
        }
        item["pricing"] = {
            "billable": True,
            "pricing_model": "CBP",
            "category": event.category or "service",
        }
    if event.error is not None:
        code, title = event.error
        item["errors"] = [
            {
                "code": code,
                "title": title,
                "message": title,
                "error_data": {"details": f"{title} (emulated)"},
            }
        ]
    return item


def _meta_body(bundle: Bundle, kirim_block: bool) -> dict[str, Any]:
    first = bundle.events[0]
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": first.phone.display_phone_number,
            "phone_number_id": first.phone.phone_number_id,
        },
    }
    if first.type == "message.received":
        assert first.contact is not None
        value["contacts"] = [
            {"profile": {"name": first.contact.name or ""}, "wa_id": first.contact.digits}
        ]
        value["messages"] = [_meta_message(e) for e in bundle.events]
    else:
        value["statuses"] = [_meta_status(e) for e in bundle.events]
    body: dict[str, Any] = {
        "object": "whatsapp_business_account",
        "entry": [{"id": first.phone.waba_id, "changes": [{"field": "messages", "value": value}]}],
    }
    if kirim_block and first.contact is not None:
        body["kirim"] = {"conversation_id": first.conversation_id, "contact_id": first.contact.id}
    return body


def _legacy_body(bundle: Bundle) -> dict[str, Any]:
    event = bundle.events[0]
    assert event.contact is not None
    message: dict[str, Any] = {
        "id": event.message_id,
        "phone_number_id": event.phone.phone_number_id,
        "type": event.message_type or "text",
    }
    if event.type == "message.received":
        message["from"] = _e164(event.contact.digits)
        message["content"] = event.text
        message["created_at"] = iso(event.at)
        name = "message.received"
    else:
        # A status carries its own time; created_at would be the send time (events.py reads
        # created_at first), so the third shape's status bodies omit it.
        message["to"] = _e164(event.contact.digits)
        message["status"] = event.status
        message["timestamp"] = iso(event.at)
        if event.error is not None:
            message["error"] = {"provider_code": event.error[0], "message": event.error[1]}
        name = "message.status_updated"
    return {
        # The third shape's body id is a delivery id (kirim-api.md §4.3).
        "id": ulid("wbd", bundle.at * 1000, derive_rng(0, event.event_id, event.status)),
        "event": name,
        "delivered_at": iso(bundle.at),
        "data": {"message": message, "conversation_id": event.conversation_id},
    }


def render(bundle: Bundle, *, kirim_block: bool = False) -> Rendered:
    """Render ``bundle`` into its body bytes and header values.

    ``kirim_block`` must match the world's config (the truth assumes it does).
    """
    first = bundle.events[0]
    keys = tuple(event_key(e, bundle.shape) for e in bundle.events)
    if bundle.shape == "kirim":
        body: dict[str, Any] = {
            "id": first.event_id,
            "type": first.type,
            "created_at": iso(first.at, ms=first.type.startswith("contact.")),
            "livemode": True,
            "data": _kirim_data(first),
        }
        return Rendered(_dumps(body), first.type, first.event_id, "kirim", keys, bundle.at)
    if bundle.shape == "legacy":
        name = "message.received" if first.type == "message.received" else "message.status_updated"
        return Rendered(
            _dumps(_legacy_body(bundle)), name, first.event_id, "kirim", keys, bundle.at
        )
    return Rendered(
        _dumps(_meta_body(bundle, kirim_block)), first.type, first.event_id, "meta", keys, bundle.at
    )


def delivery_headers(
    rendered: Rendered, *, delivery_id: str, attempt: int, signature: str
) -> dict[str, str]:
    """The exact request headers of one delivery attempt (kirim-api.md §2)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Kirim-Source": rendered.source,
        "X-Kirim-Event": rendered.event_type,
        "X-Kirim-Event-Id": rendered.event_id,
        "X-Kirim-Delivery-Id": delivery_id,
        "X-Kirim-Attempt": str(attempt),
        "X-Kirim-Signature": signature,
    }
