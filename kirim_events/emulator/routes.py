"""The emulated REST API's endpoint handlers (kirim-api.md §7.4, §7.5).

Each handler takes the request and the :class:`ApiState` and returns ``(status, payload)``;
:mod:`kirim_events.emulator.api` wraps them with auth, rate limits and the error envelope.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from kirim_events.emulator.apistate import (
    BULK_REPLAY_CAP,
    SUBSCRIPTION_PATTERN,
    ApiState,
    bad,
    check_events,
    check_url,
    filters_hash,
    json_body,
    page,
    row_filter,
    subscription,
    time_param,
)


async def health(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``GET /v1/health`` (public)."""
    return 200, {"status": "ok"}


async def openapi(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``GET /v1/openapi.json`` (public, kirim-api.md §7.1): the emulated paths and methods,
    without schemas (the emulator's, not Kirim's document)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in request.app.routes:
        methods = sorted(m.lower() for m in getattr(route, "methods", None) or () if m != "HEAD")
        item = paths.setdefault(route.path, {})
        for method in methods:
            item[method] = {"summary": f"{method.upper()} {route.path} (emulated)"}
    info = {"title": "Kirim API (kirim-events emulator)", "version": "v1"}
    return 200, {"openapi": "3.1.0", "info": info, "paths": paths}


async def me(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``GET /v1/me``: describe the key."""
    return 200, {"data": {"object": "api_key", "livemode": True, "organization": "emulated"}}


async def list_deliveries(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``GET /v1/webhook_deliveries``: newest first, filtered, paged."""
    q = request.query_params
    filters = {
        "subscription_id": q.get("subscription_id"),
        "status": q.get("status"),
        "event_type": q.get("event_type"),
        "event_id": q.get("event_id"),
        "created_after": time_param(q.get("created_after"), "created_after"),
        "created_before": time_param(q.get("created_before"), "created_before"),
    }
    keep = row_filter(filters, api.cutoff())
    return 200, page(api, request, api.store.deliveries, keep, filters_hash(filters))


async def get_delivery(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``GET /v1/webhook_deliveries/{id}``."""
    return 200, {"data": api.delivery(request.path_params["id"]).to_json()}


async def replay(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``POST /v1/webhook_deliveries/{id}/replay``: a new pending row (202)."""
    row = api.delivery(request.path_params["id"])
    # a deleted subscription has no URL to send to: a 404, as bulk_replay answers for it
    # (the new row was held unsent for ever)
    subscription(api, row.subscription_id)
    new = api.store.replay(row, now=api.clock())
    data = {
        "id": new.id,
        "object": "webhook_delivery",
        "replayed_from": row.id,
        "status": "pending",
    }
    return 202, {"data": data}


async def bulk_replay(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``POST /v1/webhook_deliveries/bulk_replay``: at most 1000 new rows."""
    body = await json_body(request)
    sub_id = body.get("subscription_id")
    if not isinstance(sub_id, str) or not SUBSCRIPTION_PATTERN.match(sub_id):
        raise bad("invalid_parameter", "subscription_id must be a wbs_ id", "subscription_id")
    subscription(api, sub_id)
    status = body.get("status", "dead")
    if status not in ("failed", "dead"):
        raise bad("invalid_parameter", "status must be 'failed' or 'dead'", "status")
    event_type = body.get("event_type")
    if event_type is not None and (
        not isinstance(event_type, str) or not 1 <= len(event_type) <= 64
    ):
        raise bad("invalid_parameter", "event_type must be 1-64 characters", "event_type")
    filters = {
        "subscription_id": sub_id,
        "status": status,
        "event_type": event_type,
        "event_id": None,
        "created_after": time_param(body.get("created_after"), "created_after"),
        "created_before": time_param(body.get("created_before"), "created_before"),
    }
    keep = row_filter(filters, api.cutoff())
    # Only the dead-letter queue: a delivery "waits in the DLQ until replayed or purged"
    # (kirim-api.md §3), while §7.4 says a replay leaves the original row unchanged (so still
    # dead or failed). Read together: a row once replayed, alone or in bulk, has left the
    # queue though its status stays. Replaying it again at every call re-sent each dead
    # event, however often it had been delivered since (docs/emulator.md says so).
    replayed = api.store.replayed
    matched = [row for row in api.store.deliveries if keep(row) and row.id not in replayed]
    now = api.clock()
    for row in matched[:BULK_REPLAY_CAP]:
        api.store.replay(row, now=now)
    enqueued = min(len(matched), BULK_REPLAY_CAP)
    return 202, {"data": {"enqueued": enqueued, "capped": len(matched) > BULK_REPLAY_CAP}}


async def list_subscriptions(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``GET /v1/webhook_subscriptions`` (paged)."""
    subs = list(api.store.subscriptions.values())
    return 200, page(api, request, subs, lambda s: not s.deleted, "subscriptions")


async def create_subscription(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``POST /v1/webhook_subscriptions``: shows ``initial_secret`` once."""
    body = await json_body(request)
    url = check_url(api, body.get("url"))
    events = check_events(body.get("events", ["*"]))
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise bad("invalid_parameter", "description must be a string", "description")
    sub, secrets = api.store.create_subscription(
        url, now=api.clock(), events=events, description=description
    )
    data = sub.to_json()
    data["initial_secret"] = secrets[0].reveal()
    return 201, {"data": data}


async def get_subscription(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``GET /v1/webhook_subscriptions/{id}``."""
    return 200, {"data": subscription(api, request.path_params["id"]).to_json()}


async def patch_subscription(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``PATCH /v1/webhook_subscriptions/{id}``."""
    sub = subscription(api, request.path_params["id"])
    body = await json_body(request)
    if "status" in body and body["status"] != "active":
        raise bad("invalid_parameter", "status can only be set to 'active'", "status")
    if "description" in body and not isinstance(body["description"], (str, type(None))):
        raise bad("invalid_parameter", "description must be a string", "description")
    url = check_url(api, body["url"]) if "url" in body else sub.url
    events = check_events(body["events"]) if "events" in body else sub.events
    sub.url, sub.events = url, events
    if "description" in body:
        sub.description = body["description"]
    if body.get("status") == "active":
        api.store.reactivate(sub)
    sub.updated_at = api.clock()
    return 200, {"data": sub.to_json()}


async def delete_subscription(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``DELETE /v1/webhook_subscriptions/{id}``."""
    sub = subscription(api, request.path_params["id"])
    sub.deleted = True
    return 200, {"data": {"id": sub.id, "object": "webhook_subscription", "deleted": True}}


async def mint_secret(request: Request, api: ApiState) -> tuple[int, dict[str, Any]]:
    """``POST /v1/webhook_subscriptions/{id}/secrets``: one more secret."""
    sub = subscription(api, request.path_params["id"])
    body = await json_body(request)
    hours = body.get("expires_in_hours", 24)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 0 <= hours <= 720:
        raise bad("invalid_parameter", "expires_in_hours must be 0-720", "expires_in_hours")
    record = api.store.mint_secret(sub, now=api.clock(), expires_in_hours=hours)
    data = {"object": "webhook_secret", **record.to_json(), "secret": record.value.reveal()}
    return 201, {"data": data}
