"""Helpers for the backfill / reconcile tests: a real emulator history, its API, fake time.

No tests here. The history is made by the emulator's delivery engine POSTing to the real
collector receiver (journal) behind a "broken collector" middleware that fails a fixed share
of events (500 until Kirim gives up -> ``dead``, or 410 -> ``failed``), so the emulator's
ground truth knows exactly which events were never acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import threading
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio.from_thread
import httpx
import polars as pl

from kirim_events.client import KirimClient
from kirim_events.emulator import Emulator, EngineConfig, FaultConfig, create_app
from kirim_events.journal import Journal
from kirim_events.lake import Lake
from kirim_events.receiver import DEFAULT_MAX_BODY, Receiver

Scope = MutableMapping[str, Any]
ASGI = Callable[..., Awaitable[None]]
WEBHOOK_URL = "http://collector.test/webhooks/kirim"


class Killed(BaseException):
    """Stands in for the process dying right after a page was checkpointed (nothing runs
    after it: not an error the run handles, such as flushing what it stored)."""


class FakeTime:
    """Wall clock that moves only when someone sleeps (thread-safe)."""

    def __init__(self, start: float) -> None:
        self.now = start
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += max(0.0, seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class SyncASGI(httpx.BaseTransport):
    """Drive an ASGI app from a sync httpx.Client (one event loop thread, any caller thread).

    Counts the status codes served, so tests can show the faults really happened. Clients
    closing it leave it running (several clients share one); ``shutdown_all`` stops them all.
    """

    live: ClassVar[list[SyncASGI]] = []

    def __init__(self, app: ASGI) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._cm.__enter__()
        self.statuses: Counter[int] = Counter()
        self.transport_errors = 0
        self.paths: Counter[str] = Counter()
        SyncASGI.live.append(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def go() -> tuple[int, httpx.Headers, bytes]:
            resp = await self._inner.handle_async_request(request)
            return resp.status_code, resp.headers, await resp.aread()

        self.paths[f"{request.method} {request.url.path}"] += 1
        try:
            status, headers, body = self._portal.call(go)
        except httpx.TransportError:
            self.transport_errors += 1
            raise
        self.statuses[status] += 1
        return httpx.Response(status, headers=headers, content=body, request=request)

    def close(self) -> None:
        pass

    @classmethod
    def shutdown_all(cls) -> None:
        while cls.live:
            cls.live.pop()._cm.__exit__(None, None, None)


def fate(event_id: str) -> str:
    """What the broken collector does with an event: ok (~85 %), dead (~10 %), failed (~5 %)."""
    r = zlib.crc32(event_id.encode()) % 20
    return "dead" if r < 2 else ("failed" if r == 2 else "ok")


class BrokenCollector:
    """ASGI middleware: refuses some events (by event id) until ``healthy`` is set."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.healthy = False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        event_id = headers.get(b"x-kirim-event-id", b"").decode()
        what = fate(event_id)
        if not self.healthy and what != "ok":
            status = 500 if what == "dead" else 410
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"broken"})
            return
        await self.app(scope, receive, send)


class World:
    """An emulator whose history was delivered to a (partly broken) collector at ``home``."""

    def __init__(
        self,
        home: Path,
        *,
        seed: int,
        events: int,
        duplicate_rate: float = 0.2,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.home = home
        config = EngineConfig(
            time_compression=1e7,
            duplicate_rate=duplicate_rate,
            disorder=0.2,
            auto_disable_after=10**9,
        )
        self.emu = Emulator(seed=seed, engine=config)
        self.journal = Journal(home)
        receiver = Receiver(self.journal, self.emu.webhook_secrets, max_body=max_body)
        self.collector = BrokenCollector(receiver)
        asyncio.run(self.emu.send(events, url=WEBHOOK_URL, transport=self.transport()))
        self.journal.flush(Lake(home))

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self.collector)

    def deliver_pending(self) -> None:
        """Run the engine until every queued delivery (e.g. replays) was attempted."""

        async def go() -> None:
            async with httpx.AsyncClient(transport=self.transport()) as client:
                await self.emu.engine.run(None, client=client)

        asyncio.run(go())
        self.journal.flush(Lake(self.home))

    @property
    def history_keys(self) -> set[str]:
        return {k for row in self.emu.store.deliveries for k in row.event_keys}

    @property
    def span(self) -> tuple[float, float]:
        times = [row.created_at for row in self.emu.store.deliveries]
        return min(times), max(times)

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The history's span with a minute's margin on each side."""
        lo, hi = self.span
        margin = timedelta(minutes=1)
        return datetime.fromtimestamp(lo, UTC) - margin, datetime.fromtimestamp(hi, UTC) + margin

    def api(
        self,
        t: FakeTime,
        *,
        faults: FaultConfig | None = None,
        read_limit: int = 600,
        write_limit: int = 60,
        transport_wrapper: Callable[[ASGI], ASGI] | None = None,
    ) -> tuple[SyncASGI, KirimClient]:
        """The emulator's REST app on fake time, and a KirimClient on the same fake time."""
        app: ASGI = create_app(
            self.emu.store,
            api_keys=self.emu.api_keys,
            clock=t.clock,
            read_limit=read_limit,
            write_limit=write_limit,
            faults=faults,
            fault_sleep=t.asleep,
        )
        if transport_wrapper is not None:
            app = transport_wrapper(app)
        transport = SyncASGI(app)
        client = KirimClient(
            "http://kirim.test",
            self.emu.api_keys[0],
            transport=transport,
            sleep=t.sleep,
            clock=t.clock,
        )
        return transport, client

    def close(self) -> None:
        self.journal.close()


def lake_frames(home: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events, deliveries) as the lake serves them."""
    lake = Lake(home)
    return lake.events().collect(), lake.deliveries().collect()


class RewriteAnswers:
    """ASGI middleware over the emulator: the JSON answers to the requests :meth:`wants`
    (by default every GET) pass through :meth:`rewrite`, their Content-Length set anew; an
    answer that is no JSON passes as it came. The tests' quirks of Kirim's answers are
    subclasses."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    def wants(self, scope: Scope) -> bool:
        return scope.get("type") == "http" and scope.get("method") == "GET"

    def rewrite(self, doc: Any) -> bytes:
        """The body sent for the answer ``doc`` (decoded JSON, free to change)."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if not self.wants(scope):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            try:
                doc = json.loads(body)
            except ValueError:
                pass
            else:
                body = self.rewrite(doc)
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


class StripPayload(RewriteAnswers):
    """ASGI middleware making the history API omit ``payload`` (Kirim may not return it), or
    the other fields named (``StripPayload(app, "attempt")``: Kirim documents only ``id``,
    ``object``, ``status`` and ``replayed_from``)."""

    def __init__(self, app: ASGI, *fields: str) -> None:
        super().__init__(app)
        self.fields = fields or ("payload",)

    def rewrite(self, doc: Any) -> bytes:
        items = doc.get("data") if isinstance(doc, dict) else None
        for item in items if isinstance(items, list) else [items]:
            for name in self.fields if isinstance(item, dict) else ():
                item.pop(name, None)
        return json.dumps(doc).encode()


class DropKey:
    """ASGI middleware: requests of the methods named reach the emulator without their
    ``Authorization`` header, so that it refuses them with its own 401, as Kirim refuses a
    key revoked meanwhile (or one that may read the history but not replay)."""

    def __init__(self, app: ASGI, *methods: str) -> None:
        self.app = app
        self.methods = set(methods or ("GET", "POST"))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("method") in self.methods:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
