"""Deliver world bundles as signed webhooks over HTTP, with Kirim's retry rules.

:class:`DeliveryEngine` POSTs to each subscription's URL through an ``httpx.AsyncClient`` (a
real URL, or an in-process ASGI app via ``httpx.ASGITransport``), with bounded concurrency,
and reads the answer as kirim-api.md §3 says: 2xx delivered; 408, 429, 3xx, 5xx, timeouts and
connection errors retried on the schedule; any other 4xx permanent. The same requests without
a network come from :func:`kirim_events.emulator.offline.iter_signed`.

Retry schedule: attempt n waits ``SCHEDULE[n-1]`` seconds after attempt n-1 (0, 10 s, 30 s,
2 min, 10 min, 1 h, 6 h, 24 h), times a uniform jitter in [0.8, 1.2] (the distribution is
undocumented; uniform is our choice), divided by ``time_compression``; on 429 the wait is
max(schedule, Retry-After). After attempt 8 fails the row is ``dead``; a permanent 4xx makes
it ``failed`` at once (kirim-api.md §3, emulator choice). ``duplicate_rate`` pretends a 2xx
was lost, so the same delivery comes again as the next attempt (at-least-once);
``disorder`` holds that share of new deliveries back by up to ``disorder_delay`` seconds.

Jitter and duplicate draws come from a random stream derived from (seed, delivery id,
attempt), so they do not depend on how concurrent attempts interleave. With an injected
clock the signature ``t`` comes from it, and the same seed gives byte-identical requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpx

from kirim_events.emulator.bodies import Rendered, delivery_headers, render
from kirim_events.emulator.ids import delivery_rng, ulid
from kirim_events.emulator.store import AttemptRecord, DeliveryRow, Store, Subscription
from kirim_events.emulator.world import Bundle
from kirim_events.errors import ConfigError
from kirim_events.signing import sign

__all__ = [
    "JITTER",
    "SCHEDULE",
    "DeliveryEngine",
    "EngineConfig",
    "EngineReport",
    "disorder_lag",
    "new_row",
    "retry_delay",
]

SCHEDULE: tuple[float, ...] = (0, 10, 30, 120, 600, 3600, 21600, 86400)
JITTER = 0.2
STOP_GRACE = 1.0  # seconds the attempts in flight get to end when the engine stops

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def retry_delay(attempt: int, rng: random.Random, *, jitter: float = JITTER) -> float:
    """Seconds to wait before ``attempt`` (2..8): the schedule entry times U(1-j, 1+j)."""
    if not 2 <= attempt <= len(SCHEDULE):
        raise ValueError(f"attempt must be 2..{len(SCHEDULE)}, got {attempt}")
    return SCHEDULE[attempt - 1] * rng.uniform(1.0 - jitter, 1.0 + jitter)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Delivery knobs.

    ``rate`` is world events per second (0 = as fast as possible); ``time_compression``
    divides every retry wait and disorder delay (3600 turns an hour into a second).
    """

    concurrency: int = 8
    timeout: float = 10.0
    duplicate_rate: float = 0.0
    disorder: float = 0.0
    disorder_delay: float = 60.0
    time_compression: float = 1.0
    rate: float = 0.0
    max_attempts: int = len(SCHEDULE)
    auto_disable_after: int = 24
    jitter: float = JITTER

    def validate(self) -> EngineConfig:
        """Return self, or raise ConfigError naming the first bad knob."""
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if not 0.0 <= self.duplicate_rate <= 1.0 or not 0.0 <= self.disorder <= 1.0:
            raise ConfigError("duplicate_rate and disorder must be between 0 and 1")
        if self.time_compression <= 0 or self.timeout <= 0:
            raise ConfigError("time_compression and timeout must be positive")
        if self.rate < 0 or self.disorder_delay < 0:
            raise ConfigError("rate and disorder_delay must not be negative")
        if not 1 <= self.max_attempts <= len(SCHEDULE):
            raise ConfigError(f"max_attempts must be 1..{len(SCHEDULE)}")
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError("jitter must be in [0, 1)")
        return self


@dataclass(slots=True)
class EngineReport:
    """Counts of one engine run."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    retries: int = 0
    duplicates: int = 0
    interrupted: int = 0  # attempts cut short by a stop (their rows stay pending)
    unsent: int = 0  # world events a disabled subscription would have got: no delivery row
    disabled: list[str] = field(default_factory=list)  # subscriptions this run auto-disabled
    errors: list[str] = field(default_factory=list)


def disorder_lag(rng: random.Random, config: EngineConfig) -> float:
    if config.disorder and rng.random() < config.disorder:
        return rng.uniform(0.0, config.disorder_delay)
    return 0.0


def new_row(
    store: Store, sub: Subscription, rendered: Rendered, *, now: float, record: bool
) -> DeliveryRow:
    if record:
        return store.new_delivery(
            sub,
            event_id=rendered.event_id,
            event_type=rendered.event_type,
            source=rendered.source,
            event_keys=rendered.event_keys,
            payload=rendered.body,
            now=now,
        )
    # Not kept: a row object only to carry the values (no store growth on long runs).
    return DeliveryRow(
        seq=-1,
        id=ulid("wbd", int(now * 1000), store.rng),
        subscription_id=sub.id,
        event_id=rendered.event_id,
        event_type=rendered.event_type,
        source=rendered.source,
        event_keys=rendered.event_keys,
        payload=rendered.body,
        url=sub.url,
        created_at=now,
        updated_at=now,
    )


class DeliveryEngine:
    """POSTs deliveries to subscription URLs, retrying on Kirim's schedule.

    Parameters
    ----------
    store
        Where subscriptions live and delivery rows and attempts are recorded. Replays made
        through the REST API land in this engine's queue.
    config
        :class:`EngineConfig`.
    clock
        Current time in seconds (``time.time`` by default); also the signature ``t``.
    sleep
        Awaitable sleep used while waiting for retries; by default the engine waits on its
        own wake-up event, so replays enqueued meanwhile start at once.
    rng
        Root of every random draw (seeded for reproducible runs).
    kirim_block
        Whether Meta bodies carry the ``kirim`` block (must match the world; off by
        default, as kirim-api.md §4.2 says).
    """

    def __init__(
        self,
        store: Store,
        config: EngineConfig | None = None,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
        kirim_block: bool = False,
    ) -> None:
        self.store = store
        self.config = (config or EngineConfig()).validate()
        self._clock = clock or time.time
        self._sleep = sleep
        self._root = (rng or random.Random()).getrandbits(64)
        self.kirim_block = kirim_block
        self._timers: list[tuple[float, int, DeliveryRow]] = []
        self._ready: deque[DeliveryRow] = deque()
        self._fresh = 0
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._abort = False  # a second stop: cut the attempts in flight short at once
        self.report = EngineReport()
        store.on_enqueue = self.enqueue

    # ------------------------------------------------------------------ queueing

    def enqueue(self, row: DeliveryRow, delay: float = 0.0) -> None:
        """Schedule a pending row's next attempt ``delay`` engine-seconds from now."""
        self._seq += 1
        heapq.heappush(self._timers, (self._clock() + delay, self._seq, row))
        if self._wake is not None:
            self._wake.set()

    def submit(self, bundle: Bundle) -> list[DeliveryRow]:
        """Create one delivery row per live subscription for ``bundle`` and queue them."""
        rendered = render(bundle, kirim_block=self.kirim_block)
        rows = []
        now = self._clock()
        for sub in self.store.subscriptions.values():
            if sub.status != "active" and not sub.deleted and sub.matches(rendered.event_type):
                # Kirim sends nothing to a disabled subscription and keeps no row of it:
                # these events are lost to it (counted, so a summary can say so)
                self.report.unsent += len(bundle.events)
                self.store.unsent.setdefault(sub.id, set()).update(rendered.event_keys)
        for sub in list(self.store.live_subscriptions(rendered.event_type)):
            row = new_row(self.store, sub, rendered, now=now, record=True)
            draws = delivery_rng(self._root, sub.ordinal, row.event_keys, row.replayed_from, 0)
            lag = disorder_lag(draws, self.config)
            self._fresh += 1
            self.enqueue(row, lag / self.config.time_compression)
            rows.append(row)
        self.report.events += len(bundle.events)
        self.report.deliveries += len(rows)
        return rows

    def stop(self) -> None:
        """Ask :meth:`run` to return: the attempts in flight get ``STOP_GRACE`` seconds to
        end, then are cut short (at once when asked a second time)."""
        self._abort = self._stopping
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(
        self,
        bundles: Iterable[Bundle] | None = None,
        *,
        client: httpx.AsyncClient,
        forever: bool = False,
    ) -> EngineReport:
        """Deliver ``bundles`` (and any replays) until done, or until :meth:`stop` if ``forever``.

        Returns the run's :class:`EngineReport`; every attempt is also in ``store.attempts``.
        """
        cfg = self.config
        self._wake = asyncio.Event()
        source = iter(bundles) if bundles is not None else None
        inflight: set[asyncio.Task[None]] = set()
        next_emit = self._clock()
        try:
            while not self._stopping:
                now = self._clock()
                while source is not None and self._fresh < cfg.concurrency * 4 and now >= next_emit:
                    bundle = next(source, None)
                    if bundle is None:
                        source = None
                        break
                    self.submit(bundle)
                    if cfg.rate > 0:
                        next_emit = max(next_emit, now - 1.0) + len(bundle.events) / cfg.rate
                while self._timers and self._timers[0][0] <= now:
                    self._ready.append(heapq.heappop(self._timers)[2])
                while self._ready and len(inflight) < cfg.concurrency:
                    task = asyncio.ensure_future(self._attempt(self._ready.popleft(), client))
                    inflight.add(task)
                if not inflight and not self._ready and not self._timers and source is None:
                    if not forever:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                wake_at = [self._timers[0][0]] if self._timers else []
                if source is not None and cfg.rate > 0 and self._fresh < cfg.concurrency * 4:
                    # (while the cap holds emitting back, only an attempt or a timer frees
                    # it: waking for a past next_emit would spin)
                    wake_at.append(next_emit)
                delay = max(0.0, min(wake_at) - now) if wake_at else None
                if inflight:
                    done, inflight = await self._settle(inflight, delay)
                    self._note_errors(done)
                elif delay is not None and delay > 0:
                    await self._wait(delay)
                elif delay is None:
                    await asyncio.sleep(0)
        finally:
            # on the loop's clock (monotonic too), so a test on virtual time sees the grace
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_GRACE
            while inflight and not self._abort and loop.time() < deadline:
                done, inflight = await self._settle(inflight, deadline - loop.time(), abort=True)
                self._note_errors(done)  # an attempt ending in the grace may have failed too
            for task in inflight:  # a hung handler must not hold the stop for --timeout
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            self.report.interrupted += len(inflight)
        return self.report

    def _note_errors(self, done: set[asyncio.Task[None]]) -> None:
        """Report the attempts of ``done`` that raised (a bug of ours, not a failed send)."""
        for task in done:
            if task.exception() is not None:
                self.report.errors.append(repr(task.exception()))

    async def _settle(
        self, inflight: set[asyncio.Task[None]], delay: float | None, *, abort: bool = False
    ) -> tuple[set[asyncio.Task[None]], set[asyncio.Task[None]]]:
        """Wait until an attempt in flight ends, ``delay`` passes (0.5 s at most) or
        :meth:`stop` is called (with ``abort``: called again); return the ended attempts
        and the others. A stop is seen at once, not at the next half second."""
        assert self._wake is not None
        self._wake.clear()
        if self._abort if abort else self._stopping:  # asked before the clear
            return set(), inflight
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait(
                {*inflight, woken},
                timeout=min(delay, 0.5) if delay is not None else 0.5,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            woken.cancel()
        ended = inflight & done
        return ended, inflight - ended

    async def _wait(self, delay: float) -> None:
        if self._sleep is not None:
            await self._sleep(delay)
            return
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _attempt(self, row: DeliveryRow, client: httpx.AsyncClient) -> None:
        cfg = self.config
        sub = self.store.subscriptions[row.subscription_id]
        if row.attempt == 0:
            self._fresh = max(0, self._fresh - 1)
        if sub.status != "active" or sub.deleted:
            # Queued before the subscription was disabled or deleted: held, not sent
            # (sent when the subscription is made active again).
            self.store.hold(row, "deleted" if sub.deleted else sub.status)
            return
        row.attempt += 1
        n = row.attempt
        started = self._clock()
        t = int(started)
        # From its start the row shows this attempt: its number, its URL (a PATCH during it
        # changes the next one's), no answer yet; it showed the answer and the past
        # next_retry_at of the attempt before under this one's number, and the URL of after
        url = row.url = sub.url
        row.response_status_code = row.response_body = row.error = row.next_retry_at = None
        row.updated_at = started
        secrets = sub.active_secrets(started)
        code: int | None = None
        error: str | None = None
        body: str | None = None
        retry_after = 0.0
        if not secrets:
            error = "subscription has no active secret"
        else:
            headers = delivery_headers(
                _as_rendered(row),
                delivery_id=row.id,
                attempt=n,
                signature=sign(row.payload, secrets, timestamp=t),
            )
            try:
                code, body, wait_header = await asyncio.wait_for(
                    _post(client, url, row.payload, headers), cfg.timeout
                )
                if code == 429:
                    retry_after = _retry_after(wait_header)
            except TimeoutError:
                error = f"timeout: no whole answer within {cfg.timeout:g}s"
            except asyncio.CancelledError:
                # no answer came (the row shows none since the attempt began)
                row.error = "interrupted: the emulator stopped during this attempt"
                row.updated_at = self._clock()
                raise
            except Exception as exc:  # a transport error, or an in-process handler raised: a 5xx
                error = f"{type(exc).__name__}: {exc}"[:500]
        self.report.attempts += 1
        finished = self._clock()
        row.updated_at = finished
        row.response_status_code, row.response_body, row.error = code, body, error
        rng = delivery_rng(self._root, sub.ordinal, row.event_keys, row.replayed_from, n)
        outcome: str
        if code is not None and 200 <= code < 300:
            row.acknowledged = True
            sub.consecutive_failures = 0
            if n < cfg.max_attempts and cfg.duplicate_rate and rng.random() < cfg.duplicate_rate:
                outcome = "lost_ack"
                self.report.duplicates += 1
            else:
                outcome = "succeeded"
        elif code is not None and 400 <= code < 500 and code not in (408, 429):
            outcome = "failed"
        else:
            outcome = "retry" if n < cfg.max_attempts else "dead"
        row.next_retry_at = None
        if outcome in ("retry", "lost_ack"):
            wait = max(retry_delay(n + 1, rng, jitter=cfg.jitter), retry_after)
            due = max(started + wait / cfg.time_compression, finished)
            row.status, row.next_retry_at = "pending", due
            self.report.retries += 1
            self._seq += 1
            heapq.heappush(self._timers, (due, self._seq, row))
        else:
            row.status = outcome
            if outcome == "succeeded":
                self.report.succeeded += 1
            else:
                self.report.failed += outcome == "failed"
                self.report.dead += outcome == "dead"
                sub.consecutive_failures += 1
                if sub.consecutive_failures >= cfg.auto_disable_after and sub.status == "active":
                    sub.status, sub.updated_at = "disabled", finished
                    self.report.disabled.append(sub.id)
        self.store.record(
            AttemptRecord(
                row.id,
                n,
                sub.id,
                row.event_id,
                row.event_type,
                started,
                t,
                outcome,
                code,
                error,
                row.next_retry_at,
            )
        )


async def _post(
    client: httpx.AsyncClient, url: str, payload: bytes, headers: dict[str, str]
) -> tuple[int, str, str | None]:
    """POST a delivery; return its status, the first 500 characters of the answer and its
    Retry-After. Only the first 2 KiB of the answer are read, undecoded: a handler's huge
    or oddly encoded answer costs no memory, and a 2xx is a 2xx whatever its body."""
    async with client.stream("POST", url, content=payload, headers=headers) as response:
        raw = b""
        async for chunk in response.aiter_raw():
            raw += chunk
            if len(raw) >= 2048:
                break
        text = raw[:2048].decode("utf-8", "replace")[:500]
        return response.status_code, text, response.headers.get("Retry-After")


def _as_rendered(row: DeliveryRow) -> Rendered:
    return Rendered(row.payload, row.event_type, row.event_id, row.source, row.event_keys, 0)


def _retry_after(value: str | None) -> float:
    """A handler's ``Retry-After`` in seconds: whole seconds only (``inf``, ``1e300`` or a
    date count as none), at most the schedule's longest wait, so no answer stalls the run."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()):
        return 0.0
    return min(float(text), SCHEDULE[-1])  # thousands of digits: float() gives inf
