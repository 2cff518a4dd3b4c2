"""The emulated Kirim REST API (kirim-api.md §7) as a Starlette ASGI app.

Endpoints: ``/v1/health``, ``/v1/openapi.json`` (both public) and ``/v1/me``; ``GET
/v1/webhook_deliveries`` (newest first, opaque filter-bound cursors, ``limit`` 1-100,
filters ``subscription_id``, ``status``, ``event_type``, ``event_id``, ``created_after``,
``created_before``), ``GET /v1/webhook_deliveries/{id}``, ``POST .../{id}/replay``,
``POST .../bulk_replay`` (at most 1000 per call); webhook subscriptions (create returns
``initial_secret`` once; list, get, patch, delete) and ``POST
/v1/webhook_subscriptions/{id}/secrets``. Bearer auth with ``kdv_live_`` keys, the error
envelope with ``X-Request-Id``, token-bucket rate limits per class (read: GET/HEAD, write:
the rest) with ``X-RateLimit-*`` on 2xx and 4xx and ``Retry-After`` on 429;
``Idempotency-Key`` on POST (a repeated request gets the first answer with
``Idempotent-Replayed: true``). :func:`create_app` wraps it in the fault injector.

Emulator choices (assumed in kirim-api.md): cursors are base64url JSON plus an HMAC, bound to
a hash of the filters; subscription URLs must be https, except loopback http URLs when
``allow_http_loopback`` (so local receivers can be targets).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from kirim_events.config import Secret
from kirim_events.emulator import routes
from kirim_events.emulator.apistate import (
    ANONYMOUS,
    BULK_REPLAY_CAP,
    KEY_PATTERN,
    ApiError,
    ApiState,
    Handler,
    bad,
)
from kirim_events.emulator.faults import FaultConfig, FaultInjector
from kirim_events.emulator.store import Store
from kirim_events.errors import ConfigError

__all__ = ["BULK_REPLAY_CAP", "ApiError", "api_state", "create_app"]


def _endpoint(
    api: ApiState, handler: Handler, *, public: bool = False
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
                headers = {"X-Request-Id": request_id, **_limits(api, request, ANONYMOUS)}
        return JSONResponse(payload, status_code=status, headers=headers)

    return run


def _limits(api: ApiState, request: Request, key: str) -> dict[str, str]:
    """``X-RateLimit-*`` for an answer other than the 2xx or 429 of a routed request
    (kirim-api.md §7.2: every 4xx carries them). It takes a token like any request; the
    answer stays what it was (a 401, a 404), so without ``Retry-After``. Requests without a
    valid key share one bucket per class (``ANONYMOUS``), apart from every key's."""
    _, limits = api.limit(key, request.method not in ("GET", "HEAD"))
    limits.pop("Retry-After", None)
    return limits


def _unrouted(api: ApiState) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The 404 / 405 for a path or method no route serves, with the caller's rate limits."""

    async def run(request: Request, exc: Exception) -> Response:
        response = _http_error(request, exc, api.request_id())
        try:
            key = api.authenticate(request)
        except ApiError:
            key = ANONYMOUS
        response.headers.update(_limits(api, request, key))
        return response

    return run


async def _idempotent(
    api: ApiState, key: str, request: Request, handler: Handler
) -> tuple[int, dict[str, Any], bool]:
    """Run ``handler`` once per Idempotency-Key (kirim-api.md §7.2): kept 24 h, matched on
    method + path + canonical body; the same key with another body is a 422
    ``idempotency_key_reuse`` (docs disagree: 422 vs 409 ``idempotency_conflict``; we pick 422)."""
    token = request.headers["idempotency-key"]
    if not token or len(token) > 255:
        raise bad("invalid_parameter", "Idempotency-Key must be 1-255 chars", "Idempotency-Key")
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


def _http_error(request: Request, exc: Exception, request_id: str) -> Response:
    """The error envelope for ``exc`` (a 404 or 405 of the router), under ``request_id``: a
    new ``req_`` ULID like every other answer's (one made from ``id(request)`` came again
    for other requests, 30 times in 300 over HTTP, and was half the time no ULID)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "resource_not_found", 405: "method_not_allowed"}.get(status, "internal_error")
    kind = {404: "not_found", 405: "invalid_request_error"}.get(status, "api_error")
    message = f"{request.method} {request.url.path}"
    if status == 404 and _routed_without_slash(request):
        message += f"; the API's paths end without '/': {request.url.path.rstrip('/')}"
    error = {"type": kind, "code": code, "message": message}
    error["request_id"] = request_id
    headers = {"X-Request-Id": request_id}
    if status == 405:
        # RFC 9110 §15.5.6: a 405 names the methods the path has. Starlette's names only
        # those of the first route of the path (GET and HEAD for a subscription, whose
        # PATCH and DELETE are routes of their own), and the envelope left even that out
        headers["Allow"] = ", ".join(_methods(request))
    return JSONResponse(
        {"error": error, "request_id": request_id}, status_code=status, headers=headers
    )


def _methods(request: Request) -> list[str]:
    """Every method some route serves ``request``'s path with, sorted."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches({**request.scope, "method": "GET"})[0] is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _routed_without_slash(request: Request) -> bool:
    """Whether ``request``'s path ends in "/" and a route serves it without (Starlette's own
    test for its redirect, which the app turns off)."""
    path = request.scope["path"]
    if path == "/" or not path.endswith("/"):
        return False
    scope = {**request.scope, "path": path.rstrip("/")}
    return any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes)


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
    retention_days: float | None = None,
) -> FaultInjector:
    """Build the REST app over ``store``.

    Parameters
    ----------
    store
        The emulator's subscriptions and deliveries.
    api_keys
        Accepted ``kdv_live_`` keys (a ConfigError names one of another form by its place,
        never its value: no request could authenticate with it).
    clock, rng
        Time source (rate limits, created_at of replays) and random source (request ids,
        faults).
    read_limit, write_limit
        Requests per minute for GET/HEAD and for everything else (Free plan: 600 / 60),
        shared by every key (the emulator is one organisation).
    faults
        Share of requests that fail, wait or drop (:class:`FaultConfig`).
    fault_sleep
        The sleep used for injected latency (``asyncio.sleep`` by default).
    retention_days
        Serve only delivery rows created within this many days of ``clock`` (Kirim keeps
        30, kirim-api.md §3), as if purged continuously; None serves every row kept (tests
        then purge when they choose, :meth:`Emulator.purge`).

    Returns
    -------
    FaultInjector
        The ASGI app; its ``injected`` dict counts the faults served.
    """
    rng = rng or random.Random(0)
    keys = tuple(k.reveal() if isinstance(k, Secret) else str(k) for k in api_keys)
    for n, key in enumerate(keys, 1):
        # a key no Bearer token can match (authenticate checks the form too) made every
        # request a 401 "invalid API key" with no word of why; the key itself is not shown
        if not KEY_PATTERN.match(key):
            raise ConfigError(
                f"API key {n} of {len(keys)} is no Kirim key: a key is kdv_live_ followed"
                " by 24 url-safe characters (A-Z, a-z, 0-9, - and _)"
            )
    api = ApiState(
        store=store,
        keys=keys,
        clock=clock or time.time,
        rng=rng,
        read_limit=read_limit,
        write_limit=write_limit,
        allow_http_loopback=allow_http_loopback,
        cursor_key=rng.getrandbits(128).to_bytes(16, "big"),
        retention_days=retention_days,
    )

    def route(path: str, handler: Handler, methods: list[str], public: bool = False) -> Route:
        return Route(path, _endpoint(api, handler, public=public), methods=methods)

    table = [
        route("/v1/health", routes.health, ["GET"], public=True),
        route("/v1/openapi.json", routes.openapi, ["GET"], public=True),
        route("/v1/me", routes.me, ["GET"]),
        route("/v1/webhook_deliveries", routes.list_deliveries, ["GET"]),
        route("/v1/webhook_deliveries/bulk_replay", routes.bulk_replay, ["POST"]),
        route("/v1/webhook_deliveries/{id}", routes.get_delivery, ["GET"]),
        route("/v1/webhook_deliveries/{id}/replay", routes.replay, ["POST"]),
        route("/v1/webhook_subscriptions", routes.list_subscriptions, ["GET"]),
        route("/v1/webhook_subscriptions", routes.create_subscription, ["POST"]),
        route("/v1/webhook_subscriptions/{id}", routes.get_subscription, ["GET"]),
        route("/v1/webhook_subscriptions/{id}", routes.patch_subscription, ["PATCH"]),
        route("/v1/webhook_subscriptions/{id}", routes.delete_subscription, ["DELETE"]),
        route("/v1/webhook_subscriptions/{id}/secrets", routes.mint_secret, ["POST"]),
    ]
    unrouted = _unrouted(api)
    app = Starlette(routes=table, exception_handlers={404: unrouted, 405: unrouted})
    # A path with a trailing "/" is a 404 in the error envelope, not Starlette's 307 to the
    # path without it: Kirim documents its paths without one (kirim-api.md §7) and whether
    # it serves them with one is unknown, so a client that adds one must find out here, not
    # from Kirim; and a 307 was an empty answer outside the envelope (no request id, no
    # rate-limit headers) that httpx does not follow, with a Location built from Host.
    app.router.redirect_slashes = False
    app.state.api = api
    return FaultInjector(
        app,
        faults or FaultConfig(),
        rng=random.Random(rng.getrandbits(64)),
        sleep=fault_sleep or asyncio.sleep,
    )


def api_state(app: FaultInjector) -> ApiState:
    """The state shared by the handlers of an app made by :func:`create_app` (its store,
    rate-limit buckets, keys)."""
    state: ApiState = cast(Starlette, app.app).state.api
    return state
