"""The emulated Kirim REST API (kirim-api.md §7) as a Starlette ASGI app.

Endpoints: ``/v1/health`` and ``/v1/me``; ``GET /v1/webhook_deliveries`` (newest first,
opaque filter-bound cursors, ``limit`` 1-100, filters ``subscription_id``, ``status``,
``event_type``, ``event_id``, ``created_after``, ``created_before``), ``GET
/v1/webhook_deliveries/{id}``, ``POST .../{id}/replay``, ``POST .../bulk_replay`` (at most
1000 per call); webhook subscriptions (create returns ``initial_secret`` once; list, get,
patch, delete) and ``POST /v1/webhook_subscriptions/{id}/secrets``. Bearer auth with
``kdv_live_`` keys, the error envelope with ``X-Request-Id``, token-bucket rate limits per
class (read: GET/HEAD, write: the rest) with ``X-RateLimit-*`` on 2xx and 4xx and
``Retry-After`` on 429; ``Idempotency-Key`` on POST (a repeated request gets the first
answer with ``Idempotent-Replayed: true``). :func:`create_app` wraps it in the fault injector.

Emulator choices (assumed in kirim-api.md): cursors are base64url JSON plus an HMAC, bound to
a hash of the filters; subscription URLs must be https, except loopback http URLs when
``allow_http_loopback`` (so local receivers can be targets).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kirim_events.config import Secret
from kirim_events.emulator.faults import FaultConfig, FaultInjector, TokenBucket
from kirim_events.emulator.ids import ulid
from kirim_events.emulator.store import DeliveryRow, Store, Subscription
from kirim_events.events import EVENT_TYPE_PATTERN, parse_time

__all__ = ["BULK_REPLAY_CAP", "ApiError", "create_app"]

BULK_REPLAY_CAP = 1000
KEY_PATTERN = re.compile(r"^kdv_live_[A-Za-z0-9_-]{24}$")
SUBSCRIPTION_PATTERN = re.compile(r"^wbs_[0-9A-HJKMNP-TV-Z]{26}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ApiError(Exception):
    """An error answer in Kirim's envelope."""

    def __init__(
        self, status: int, type_: str, code: str, message: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param


def _bad(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request_error", code, message, param)


def _not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", "resource_not_found", f"no {what} with id {ident!r}", "id")


@dataclass
class _Api:
    store: Store
    keys: tuple[str, ...]
    clock: Callable[[], float]
    rng: random.Random
    read_limit: int
    write_limit: int
    allow_http_loopback: bool
    cursor_key: bytes

    def __post_init__(self) -> None:
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        # (api key, Idempotency-Key) -> (expires, fingerprint, status, payload)
        self.idempotency: dict[tuple[str, str], tuple[float, str, int, dict[str, Any]]] = {}

    def request_id(self) -> str:
        return ulid("req", int(self.clock() * 1000), self.rng)

    def authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "authentication_error", "invalid_api_key", "missing Bearer API key")
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(key.encode(), token.encode())
        if not matched or not KEY_PATTERN.match(token):
            raise ApiError(401, "authentication_error", "invalid_api_key", "invalid API key")
        return token

    def limit(self, key: str, write: bool) -> tuple[bool, dict[str, str]]:
        kind = "write" if write else "read"
        bucket = self.buckets.get((key, kind))
        if bucket is None:
            limit = self.write_limit if write else self.read_limit
            bucket = self.buckets[(key, kind)] = TokenBucket(limit, clock=self.clock)
        return bucket.take()

    # ------------------------------------------------------------------ cursors

    def encode_cursor(self, seq: int, filters_hash: str) -> str:
        raw = base64.urlsafe_b64encode(json.dumps({"s": seq, "f": filters_hash}).encode())
        text = raw.rstrip(b"=").decode()
        return f"{text}.{self._mac(text)}"

    def decode_cursor(self, cursor: str, filters_hash: str) -> int:
        text, _, mac = cursor.partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(text)):
            raise _bad("invalid_cursor", "cursor is not one this API issued", "cursor")
        try:
            value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            seq, bound = int(value["s"]), str(value["f"])
        except (ValueError, KeyError, TypeError):
            raise _bad("invalid_cursor", "cursor is unreadable", "cursor") from None
        if bound != filters_hash:
            raise _bad(
                "invalid_cursor",
                "cursor was issued for other filters; repeat the same filters on every page",
                "cursor",
            )
        return seq

    def _mac(self, text: str) -> str:
        return hmac.new(self.cursor_key, text.encode(), hashlib.sha256).hexdigest()[:24]


Handler = Callable[[Request, _Api], Awaitable[tuple[int, dict[str, Any]]]]


def _endpoint(
    api: _Api, handler: Handler, *, public: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        request_id = api.request_id()
        headers = {"X-Request-Id": request_id}
        try:
            if not public:
                key = api.authenticate(request)
                allowed, limits = api.limit(key, request.method not in ("GET", "HEAD"))
                headers.update(limits)
                if not allowed:
                    raise ApiError(
                        429,
                        "rate_limit_error",
                        "rate_limit_exceeded",
                        "too many requests; wait Retry-After seconds",
                    )
                if request.method == "POST" and "idempotency-key" in request.headers:
                    status, payload, replayed = await _idempotent(api, key, request, handler)
                    headers["Idempotent-Replayed"] = "true" if replayed else "false"
                else:
                    status, payload = await handler(request, api)
            else:
                status, payload = await handler(request, api)
            payload = {**payload, "request_id": request_id}
        except ApiError as err:
            status = err.status
            error: dict[str, Any] = {"type": err.type, "code": err.code, "message": str(err)}
            if err.param:
                error["param"] = err.param
            error["request_id"] = request_id
            payload = {"error": error, "request_id": request_id}
            if status == 401:
                headers = {"X-Request-Id": request_id}
        return JSONResponse(payload, status_code=status, headers=headers)

    return run


async def _idempotent(
    api: _Api, key: str, request: Request, handler: Handler
) -> tuple[int, dict[str, Any], bool]:
    """Run ``handler`` once per Idempotency-Key (kirim-api.md §7.2): kept 24 h, matched on
    method + path + canonical body; the same key with another body is a 422
    ``idempotency_key_reuse`` (docs disagree: 422 vs 409 ``idempotency_conflict``; we pick 422)."""
    token = request.headers["idempotency-key"]
    if not token or len(token) > 255:
        raise _bad("invalid_parameter", "Idempotency-Key must be 1-255 chars", "Idempotency-Key")
    raw = await request.body()
    try:
        canonical = json.dumps(json.loads(raw), sort_keys=True) if raw.strip() else ""
    except ValueError:
        canonical = raw.decode("utf-8", "replace")
    fingerprint = f"{request.method} {request.url.path} {canonical}"
    now = api.clock()
    entry = api.idempotency.get((key, token))
    if entry is not None and entry[0] > now:
        if entry[1] != fingerprint:
            raise ApiError(
                422,
                "invalid_request_error",
                "idempotency_key_reuse",
                "this Idempotency-Key was used with another request",
                "Idempotency-Key",
            )
        return entry[2], entry[3], True
    status, payload = await handler(request, api)
    api.idempotency[(key, token)] = (now + 86400, fingerprint, status, payload)
    return status, payload, False


# ------------------------------------------------------------------ helpers


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return 25
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 100:
        raise _bad("invalid_limit", "limit must be a whole number from 1 to 100", "limit")
    return int(raw)


def _time_param(value: Any, name: str) -> float | None:
    if value is None:
        return None
    parsed = parse_time(value) if isinstance(value, str) else None
    if parsed is None:
        raise _bad("invalid_parameter", f"{name} must be an ISO-8601 time", name)
    return parsed.timestamp()


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise _bad("invalid_body", "request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise _bad("invalid_body", "request body must be a JSON object")
    return value


def _row_filter(f: dict[str, Any]) -> Callable[[DeliveryRow], bool]:
    def keep(row: DeliveryRow) -> bool:
        return (
            (f["subscription_id"] is None or row.subscription_id == f["subscription_id"])
            and (f["status"] is None or row.status == f["status"])
            and (f["event_type"] is None or row.event_type == f["event_type"])
            and (f["event_id"] is None or row.event_id == f["event_id"])
            and (f["created_after"] is None or row.created_at >= f["created_after"])
            and (f["created_before"] is None or row.created_at < f["created_before"])
        )

    return keep


def _hash(filters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def _page(
    api: _Api, request: Request, items: list[Any], keep: Callable[[Any], bool], fhash: str
) -> dict[str, Any]:
    """Newest first over ``items`` (indexed by seq), resuming below the cursor's seq."""
    limit = _limit(request)
    cursor = request.query_params.get("cursor")
    start = api.decode_cursor(cursor, fhash) - 1 if cursor else len(items) - 1
    out: list[Any] = []
    index = min(start, len(items) - 1)
    last_seq = -1
    while index >= 0 and len(out) < limit:
        item = items[index]
        if keep(item):
            out.append(item)
            last_seq = index
        index -= 1
    has_more = any(keep(items[i]) for i in range(index, -1, -1)) if out else False
    return {
        "data": [item.to_json() for item in out],
        "has_more": has_more,
        "next_cursor": api.encode_cursor(last_seq, fhash) if has_more else None,
    }


def _subscription(api: _Api, ident: str) -> Subscription:
    sub = api.store.subscriptions.get(ident)
    if sub is None or sub.deleted:
        raise _not_found("webhook subscription", ident)
    return sub


def _check_url(api: _Api, url: Any) -> str:
    if not isinstance(url, str):
        raise _bad("invalid_webhook_url", "url is required", "url")
    parts = urlsplit(url)
    ok = parts.scheme == "https" and bool(parts.hostname)
    if parts.scheme == "http" and api.allow_http_loopback and parts.hostname in _LOOPBACK:
        ok = True
    if not ok:
        raise _bad("invalid_webhook_url", "the webhook url must be https", "url")
    return url


def _check_events(events: Any) -> list[str]:
    if (
        not isinstance(events, list)
        or not events
        or not all(
            isinstance(e, str) and (e == "*" or (len(e) <= 64 and EVENT_TYPE_PATTERN.match(e)))
            for e in events
        )
    ):
        raise _bad("invalid_parameter", "events must be a non-empty list of event names", "events")
    return list(events)


# ------------------------------------------------------------------ handlers


async def _health(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    return 200, {"status": "ok"}


async def _me(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    return 200, {"data": {"object": "api_key", "livemode": True, "organization": "emulated"}}


async def _list_deliveries(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    q = request.query_params
    filters = {
        "subscription_id": q.get("subscription_id"),
        "status": q.get("status"),
        "event_type": q.get("event_type"),
        "event_id": q.get("event_id"),
        "created_after": _time_param(q.get("created_after"), "created_after"),
        "created_before": _time_param(q.get("created_before"), "created_before"),
    }
    return 200, _page(api, request, api.store.deliveries, _row_filter(filters), _hash(filters))


async def _get_delivery(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    ident = request.path_params["id"]
    row = api.store.by_id.get(ident)
    if row is None:
        raise _not_found("webhook delivery", ident)
    return 200, {"data": row.to_json()}


async def _replay(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    ident = request.path_params["id"]
    row = api.store.by_id.get(ident)
    if row is None:
        raise _not_found("webhook delivery", ident)
    new = api.store.replay(row, now=api.clock())
    data = {
        "id": new.id,
        "object": "webhook_delivery",
        "replayed_from": row.id,
        "status": "pending",
    }
    return 202, {"data": data}


async def _bulk_replay(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    body = await _json_body(request)
    sub_id = body.get("subscription_id")
    if not isinstance(sub_id, str) or not SUBSCRIPTION_PATTERN.match(sub_id):
        raise _bad("invalid_parameter", "subscription_id must be a wbs_ id", "subscription_id")
    _subscription(api, sub_id)
    status = body.get("status", "dead")
    if status not in ("failed", "dead"):
        raise _bad("invalid_parameter", "status must be 'failed' or 'dead'", "status")
    event_type = body.get("event_type")
    if event_type is not None and (
        not isinstance(event_type, str) or not 1 <= len(event_type) <= 64
    ):
        raise _bad("invalid_parameter", "event_type must be 1-64 characters", "event_type")
    filters = {
        "subscription_id": sub_id,
        "status": status,
        "event_type": event_type,
        "event_id": None,
        "created_after": _time_param(body.get("created_after"), "created_after"),
        "created_before": _time_param(body.get("created_before"), "created_before"),
    }
    keep = _row_filter(filters)
    matched = [row for row in api.store.deliveries if keep(row)]
    now = api.clock()
    for row in matched[:BULK_REPLAY_CAP]:
        api.store.replay(row, now=now)
    enqueued = min(len(matched), BULK_REPLAY_CAP)
    return 202, {"data": {"enqueued": enqueued, "capped": len(matched) > BULK_REPLAY_CAP}}


async def _list_subscriptions(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    subs = list(api.store.subscriptions.values())
    return 200, _page(api, request, subs, lambda s: not s.deleted, "subscriptions")


async def _create_subscription(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    body = await _json_body(request)
    url = _check_url(api, body.get("url"))
    events = _check_events(body.get("events", ["*"]))
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad("invalid_parameter", "description must be a string", "description")
    sub, secrets = api.store.create_subscription(
        url, now=api.clock(), events=events, description=description
    )
    data = sub.to_json()
    data["initial_secret"] = secrets[0].reveal()
    return 201, {"data": data}


async def _get_subscription(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    return 200, {"data": _subscription(api, request.path_params["id"]).to_json()}


async def _patch_subscription(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    sub = _subscription(api, request.path_params["id"])
    body = await _json_body(request)
    if "status" in body and body["status"] != "active":
        raise _bad("invalid_parameter", "status can only be set to 'active'", "status")
    if "description" in body and not isinstance(body["description"], (str, type(None))):
        raise _bad("invalid_parameter", "description must be a string", "description")
    url = _check_url(api, body["url"]) if "url" in body else sub.url
    events = _check_events(body["events"]) if "events" in body else sub.events
    sub.url, sub.events = url, events
    if "description" in body:
        sub.description = body["description"]
    if body.get("status") == "active":
        sub.status, sub.consecutive_failures = "active", 0
    sub.updated_at = api.clock()
    return 200, {"data": sub.to_json()}


async def _delete_subscription(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    sub = _subscription(api, request.path_params["id"])
    sub.deleted = True
    return 200, {"data": {"id": sub.id, "object": "webhook_subscription", "deleted": True}}


async def _mint_secret(request: Request, api: _Api) -> tuple[int, dict[str, Any]]:
    sub = _subscription(api, request.path_params["id"])
    body = await _json_body(request)
    hours = body.get("expires_in_hours", 24)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 0 <= hours <= 720:
        raise _bad("invalid_parameter", "expires_in_hours must be 0-720", "expires_in_hours")
    record = api.store.mint_secret(sub, now=api.clock(), expires_in_hours=hours)
    data = {"object": "webhook_secret", **record.to_json(), "secret": record.value.reveal()}
    return 201, {"data": data}


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "resource_not_found", 405: "method_not_allowed"}.get(status, "internal_error")
    kind = {404: "not_found", 405: "invalid_request_error"}.get(status, "api_error")
    request_id = f"req_{hashlib.sha256(str(id(request)).encode()).hexdigest()[:26].upper()}"
    error = {"type": kind, "code": code, "message": f"{request.method} {request.url.path}"}
    error["request_id"] = request_id
    return JSONResponse(
        {"error": error, "request_id": request_id},
        status_code=status,
        headers={"X-Request-Id": request_id},
    )


def create_app(
    store: Store,
    *,
    api_keys: Iterable[str | Secret],
    clock: Callable[[], float] | None = None,
    rng: random.Random | None = None,
    read_limit: int = 600,
    write_limit: int = 60,
    faults: FaultConfig | None = None,
    fault_sleep: Callable[[float], Awaitable[None]] | None = None,
    allow_http_loopback: bool = True,
) -> FaultInjector:
    """Build the REST app over ``store``.

    Parameters
    ----------
    store
        The emulator's subscriptions and deliveries.
    api_keys
        Accepted ``kdv_live_`` keys.
    clock, rng
        Time source (rate limits, created_at of replays) and random source (request ids,
        faults).
    read_limit, write_limit
        Requests per minute per key for GET/HEAD and for everything else (Free plan: 600 / 60).
    faults
        Share of requests that fail, wait or drop (:class:`FaultConfig`).
    fault_sleep
        The sleep used for injected latency (``asyncio.sleep`` by default).

    Returns
    -------
    FaultInjector
        The ASGI app; its ``injected`` dict counts the faults served.
    """
    rng = rng or random.Random(0)
    keys = tuple(k.reveal() if isinstance(k, Secret) else str(k) for k in api_keys)
    api = _Api(
        store=store,
        keys=keys,
        clock=clock or time.time,
        rng=rng,
        read_limit=read_limit,
        write_limit=write_limit,
        allow_http_loopback=allow_http_loopback,
        cursor_key=rng.getrandbits(128).to_bytes(16, "big"),
    )

    def route(path: str, handler: Handler, methods: list[str], public: bool = False) -> Route:
        return Route(path, _endpoint(api, handler, public=public), methods=methods)

    routes = [
        route("/v1/health", _health, ["GET"], public=True),
        route("/v1/me", _me, ["GET"]),
        route("/v1/webhook_deliveries", _list_deliveries, ["GET"]),
        route("/v1/webhook_deliveries/bulk_replay", _bulk_replay, ["POST"]),
        route("/v1/webhook_deliveries/{id}", _get_delivery, ["GET"]),
        route("/v1/webhook_deliveries/{id}/replay", _replay, ["POST"]),
        route("/v1/webhook_subscriptions", _list_subscriptions, ["GET"]),
        route("/v1/webhook_subscriptions", _create_subscription, ["POST"]),
        route("/v1/webhook_subscriptions/{id}", _get_subscription, ["GET"]),
        route("/v1/webhook_subscriptions/{id}", _patch_subscription, ["PATCH"]),
        route("/v1/webhook_subscriptions/{id}", _delete_subscription, ["DELETE"]),
        route("/v1/webhook_subscriptions/{id}/secrets", _mint_secret, ["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _http_error, 405: _http_error})
    app.state.api = api
    return FaultInjector(
        app,
        faults or FaultConfig(),
        rng=random.Random(rng.getrandbits(64)),
        sleep=fault_sleep or asyncio.sleep,
    )
