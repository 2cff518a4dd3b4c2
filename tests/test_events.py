"""Event parsing: the three body shapes, event identity, event time, bad bodies."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from kirim_events import events, events_meta, parse_delivery
from kirim_events.errors import (
    InvalidEventType,
    InvalidJSON,
    NotAnObject,
    ParseFailure,
    PayloadError,
    UnknownShape,
)
from kirim_events.events import parse_time
from kirim_events.testing import meta_envelope

RECEIVED = datetime(2026, 5, 23, 12, 0, tzinfo=UTC)
WAMID = "wamid.HBgMNjI4MTExMTExMTExFQIAERgSQTUxRjNEMEI5QzJFNDdCODFEAA=="
PHONE_ID = "106540352242922"


def _meta_status_body(*statuses: dict[str, Any], kirim: dict[str, Any] | None = None) -> bytes:
    body = meta_envelope({"statuses": list(statuses)}, phone_number_id=PHONE_ID)
    if kirim is not None:
        body["kirim"] = kirim
    return json.dumps(body).encode()


def _status(status: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": WAMID,
        "status": status,
        "timestamp": str(ts),
        "recipient_id": "628111111111",
        **extra,
    }


def _headers(
    event: str, event_id: str, delivery: str = "wbd_1", attempt: int = 1
) -> dict[str, str]:
    return {
        "X-Kirim-Event": event,
        "X-Kirim-Event-Id": event_id,
        "X-Kirim-Delivery-Id": delivery,
        "X-Kirim-Attempt": str(attempt),
        "X-Kirim-Signature": "t=1779531500,v1=" + "0" * 64,
    }


KIRIM_ASSIGNED = json.dumps(
    {
        "id": "evt_01KSA5AR5G0QBPAHDNHQ752ZGG",
        "type": "conversation.assigned",
        "created_at": "2026-05-23T10:15:42Z",
        "livemode": True,
        "data": {
            "conversation": {
                "id": "cnv_01KSA4J05RE483AXDGDKHW4X5C",
                "object": "conversation",
                "status": "open",
            },
            "assignee": {
                "user_id": "usr_01K94DCQT0FDNH29JZCP5GXCXY",
                "team_id": "team_support",
                "previous_user_id": None,
            },
        },
    }
).encode()

META_RECEIVED = json.dumps(
    meta_envelope(
        {
            "contacts": [{"profile": {"name": "Siti"}, "wa_id": "628111111111"}],
            "messages": [
                {
                    "from": "628111111111",
                    "id": "wamid.IN1",
                    "timestamp": "1779530530",
                    "type": "text",
                    "text": {"body": "Halo"},
                }
            ],
        },
        phone_number_id=PHONE_ID,
    )
    | {"kirim": {"conversation_id": "cnv_X", "contact_id": "ctc_Y", "media_status": "ready"}}
).encode()


# ---- shapes


def test_kirim_native_conversation_assigned() -> None:
    headers = _headers("conversation.assigned", "evt_01KSA5AR5G0QBPAHDNHQ752ZGG", "wbd_9", 3)
    [rec] = parse_delivery(KIRIM_ASSIGNED, headers, received_at=RECEIVED)
    assert rec.event_key == "evt_01KSA5AR5G0QBPAHDNHQ752ZGG"
    assert rec.type == "conversation.assigned"
    assert rec.source_format == "kirim"
    assert rec.occurred_at == datetime(2026, 5, 23, 10, 15, 42, tzinfo=UTC)
    assert rec.time_source == "payload"
    assert rec.received_at == RECEIVED
    assert rec.delivery_id == "wbd_9"
    assert rec.attempt == 3
    assert rec.conversation_id == "cnv_01KSA4J05RE483AXDGDKHW4X5C"
    assert rec.user_id == "usr_01K94DCQT0FDNH29JZCP5GXCXY"
    assert rec.previous_user_id is None
    assert rec.team_id == "team_support"
    assert rec.status == "open"
    assert rec.payload.encode() == KIRIM_ASSIGNED
    assert rec.origin == "webhook"


def test_meta_status_delivered() -> None:
    body = _meta_status_body(_status("delivered", 1779531402))
    [rec] = parse_delivery(body, _headers("message.status", WAMID), received_at=RECEIVED)
    assert rec.type == "message.status"
    assert rec.source_format == "meta"
    assert rec.message_id == WAMID
    assert rec.status == "delivered"
    assert rec.phone_number_id == PHONE_ID
    assert rec.recipient_id == "628111111111"
    assert rec.occurred_at == datetime.fromtimestamp(1779531402, UTC)
    assert rec.event_key == f"{WAMID}:delivered"


def test_meta_status_failed_carries_error() -> None:
    failed = _status("failed", 1779531402, errors=[{"code": 131047, "title": "Re-engagement"}])
    [rec] = parse_delivery(_meta_status_body(failed), {}, received_at=RECEIVED)
    assert rec.status == "failed"
    assert rec.error_code == "131047"
    assert rec.error_title == "Re-engagement"


def test_meta_body_with_three_statuses_gives_three_records() -> None:
    body = _meta_status_body(
        _status("sent", 1779531400), _status("delivered", 1779531402), _status("read", 1779531500)
    )
    records = parse_delivery(body, _headers("message.status", WAMID), received_at=RECEIVED)
    assert [r.status for r in records] == ["sent", "delivered", "read"]
    assert len({r.event_key for r in records}) == 3
    assert all(r.payload.encode() == body for r in records)


def _record_fields(record: events.EventRecord) -> dict[str, Any]:
    """A record's columns but its payload (and the key of an item without an id)."""
    return {k: v for k, v in record.to_dict().items() if k not in ("payload", "payload_exact")}


def test_a_very_large_batch_stores_each_record_its_own_item_not_the_whole_body() -> None:
    statuses = [
        {**_status("delivered", 1779531400 + i), "id": f"wamid.{i:05d}"} for i in range(5000)
    ]
    body = _meta_status_body(*statuses, kirim={"conversation_id": "cnv_1"})
    records = parse_delivery(body, _headers("message.status", WAMID), received_at=RECEIVED)
    assert len(records) == 5000
    assert records[0].payload.encode() == body
    assert records[0].payload_exact
    # 5,000 copies of the 0.5 MB body would be 2.6 GB: one body, then 5,000 under 1 kB each
    assert max(len(r.payload) for r in records[1:]) < 1000
    for i, record in enumerate(records[1:], start=1):
        assert not record.payload_exact
        own = json.loads(record.payload)
        assert own["kirim"] == {"conversation_id": "cnv_1"}
        assert own["entry"][0]["changes"][0]["value"]["statuses"] == [statuses[i]]
        again = parse_delivery(
            record.payload.encode(), _headers("message.status", WAMID), received_at=RECEIVED
        )
        assert [_record_fields(r) for r in again] == [_record_fields(record)]


def test_a_large_batch_of_messages_keeps_each_senders_contact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_meta, "BATCH_PAYLOAD_LIMIT", 1000)
    messages = [
        {
            "from": f"62811{i}",
            "id": f"wamid.m{i}",
            "timestamp": "1779531400",
            "type": "text",
            "text": {"body": "x" * 2000},
        }  # a body above 4 KiB: the smallest that can split
        for i in range(3)
    ]
    contacts = [{"profile": {"name": f"n{i}"}, "wa_id": f"62811{i}"} for i in range(3)]
    body = json.dumps(meta_envelope({"contacts": contacts, "messages": messages})).encode()
    records = parse_delivery(body, {}, received_at=RECEIVED)
    assert [r.payload_exact for r in records] == [True, False, False]
    for i in (1, 2):
        value = json.loads(records[i].payload)["entry"][0]["changes"][0]["value"]
        assert value["messages"] == [messages[i]]
        assert value["contacts"] == [contacts[i]]
        assert value["metadata"] == json.loads(body)["entry"][0]["changes"][0]["value"]["metadata"]


def test_each_one_item_body_keeps_what_is_no_item_so_no_copy_is_needed_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the first record had the whole body: when the lake kept another copy of that
    # first event, what belonged to no item (here another change, an unmatched contact)
    # was stored nowhere. (A limit the 19 kB of copies pass, the 1 kB of the rest not.)
    monkeypatch.setattr(events_meta, "BATCH_PAYLOAD_LIMIT", 5000)
    messages = [
        {"from": f"62811{i}", "id": f"wamid.m{i}", "timestamp": "1779531400", "type": "text",
         "text": {"body": "x" * 2000 + ("\ud83d" if i == 2 else "")}}  # a lone surrogate escape
        for i in range(3)
    ]  # fmt: skip
    stranger = {"profile": {"name": "no message"}, "wa_id": "62899"}
    contacts = [{"profile": {"name": f"n{i}"}, "wa_id": f"62811{i}"} for i in range(3)]
    body = meta_envelope({"contacts": [*contacts, stranger], "messages": messages})
    alerts = {"field": "account_alerts", "value": {"alert": "quality", "level": 2}}
    body["entry"][0]["changes"].append(alerts)
    records = parse_delivery(json.dumps(body).encode(), {}, received_at=RECEIVED)
    assert [r.payload_exact for r in records] == [True, False, False]
    for i in (1, 2):
        records[i].payload.encode("utf-8")  # a UTF-8 store takes it (the journal did not)
        own = json.loads(records[i].payload)
        changes = own["entry"][0]["changes"]
        assert changes[1] == alerts
        assert changes[0]["value"]["messages"] == [messages[i]]
        assert changes[0]["value"]["contacts"] == [stranger, contacts[i]]


def test_a_batch_whose_rest_is_too_large_to_copy_stores_each_item_in_its_own_frame() -> None:
    # 2,000 changes of one status each: copying the other 1,999 changes' frames into every
    # one-item body stored 585 MB for a 0.8 MB body.
    changes = [
        {"field": "messages", "value": {"messaging_product": "whatsapp",
         "metadata": {"phone_number_id": PHONE_ID}, "note": "x" * 100,
         "statuses": [{**_status("sent", 1779531400 + i), "id": f"wamid.{i:05d}"}]}}
        for i in range(2000)
    ]  # fmt: skip
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": changes}]}
    raw = json.dumps(body).encode()
    records = parse_delivery(raw, {}, received_at=RECEIVED)
    assert len(records) == 2000
    assert records[0].payload.encode() == raw
    assert sum(len(r.payload) for r in records[1:]) < 2000 * 1000  # each under 1 kB
    for record in records[1:]:
        again = parse_delivery(record.payload.encode(), {}, received_at=RECEIVED)
        assert [_record_fields(r) for r in again] == [_record_fields(record)]


def test_a_senders_repeated_contact_goes_once_into_each_of_its_one_item_bodies() -> None:
    # Meta lists a contact per message: one sender's 1,000 messages carried 1,000 copies each.
    contact = {"profile": {"name": "Siti"}, "wa_id": "628111"}
    messages = [
        {"from": "628111", "id": f"wamid.m{i}", "timestamp": "1779531400", "type": "text"}
        for i in range(1000)
    ]
    body = meta_envelope({"contacts": [contact] * 1000, "messages": messages})
    records = parse_delivery(json.dumps(body).encode(), {}, received_at=RECEIVED)
    assert [r.event_key for r in records] == [m["id"] for m in messages]
    for record, message in zip(records[1:], messages[1:], strict=True):  # the first: whole
        value = json.loads(record.payload)["entry"][0]["changes"][0]["value"]
        assert value["contacts"] == [contact]
        assert value["messages"] == [message]  # its own message, with its sender's contact


def test_meta_inbound_message_with_kirim_block() -> None:
    [rec] = parse_delivery(META_RECEIVED, _headers("message.received", "wamid.IN1"))
    assert rec.type == "message.received"
    assert rec.event_key == "wamid.IN1"
    assert rec.wa_id == "628111111111"
    assert rec.conversation_id == "cnv_X"
    assert rec.contact_id == "ctc_Y"
    assert rec.occurred_at == datetime.fromtimestamp(1779530530, UTC)


def test_third_shape_uses_message_id_and_maps_status_alias() -> None:
    body = json.dumps(
        {
            "id": "wbd_DELIVERY",
            "event": "message.status_updated",
            "delivered_at": "2026-05-23T10:00:05.5Z",
            "data": {"message": {"id": "msg_1", "status": "read", "content": "hi"}},
        }
    ).encode()
    [rec] = parse_delivery(body, {}, received_at=RECEIVED)
    assert rec.source_format == "kirim"  # Kirim's, not Meta's: the two formats of the lake
    assert rec.type == "message.status"
    assert rec.event_key == "msg_1:message.status:read"
    assert rec.event_id == "msg_1"
    assert rec.occurred_at == datetime(2026, 5, 23, 10, 0, 5, 500000, tzinfo=UTC)


@pytest.mark.parametrize("shape", ["kirim", "meta"])
def test_the_status_alias_is_stored_by_the_lakes_name_in_every_shape(shape: str) -> None:
    # Only the third shape mapped message.status_updated: a Kirim-native envelope of that
    # type (or a Meta body without items hinted so) went to a type=message.status_updated
    # folder, which lake.events() of either name never reads (both ask for message.status)
    if shape == "kirim":
        message = {"id": "msg_1", "status": "read"}
        obj = {"id": "evt_1", "type": "message.status_updated", "data": {"message": message}}
        body, headers = json.dumps(obj).encode(), {}
    else:
        body = json.dumps(meta_envelope({"errors": []}, phone_number_id=PHONE_ID)).encode()
        headers = _headers("message.status_updated", "evt_2")
    [rec] = parse_delivery(body, headers, received_at=RECEIVED)
    assert rec.type == events.canonical_type("message.status_updated") == "message.status"


@pytest.mark.parametrize("shape", ["legacy", "kirim"])
def test_a_status_in_upper_case_is_stored_in_lower_case_as_meta_ones_are(shape: str) -> None:
    # "READ" was stored as is, and the analytics (which rank "read") dropped the event
    message = {"id": "msg_1", "status": "READ"}
    body = (
        {"id": "wbd_D", "event": "message.status_updated", "data": {"message": message}}
        if shape == "legacy"
        else {"id": "evt_1", "type": "message.status", "data": {"message": message}}
    )
    [rec] = parse_delivery(json.dumps(body).encode(), {}, received_at=RECEIVED)
    assert rec.status == "read"


def test_third_shape_prefers_header_event_id() -> None:
    body = json.dumps(
        {
            "id": "wbd_D",
            "event": "message.received",
            "delivered_at": "2026-05-23T10:00:05Z",
            "data": {"message": {"id": "msg_2", "created_at": "2026-05-23T09:59:00Z"}},
        }
    ).encode()
    [rec] = parse_delivery(body, {"x-kirim-event-id": "evt_H"}, received_at=RECEIVED)
    assert rec.event_id == "evt_H"
    assert rec.occurred_at == datetime(2026, 5, 23, 9, 59, tzinfo=UTC)


def test_unknown_event_type_is_kept() -> None:
    body = json.dumps(
        {
            "id": "evt_NEW",
            "type": "widget.exploded",
            "created_at": "2026-05-23T10:00:00Z",
            "data": {"widget": {"id": "w1"}, "brand_new": [1, 2]},
        }
    ).encode()
    [rec] = parse_delivery(body, {}, received_at=RECEIVED)
    assert rec.type == "widget.exploded"
    assert rec.event_key == "evt_NEW"
    assert json.loads(rec.payload)["data"]["brand_new"] == [1, 2]


def test_kirim_message_sent_joins_on_wamid() -> None:
    body = json.dumps(
        {
            "id": "evt_S",
            "type": "message.sent",
            "created_at": "2026-05-23T10:00:00Z",
            "data": {
                "message": {"to": "+62 811-1111-1111", "provider_id": WAMID, "source": "api"},
                "meta": {"phone_number_id": PHONE_ID},
            },
        }
    ).encode()
    [rec] = parse_delivery(body, {}, received_at=RECEIVED)
    assert rec.message_id == WAMID
    assert rec.recipient_id == "6281111111111"
    assert rec.phone_number_id == PHONE_ID


def test_conversation_closed_with_closer() -> None:
    body = json.dumps(
        {
            "id": "evt_C",
            "type": "conversation.closed",
            "created_at": "2026-05-23T11:00:00+07:00",
            "data": {
                "conversation": {"id": "cnv_1", "status": "resolved", "closed_by_user_id": "usr_A"}
            },
        }
    ).encode()
    [rec] = parse_delivery(body, {}, received_at=RECEIVED)
    assert rec.closed_by_user_id == "usr_A"
    assert rec.occurred_at == datetime(2026, 5, 23, 4, 0, tzinfo=UTC)


# ---- event_key: retries collapse, statuses stay apart


def test_retry_of_same_delivery_gives_same_key() -> None:
    body = _meta_status_body(_status("read", 1779531500))
    first = parse_delivery(
        body, _headers("message.status", WAMID, "wbd_1", 1), received_at=RECEIVED
    )
    retry = parse_delivery(
        body,
        _headers("message.status", WAMID, "wbd_2", 2) | {"X-Kirim-Signature": "t=1,v1=" + "1" * 64},
        received_at=datetime(2026, 5, 23, 13, 0, tzinfo=UTC),
    )
    assert [r.event_key for r in first] == [r.event_key for r in retry]


def test_replay_with_changed_kirim_block_keeps_key() -> None:
    a = _meta_status_body(_status("sent", 1779531400), kirim={"media_status": "pending"})
    b = _meta_status_body(_status("sent", 1779531400), kirim={"media_status": "ready"})
    assert parse_delivery(a)[0].event_key == parse_delivery(b)[0].event_key


def test_statuses_sharing_one_event_id_give_three_keys() -> None:
    keys = set()
    for status, ts in [("sent", 1779531400), ("delivered", 1779531402), ("read", 1779531500)]:
        body = _meta_status_body(_status(status, ts))
        [rec] = parse_delivery(body, _headers("message.status", WAMID), received_at=RECEIVED)
        assert rec.event_id == WAMID
        keys.add(rec.event_key)
    assert len(keys) == 3


def test_kirim_native_retry_same_key_different_events_different_keys() -> None:
    first = parse_delivery(KIRIM_ASSIGNED, _headers("conversation.assigned", "e", "wbd_1", 1))
    retry = parse_delivery(KIRIM_ASSIGNED, _headers("conversation.assigned", "e", "wbd_7", 2))
    other = json.loads(KIRIM_ASSIGNED)
    other["id"] = "evt_OTHER"
    different = parse_delivery(json.dumps(other).encode())
    assert first[0].event_key == retry[0].event_key
    assert different[0].event_key != first[0].event_key


def test_body_without_ids_falls_back_to_body_hash() -> None:
    body = json.dumps({"type": "contact.updated", "data": {}}).encode()
    [a] = parse_delivery(body)
    [b] = parse_delivery(body)
    assert a.event_key.startswith("sha256:")
    assert a.event_key == b.event_key


def test_id_less_items_of_one_meta_batch_keep_one_key_each() -> None:
    """A batch whose items lack an id falls back to the body hash plus the item's position:
    two statuses (or two messages) without ids in one body are two events, not one event
    and a duplicate; the same body delivered again gives the same keys."""
    statuses = [_status("sent", 1_779_531_000), _status("read", 1_779_531_060)]
    for item in statuses:
        del item["id"]
    body = _meta_status_body(*statuses)
    keys = [r.event_key for r in parse_delivery(body)]
    assert len(set(keys)) == 2, keys
    assert all(k.startswith("sha256:") for k in keys)
    assert [r.event_key for r in parse_delivery(body)] == keys
    messages = json.loads(META_RECEIVED)
    value = messages["entry"][0]["changes"][0]["value"]
    value["messages"] = [dict(value["messages"][0]), dict(value["messages"][0], type="image")]
    for item in value["messages"]:
        del item["id"]
    keys = [r.event_key for r in parse_delivery(json.dumps(messages).encode())]
    assert len(set(keys)) == 2, keys


def test_a_status_in_capitals_is_the_same_event_as_in_lower_case() -> None:
    """Statuses are compared and stored in lower case, so ``DELIVERED`` counts as the
    delivered step (analytics rank by the lower-case names) and collapses with a copy in
    lower case."""
    [upper] = parse_delivery(_meta_status_body(_status("DELIVERED", 1_779_531_000)))
    [lower] = parse_delivery(_meta_status_body(_status("delivered", 1_779_531_000)))
    assert upper.status == "delivered"
    assert upper.event_key == lower.event_key == f"{WAMID}:delivered"


# ---- event time fallbacks


def test_missing_event_time_falls_back_to_signature_then_received() -> None:
    body = json.dumps({"id": "evt_T", "type": "contact.updated", "data": {}}).encode()
    [signed] = parse_delivery(
        body, {"X-Kirim-Signature": "t=1779531500,v1=ab"}, received_at=RECEIVED
    )
    assert signed.time_source == "signature"
    assert signed.occurred_at == datetime.fromtimestamp(1779531500, UTC)
    [unsigned] = parse_delivery(body, {}, received_at=RECEIVED)
    assert unsigned.time_source == "received"
    assert unsigned.occurred_at == RECEIVED


@pytest.mark.parametrize(
    "placeholder",
    ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", 253402300799, "0", 0, "1970-01-01T00:00Z"],
)
def test_a_placeholder_event_time_gives_way_to_the_signature_time(placeholder: object) -> None:
    # Go's zero time and 9999-12-31 are common "no time" values; as event times they would
    # date the event's partition at the ends of the calendar
    body = json.dumps(
        {"id": "evt_Z", "type": "contact.updated", "created_at": placeholder, "data": {}}
    ).encode()
    [rec] = parse_delivery(body, {"X-Kirim-Signature": "t=1779531500,v1=ab"}, received_at=RECEIVED)
    assert rec.time_source == "signature"
    assert rec.occurred_at == datetime.fromtimestamp(1779531500, UTC)
    assert json.loads(rec.payload)["created_at"] == placeholder  # the body is kept as sent


def test_signature_256_header_is_read() -> None:
    body = json.dumps({"id": "evt_T", "type": "customer.created", "data": {}}).encode()
    [rec] = parse_delivery(body, {"X-Kirim-Signature-256": "t=1779531500,v1=ab"})
    assert rec.signature == "t=1779531500,v1=ab"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-23T10:00:00Z", datetime(2026, 5, 23, 10, tzinfo=UTC)),
        ("2026-05-23T10:00:00.000Z", datetime(2026, 5, 23, 10, tzinfo=UTC)),
        ("2026-05-23T10:00:00+00:00", datetime(2026, 5, 23, 10, tzinfo=UTC)),
        ("2026-05-23T10:00:00.1234567Z", datetime(2026, 5, 23, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-05-23T17:00:00+07:00", datetime(2026, 5, 23, 10, tzinfo=UTC)),
        ("2026-05-23t10:00:00z", datetime(2026, 5, 23, 10, tzinfo=UTC)),
        ("2026-05-23T10:00Z", datetime(2026, 5, 23, 10, tzinfo=UTC)),
        ("2026-05-23T17:00+07:00", datetime(2026, 5, 23, 10, tzinfo=UTC)),
        ("2026-05-23T10:00:", None),
        ("2026-05-23T10:00.5Z", None),
        ("1779531402", datetime.fromtimestamp(1779531402, UTC)),
        (1779531402, datetime.fromtimestamp(1779531402, UTC)),
        ("yesterday", None),
        ("2026-13-40T99:00:00Z", None),
        (None, None),
        (True, None),
    ],
)
def test_parse_time(text: object, expected: datetime | None) -> None:
    assert parse_time(text) == expected


# ---- bad bodies


_NOT_JSON = "body is not valid UTF-8 JSON: "
_NO_SHAPE = "body matches none of the Meta, Kirim-native or third shapes"


@pytest.mark.parametrize(
    ("body", "error", "says"),
    [
        (b"", InvalidJSON, _NOT_JSON + "Expecting value"),
        (b"{not json", InvalidJSON, _NOT_JSON + "Expecting property name"),
        (b"\xff\xfe{}", InvalidJSON, _NOT_JSON + "'utf-8' codec can't decode byte 0xff"),
        (b"[1, 2]", NotAnObject, "body is JSON list, not an object"),
        (b'"text"', NotAnObject, "body is JSON str, not an object"),
        (b"{}", UnknownShape, _NO_SHAPE),
        (b'{"object": "whatsapp_business_account", "entry": 5}', UnknownShape, _NO_SHAPE),
        (b'{"type": 5, "data": {}}', UnknownShape, _NO_SHAPE),
        (
            b'{"type": "../etc/passwd", "data": {}}',
            InvalidEventType,
            r"event type '\.\./etc/passwd'",
        ),
        (b'{"type": "NoDots", "data": {}}', InvalidEventType, "event type 'NoDots' is not a valid"),
        (b'{"type": "a.b\\n", "data": {}}', InvalidEventType, r"event type 'a\.b\\n' is not"),
        (
            b'{"type": "a.' + b"b" * 70 + b'", "data": {}}',
            InvalidEventType,
            r"event type 'a\.b{70}' is not",
        ),
        # half a UTF-16 pair in an id: no UTF-8 store (the journal, Parquet) can hold it
        (
            b'{"type": "contact.updated", "id": "evt_\\ud800", "data": {}}',
            InvalidJSON,
            r"lone UTF-16 surrogate escape \(\\ud800\)",
        ),
    ],
)
def test_bad_bodies_raise_payload_errors(body: bytes, error: type[PayloadError], says: str) -> None:
    with pytest.raises(error, match=says):
        parse_delivery(body)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "contact.updated", "id": 123456789012345678901234567890, "data": {}}',
        '{"type": "contact.updated", "id": -9223372036854775809, "data": {"n": 1.5e-320}}',
        '{"type": "contact.updated", "id": "evt_1", "data": {"x": NaN, "y": -Infinity}}',
        '{"type": "contact.updated", "id": "evt_4", "data": {"text": "half a pair \\ud800"}}',
        '{"type": "contact.updated", "id": "evt_2", "id": "evt_3", "data": {"big": 1e400}}',
        '{"type": "contact.updated", "id": "evt_\\u00e9\\ud83d\\ude00", "data": {"a": [{}]}}',
    ],
)
def test_bodies_parse_as_the_json_module_reads_them(text: str) -> None:
    # Bodies read as the json module reads them (a faster parser must not change this): big
    # integers stay exact, its extensions (NaN, huge numbers, a lone surrogate outside the
    # extracted columns) are accepted.
    (record,) = parse_delivery(text.encode(), received_at=RECEIVED)
    expected = json.loads(text)
    assert record.event_key == str(expected["id"])
    assert record.payload == text


META_HEAD = '{"object":"whatsapp_business_account","entry":'


@pytest.mark.parametrize(
    "text",
    [
        META_HEAD + '[{"id":"1","changes":[{"field":"messages","value":{"statuses":5}}]}]}',
        META_HEAD + '[{"id":"1","changes":[{"field":"messages","value":{"messages":true}}]}]}',
        META_HEAD + '[{"id":"1","changes":[{"value":{"statuses":{"id":"wamid.X"}}}]}]}',
    ],
)
def test_meta_arrays_of_another_json_type_keep_the_body_whole(text: str) -> None:
    (record,) = parse_delivery(text.encode(), received_at=RECEIVED)
    assert (record.type, record.payload) == ("meta.other", text)


@pytest.mark.parametrize(
    ("hint", "kind"),
    [("x." * 40 + "y", "meta.other"), ("Bad", "meta.other"), ("meta.x_y", "meta.x_y")],
)
def test_another_meta_field_takes_its_type_from_a_usable_header_only(hint: str, kind: str) -> None:
    # a type hint over 64 characters was refused, and the valid body quarantined with it
    text = META_HEAD + '[{"id":"1","changes":[{"field":"account_update","value":{}}]}]}'
    (record,) = parse_delivery(text.encode(), {"X-Kirim-Event": hint}, received_at=RECEIVED)
    assert (record.type, record.payload) == (kind, text)


def test_json_nested_too_deeply_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(InvalidJSON, match="nested too deeply"):
        parse_delivery(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_a_body_the_parser_did_not_foresee_is_a_payload_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a shape's reader trips on, the caller gets a PayloadError (quarantine),
    never another exception that would stop a backfill or a reconcile."""

    def trips(*args: object) -> None:
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(events_meta, "_meta_status", trips)
    with (
        caplog.at_level(logging.ERROR, logger="kirim_events.events"),
        pytest.raises(ParseFailure, match=r"meta-shape body \(TypeError"),
    ):
        parse_delivery(_meta_status_body(_status("delivered", 1779531402)))
    # logged, so that a bug of ours does not pass for an odd body; the body is not logged
    (record,) = caplog.records
    assert "TypeError" in record.getMessage()
    assert "wamid" not in record.getMessage()


def test_a_byte_order_mark_is_still_invalid_json() -> None:
    with pytest.raises(InvalidJSON, match="body is not valid UTF-8 JSON: Unexpected UTF-8 BOM"):
        parse_delivery(b"\xef\xbb\xbf" + KIRIM_ASSIGNED)


def test_naive_received_at_is_refused() -> None:
    with pytest.raises(ValueError, match="received_at must be timezone-aware"):
        parse_delivery(KIRIM_ASSIGNED, received_at=datetime(2026, 1, 1))


def test_unknown_origin_is_refused() -> None:
    with pytest.raises(ValueError, match=r"origin must be one of \(.*\), got 'carrier-pigeon'"):
        parse_delivery(KIRIM_ASSIGNED, origin="carrier-pigeon")


def test_meta_body_without_items_is_kept_whole() -> None:
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "1", "changes": [{"field": "account_update", "value": {"event": "x"}}]}
            ],
        }
    ).encode()
    [rec] = parse_delivery(body, {"X-Kirim-Event": "account.updated", "X-Kirim-Event-Id": "evt_A"})
    assert rec.type == "account.updated"
    assert rec.event_key == "evt_A"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01T00:00:00+99:99", None),  # no such offset
        ("2026-05-01T00:00:00+05:60", None),
        ("2026-05-01T00:00:00+14:00", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        # exact to the microsecond with an offset (it went through float seconds)
        ("2026-05-01T00:00:00.999999-05:30", datetime(2026, 5, 1, 5, 30, 0, 999999, tzinfo=UTC)),
    ],
)
def test_offsets_are_checked_and_exact(text: str, expected: datetime | None) -> None:
    assert parse_time(text) == expected


# ---- precedence and boundaries (each pins one rule a mutation of the parser broke unseen)


def test_a_failed_status_with_several_errors_keeps_the_first() -> None:
    errors = [{"code": 131047, "title": "Re-engagement"}, {"code": 131026, "title": "Other"}]
    failed = _status("failed", 1779531402, errors=errors)
    [rec] = parse_delivery(_meta_status_body(failed), {}, received_at=RECEIVED)
    assert (rec.error_code, rec.error_title) == ("131047", "Re-engagement")


def test_meta_phone_number_id_comes_from_metadata_before_the_kirim_block() -> None:
    body = _meta_status_body(_status("sent", 1779531402), kirim={"phone_number_id": "999"})
    [rec] = parse_delivery(body, {}, received_at=RECEIVED)
    assert rec.phone_number_id == PHONE_ID
    bare = meta_envelope({"statuses": [_status("sent", 1779531402)]})
    del bare["entry"][0]["changes"][0]["value"]["metadata"]
    bare["kirim"] = {"phone_number_id": "999"}
    [rec] = parse_delivery(json.dumps(bare).encode(), {}, received_at=RECEIVED)
    assert rec.phone_number_id == "999"


def test_a_meta_status_event_id_is_its_wamid_whatever_the_header_says() -> None:
    body = _meta_status_body(_status("sent", 1779531402))
    [rec] = parse_delivery(body, {"X-Kirim-Event-Id": "evt_OTHER"}, received_at=RECEIVED)
    assert rec.event_id == WAMID


@pytest.mark.parametrize(
    ("created_at", "source"),
    [
        ("2000-01-01T00:00:00Z", "payload"),  # the range's first instant is an event time
        ("1999-12-31T23:59:59.999999Z", "signature"),
        ("2199-12-31T23:59:59.999999Z", "payload"),
        ("2200-01-01T00:00:00Z", "signature"),  # its end is not
    ],
)
def test_the_event_time_range_is_half_open(created_at: str, source: str) -> None:
    body = {"id": "evt_1", "type": "contact.updated", "created_at": created_at, "data": {}}
    headers = _headers("contact.updated", "evt_1")  # signed at 1779531500
    [rec] = parse_delivery(json.dumps(body).encode(), headers, received_at=RECEIVED)
    assert rec.time_source == source


def test_kirim_native_message_prefers_the_wamid_metas_code_and_meta_phone_number_id() -> None:
    """kirim-api.md §4: ``provider_id`` is the wamid that Meta's status callbacks carry,
    ``provider_code`` Meta's error code beside Kirim's name in ``code``."""
    message = {
        "id": "msg_1",
        "provider_id": WAMID,
        "to": "+62 811-1111-1111",
        "error": {"code": "outside_24h_window", "provider_code": 131047, "message": "late"},
    }
    data = {
        "message": message,
        "meta": {"phone_number_id": "111"},
        "phone_number_id": "222",
        "session": "333",
    }
    body = {"id": "evt_1", "type": "message.sent", "data": data}
    [rec] = parse_delivery(json.dumps(body).encode(), {}, received_at=RECEIVED)
    assert rec.message_id == WAMID
    assert (rec.error_code, rec.error_title) == ("131047", "late")
    assert rec.phone_number_id == "111"
    assert rec.recipient_id == "6281111111111"
    third = {"id": "wbd_1", "event": "message.sent", "data": {"message": message}}
    [rec] = parse_delivery(json.dumps(third).encode(), {}, received_at=RECEIVED)
    assert rec.message_id == WAMID  # the third shape too; its key stays on Kirim's id
    assert rec.event_key == "msg_1:message.sent"


def test_only_a_body_without_its_own_id_is_keyed_by_the_header() -> None:
    own = parse_delivery(KIRIM_ASSIGNED, {"X-Kirim-Event-Id": "evt_H"}, received_at=RECEIVED)
    assert own.header_keyed is False
    body = {"type": "contact.updated", "data": {}}
    bare = parse_delivery(json.dumps(body).encode(), {"X-Kirim-Event-Id": "evt_H"})
    assert (bare.header_keyed, bare[0].event_key) == (True, "evt_H")


def test_ids_and_headers_are_read_as_trimmed_text() -> None:
    assert events.header_event_id({"x-kirim-event-id": "  evt_1 "}) == "evt_1"
    assert events.header_event_id({"X-Kirim-Event-Id": "   "}) is None
    body = {"id": True, "type": "contact.updated", "data": {}}
    [rec] = parse_delivery(json.dumps(body).encode(), {}, received_at=RECEIVED)
    assert rec.event_key == "true"  # as JSON writes it
    no_number = _status("sent", 1779531402, recipient_id="n/a")
    [rec] = parse_delivery(_meta_status_body(no_number), {}, received_at=RECEIVED)
    assert (rec.recipient_id, rec.wa_id) == (None, None)  # no digits: no number, not ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100_000_000_000, datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)),  # 1e11: milliseconds
        (99_999_999_999, datetime(5138, 11, 16, 9, 46, 39, tzinfo=UTC)),  # below: seconds
        (1779531402250000000, datetime(2026, 5, 23, 10, 16, 42, 250000, tzinfo=UTC)),  # ns
        ("2026-05-01T00:00:00+23:59", datetime(2026, 4, 30, 0, 1, tzinfo=UTC)),
        ("2026-05-01T00:00:00+24:00", None),
    ],
)
def test_unix_scales_and_offsets_at_their_limits(value: object, expected: datetime | None) -> None:
    assert parse_time(value) == expected


def test_a_header_number_has_at_most_nine_digits() -> None:
    assert events.header_number("123456789") == 123456789
    assert events.header_number("1234567890") is None


@pytest.mark.parametrize("escape", ["\\udc00", "\\uDFFF", "\\udbff"])
def test_every_lone_surrogate_escape_in_a_column_is_refused(escape: str) -> None:
    body = '{"type": "contact.updated", "id": "evt_' + escape + '", "data": {}}'
    with pytest.raises(InvalidJSON, match="lone UTF-16 surrogate"):
        parse_delivery(body.encode())


def test_a_type_of_64_characters_is_taken_and_65_refused() -> None:
    longest = "a." + "b" * 62
    body = {"id": "evt_1", "type": longest, "data": {}}
    assert parse_delivery(json.dumps(body).encode())[0].type == longest
    with pytest.raises(InvalidEventType):
        parse_delivery(json.dumps(body | {"type": longest + "c"}).encode())
    text = META_HEAD + '[{"id":"1","changes":[{"field":"account_update","value":{}}]}]}'
    (record,) = parse_delivery(text.encode(), {"X-Kirim-Event": longest}, received_at=RECEIVED)
    assert record.type == longest


def test_a_meta_value_with_statuses_and_messages_keeps_their_order_and_keys() -> None:
    """Statuses first, then messages, each in its array's order: an id-less item's key
    holds its position, so the order must not change between versions."""
    value = {"statuses": [{"status": "sent"}], "messages": [{"from": "62811", "type": "text"}]}
    body = json.dumps(meta_envelope(value)).encode()
    status, message = parse_delivery(body, {}, received_at=RECEIVED)
    digest = hashlib.sha256(body).hexdigest()
    assert (status.type, status.event_key) == ("message.status", f"sha256:{digest}:0")
    assert (message.type, message.event_key) == ("message.received", f"sha256:{digest}:1")


def test_a_meta_status_without_a_status_is_unknown() -> None:
    item = {"id": WAMID, "timestamp": "1779531402"}
    [rec] = parse_delivery(_meta_status_body(item), {}, received_at=RECEIVED)
    assert (rec.status, rec.event_key) == ("unknown", f"{WAMID}:unknown")


def test_another_meta_field_is_keyed_by_the_header() -> None:
    text = META_HEAD + '[{"id":"1","changes":[{"field":"account_update","value":{}}]}]}'
    records = parse_delivery(text.encode(), {"X-Kirim-Event-Id": "evt_A"}, received_at=RECEIVED)
    assert (records.header_keyed, records[0].event_key) == (True, "evt_A")


def test_third_shape_falls_back_to_the_messages_timestamp() -> None:
    body = {
        "id": "wbd_D",
        "event": "message.received",
        "delivered_at": "2026-05-23T10:00:05Z",
        "data": {"message": {"id": "msg_2", "timestamp": "1779530000"}},
    }
    [rec] = parse_delivery(json.dumps(body).encode(), {}, received_at=RECEIVED)
    assert rec.occurred_at == datetime.fromtimestamp(1779530000, UTC)


def test_unix_seconds_may_be_a_decimal_string() -> None:
    assert parse_time("1779531402.5") == datetime(2026, 5, 23, 10, 16, 42, 500000, tzinfo=UTC)


def test_the_signature_time_is_read_with_blanks_around_its_key() -> None:
    body = json.dumps({"id": "evt_1", "type": "contact.updated", "data": {}}).encode()
    headers = {"X-Kirim-Signature": "v1=" + "0" * 64 + ", t=1779531500"}
    [rec] = parse_delivery(body, headers, received_at=RECEIVED)
    assert (rec.time_source, rec.occurred_at) == ("signature", parse_time(1779531500))


def test_an_id_that_is_a_json_array_is_no_id() -> None:
    body = json.dumps({"id": ["evt_1"], "type": "contact.updated", "data": {}}).encode()
    [rec] = parse_delivery(body, {"X-Kirim-Event-Id": "evt_H"}, received_at=RECEIVED)
    assert rec.event_key == "evt_H"


def test_kirim_native_fallbacks_in_their_order() -> None:
    """wa_id: the message's recipient before the contact's number; phone_number_id: the
    session when nothing else names it; status: the message's before the conversation's."""
    data = {
        "message": {"id": "msg_1", "to": "628111", "status": "sent"},
        "contact": {"phone_number": "+62 822"},
        "conversation": {"id": "cnv_1", "status": "open"},
        "session": "106540352242922",
    }
    body = {"id": "evt_1", "type": "message.sent", "data": data}
    [rec] = parse_delivery(json.dumps(body).encode(), {}, received_at=RECEIVED)
    assert (rec.wa_id, rec.phone_number_id, rec.status) == ("628111", "106540352242922", "sent")
