"""Public test kit: sample Kirim webhook bodies of every shape and signed requests for them.

Users test their own handlers with it; kirim-events' own tests use it too.

>>> from kirim_events import testing
>>> req = testing.signed_request(testing.kirim_event("contact.updated"), "whsec_x", timestamp=1)
>>> sorted(req.headers)[:3]
['Content-Type', 'User-Agent', 'X-Kirim-Attempt']
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kirim_events.config import SecretLike
from kirim_events.signing import sign

__all__ = [
    "SignedRequest",
    "encode",
    "kirim_event",
    "legacy_message",
    "meta_envelope",
    "meta_message",
    "meta_status",
    "new_id",
    "sample_bodies",
    "signed_request",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"


def new_id(prefix: str, rng: random.Random | None = None) -> str:
    """Return ``<prefix>_`` plus 26 Crockford base32 characters (ULID-shaped, first char 0-7).

    ``rng`` makes ids reproducible; without it they are random.
    """
    r = rng or random.Random()
    first = _CROCKFORD[r.randrange(8)]
    return f"{prefix}_{first}" + "".join(r.choice(_CROCKFORD) for _ in range(25))


def _wamid(rng: random.Random | None) -> str:
    r = rng or random.Random()
    return "wamid.HBgM" + "".join(
        r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(40)
    )


def _iso(moment: datetime | None) -> str:
    m = (moment or datetime.now(UTC)).astimezone(UTC)
    return m.strftime("%Y-%m-%dT%H:%M:%S.") + f"{m.microsecond // 1000:03d}Z"


def encode(body: Mapping[str, Any] | bytes) -> bytes:
    """Serialise a body dict compactly as Kirim does (bytes pass through unchanged)."""
    if isinstance(body, bytes):
        return body
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def kirim_event(
    type: str = "contact.updated",
    *,
    event_id: str | None = None,
    created_at: datetime | None = None,
    data: Mapping[str, Any] | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """A Kirim-native envelope: ``{id, type, created_at, livemode, data}``."""
    return {
        "id": event_id or new_id("evt", rng),
        "type": type,
        "created_at": _iso(created_at),
        "livemode": True,
        "data": dict(data) if data is not None else {"contact": {"id": new_id("ctc", rng)}},
    }


def meta_envelope(
    value: Mapping[str, Any], *, phone_number_id: str = PHONE_NUMBER_ID
) -> dict[str, Any]:
    """Wrap a ``changes[].value`` (``statuses``, ``messages``, ...) in Meta's passthrough body.

    >>> meta_envelope({"statuses": []})["object"]
    'whatsapp_business_account'
    """
    base: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "62851176008029", "phone_number_id": phone_number_id},
    }
    base.update(value)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": base}]}],
    }


def meta_status(
    status: str = "delivered",
    *,
    wamid: str | None = None,
    timestamp: int | None = None,
    recipient_id: str = "628111111111",
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """A Meta passthrough ``message.status`` body with one ``statuses[]`` item."""
    item: dict[str, Any] = {
        "id": wamid or _wamid(rng),
        "status": status,
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "recipient_id": recipient_id,
    }
    if status == "failed":
        item["errors"] = [{"code": 131047, "title": "Re-engagement message"}]
    return meta_envelope({"statuses": [item]})


def meta_message(
    text: str = "Halo",
    *,
    wamid: str | None = None,
    timestamp: int | None = None,
    sender: str = "628111111111",
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """A Meta passthrough ``message.received`` text message body."""
    return meta_envelope(
        {
            "contacts": [{"profile": {"name": "Siti"}, "wa_id": sender}],
            "messages": [
                {
                    "from": sender,
                    "id": wamid or _wamid(rng),
                    "timestamp": str(int(time.time()) if timestamp is None else timestamp),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
    )


def legacy_message(
    text: str = "Halo",
    *,
    message_id: str | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """The third (older docs) shape: ``{id: wbd_…, event, delivered_at, data: {message}}``."""
    return {
        "id": new_id("wbd", rng),
        "event": "message.received",
        "delivered_at": _iso(None),
        "data": {"message": {"id": message_id or new_id("msg", rng), "content": text}},
    }


def sample_bodies(rng: random.Random | None = None) -> dict[str, bytes]:
    """One encoded body per shape: ``kirim``, ``meta_status``, ``meta_message``, ``legacy``."""
    return {
        "kirim": encode(kirim_event(rng=rng)),
        "meta_status": encode(meta_status(rng=rng)),
        "meta_message": encode(meta_message(rng=rng)),
        "legacy": encode(legacy_message(rng=rng)),
    }


def _event_headers(obj: Any) -> tuple[str | None, str | None, str | None]:
    """Guess (source, event type, event id) headers from a body, as Kirim would send them."""
    if not isinstance(obj, dict):
        return None, None, None
    if obj.get("object") == "whatsapp_business_account":
        try:
            value = obj["entry"][0]["changes"][0]["value"]
        except (KeyError, IndexError, TypeError):
            return "meta", None, None
        for items, type_ in (("statuses", "message.status"), ("messages", "message.received")):
            found = value.get(items) if isinstance(value, dict) else None
            if found:  # any shape: a test may sign a body the receiver must quarantine
                first = found[0] if isinstance(found, list) else None
                return "meta", type_, first.get("id") if isinstance(first, dict) else None
        return "meta", None, None
    if isinstance(obj.get("type"), str):
        return "kirim", obj["type"], obj.get("id")
    if isinstance(obj.get("event"), str):
        message = (
            obj.get("data", {}).get("message", {}) if isinstance(obj.get("data"), dict) else {}
        )
        return "kirim", obj["event"], message.get("id") if isinstance(message, dict) else None
    return None, None, None


@dataclass(frozen=True)
class SignedRequest:
    """A webhook request ready to POST: the exact ``body`` bytes and Kirim's ``headers``."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def signed_request(
    body: Mapping[str, Any] | bytes,
    secrets: SecretLike | Iterable[SecretLike],
    *,
    timestamp: int | None = None,
    delivery_id: str | None = None,
    attempt: int = 1,
    event_id: str | None = None,
    event_type: str | None = None,
    signature_header: str = "X-Kirim-Signature",
    rng: random.Random | None = None,
) -> SignedRequest:
    """Build the headers Kirim sends with ``body``, signed with every secret given.

    Parameters
    ----------
    body
        A body dict (serialised compactly) or exact bytes (sent as they are).
    secrets
        One or more webhook secrets; each adds a ``v1=`` to the signature.
    timestamp
        Signing time in unix seconds; now when omitted.
    delivery_id, attempt, event_id, event_type
        Header values; guessed from the body (or generated) when omitted.
    signature_header
        ``X-Kirim-Signature`` (the default) or ``X-Kirim-Signature-256``.
    rng
        Makes generated ids reproducible.

    Returns
    -------
    SignedRequest
    """
    raw = encode(body)
    obj: Any = body
    if isinstance(body, bytes):
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
            obj = None
    source, guessed_type, guessed_id = _event_headers(obj)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Kirim-Webhook/1.0",
        "X-Kirim-Delivery-Id": delivery_id or new_id("wbd", rng),
        "X-Kirim-Attempt": str(attempt),
        signature_header: sign(raw, secrets, timestamp=timestamp),
    }
    if source:
        headers["X-Kirim-Source"] = source
    for name, value in (
        ("X-Kirim-Event", event_type or guessed_type),
        ("X-Kirim-Event-Id", event_id or guessed_id),
    ):
        # Guessed from an arbitrary body: only plain text can be a header value.
        if isinstance(value, str) and value.isascii() and value.isprintable() and value:
            headers[name] = value
    return SignedRequest(raw, headers)
