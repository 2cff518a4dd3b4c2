"""Fault injection and rate limiting for the emulated REST API.

:class:`FaultInjector` wraps any ASGI app: a share of requests get a 5xx in Kirim's error
envelope, some get added latency, some lose their connection mid-response (half of those
after the request was handled, so only the answer is lost). It can also make the history
list ignore some of its filters, as a Kirim that does not know them (kirim-api.md §7.4 only
assumes them) would.
:class:`TokenBucket` is the per-organisation, per-class limiter of kirim-api.md §7.2.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx

from kirim_events.errors import ConfigError

__all__ = ["HISTORY_FILTERS", "DroppedConnection", "FaultConfig", "FaultInjector", "TokenBucket"]

HISTORY_FILTERS = (
    "subscription_id",
    "status",
    "event_type",
    "event_id",
    "created_after",
    "created_before",
)
"""The filters of ``GET /v1/webhook_deliveries`` (what ``ignored_filters`` may name)."""
_HISTORY_PATH = "/v1/webhook_deliveries"
_LATENCY_SLICE = 0.1  # seconds: how late a latency wait sees :meth:`FaultInjector.cut_latency`

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Share of API requests answered 5xx, given extra latency, or dropped (0..1 each); and
    the history filters ignored (``HISTORY_FILTERS`` names: ``("created_after",
    "created_before")`` makes a Kirim that ignores the time range, and pages the whole
    history whatever range is asked)."""

    error_rate: float = 0.0
    latency: float = 0.0  # seconds added to a request that gets latency
    latency_rate: float = 0.0
    drop_rate: float = 0.0
    ignored_filters: tuple[str, ...] = ()

    def validate(self) -> FaultConfig:
        """Return self, or raise ConfigError."""
        for name in ("error_rate", "latency_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1")
        if self.latency < 0:
            raise ConfigError("latency must not be negative")
        unknown = sorted(set(self.ignored_filters) - set(HISTORY_FILTERS))
        if unknown:
            raise ConfigError(
                f"ignored_filters must be a tuple of {', '.join(HISTORY_FILTERS)};"
                f" got {self.ignored_filters!r}"
            )
        return self

    @property
    def active(self) -> bool:
        """Whether any fault can happen."""
        return bool(self.error_rate or self.drop_rate or (self.latency and self.latency_rate))


class DroppedConnection(httpx.RemoteProtocolError):
    """Raised inside the app to drop a connection after the response started.

    Behind uvicorn the client sees the connection close mid-body; through
    ``httpx.ASGITransport`` the client sees this exception, which is the same
    ``httpx.TransportError`` a real dropped connection gives.
    """

    def __init__(self) -> None:
        super().__init__("emulated fault: connection dropped mid-response")


class FaultInjector:
    """ASGI middleware that injects the faults of a :class:`FaultConfig`.

    ``/v1/health`` is never faulted, so readiness checks stay reliable.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: FaultConfig,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.app = app
        self.config = config.validate()
        self.rng = rng or random.Random(0)
        self.sleep = sleep
        self.injected = {"error": 0, "latency": 0, "drop": 0, "lost_answer": 0}
        self.latency_cut = False

    def cut_latency(self) -> None:
        """End the latency waits under way, and skip those to come (the server is stopping:
        a request slowed by an hour held the stop of ``emulate`` for the hour)."""
        self.latency_cut = True

    async def _wait(self, seconds: float) -> None:
        if self.sleep is not asyncio.sleep:  # an injected clock: one wait, as asked
            await self.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while not self.latency_cut and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _LATENCY_SLICE))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cfg = self.config
        if cfg.ignored_filters and scope["type"] == "http" and scope.get("path") == _HISTORY_PATH:
            scope = _without_params(scope, cfg.ignored_filters)
        if scope["type"] != "http" or scope.get("path") == "/v1/health" or not cfg.active:
            await self.app(scope, receive, send)
            return
        roll = self.rng.random
        if cfg.latency and roll() < cfg.latency_rate:
            self.injected["latency"] += 1
            await self._wait(cfg.latency)
        if roll() < cfg.error_rate:
            self.injected["error"] += 1
            await _error_503(send, self.rng)
            return
        if roll() < cfg.drop_rate:
            self.injected["drop"] += 1
            if roll() < 0.5:
                # Half the drops happen after the request was handled: only the answer is lost
                # (what makes a retried POST without an Idempotency-Key act twice).
                self.injected["lost_answer"] += 1
                await self.app(scope, receive, _swallow)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"data":', "more_body": True})
            raise DroppedConnection()
        await self.app(scope, receive, send)


def _without_params(scope: Scope, names: tuple[str, ...]) -> Scope:
    """``scope`` with the query parameters named taken out (the app never sees them; the
    cursors it makes are bound to the filters it applied, as they are without the fault)."""
    drop = {n.encode() for n in names}
    pairs = [p for p in scope.get("query_string", b"").split(b"&") if p]
    kept = [p for p in pairs if p.split(b"=", 1)[0] not in drop]
    return {**scope, "query_string": b"&".join(kept)}


async def _swallow(message: Message) -> None:
    return None


async def _error_503(send: Send, rng: random.Random) -> None:
    request_id = f"req_fault{rng.getrandbits(40):010x}"
    status = rng.choice((500, 502, 503))
    body = json.dumps(
        {
            "error": {
                "type": "api_error",
                "code": "internal_error",
                "message": "emulated fault: the server failed; retry with backoff",
                "request_id": request_id,
            },
            "request_id": request_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TokenBucket:
    """``limit`` requests per minute, refilled continuously; injectable clock.

    >>> clock = iter([0.0, 0.0, 0.0]).__next__
    >>> bucket = TokenBucket(2, clock=clock)
    >>> bucket.take()[0], bucket.take()[0], bucket.take()[0]
    (True, True, False)
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.time) -> None:
        if limit < 1:
            raise ConfigError("rate limit must be at least 1 per minute")
        self.limit = limit
        self.rate = limit / 60.0
        self.clock = clock
        self.tokens = float(limit)
        self.stamp: float | None = None

    def take(self) -> tuple[bool, dict[str, str]]:
        """Take one token; return (allowed, X-RateLimit-* headers, plus Retry-After if not)."""
        now = self.clock()
        if self.stamp is not None:
            self.tokens = min(float(self.limit), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        allowed = self.tokens >= 1.0
        if allowed:
            self.tokens -= 1.0
        reset = now + (self.limit - self.tokens) / self.rate
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, math.floor(self.tokens))),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil((1.0 - self.tokens) / self.rate)))
        return allowed, headers

    def spend(self) -> None:
        """Take every token at once, as other users of the bucket would: the next
        :meth:`take` is refused until a token has refilled, however large ``limit`` is.

        >>> clock = iter([0.0, 0.0, 0.5]).__next__
        >>> bucket = TokenBucket(600, clock=clock)
        >>> bucket.spend()
        >>> bucket.take()[0], bucket.take()[0]
        (False, True)
        """
        self.tokens = 0.0
        self.stamp = self.clock()
