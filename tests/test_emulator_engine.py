"""The emulator's delivery engine: signatures, determinism, retries, duplicates, disorder."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import virtualtime
from loopback import fails_then_hangs, serve

import kirim_events
from kirim_events.emulator import (
    SCHEDULE,
    Emulator,
    EngineConfig,
    WorldConfig,
    retry_delay,
)
from kirim_events.emulator.engine import STOP_GRACE
from kirim_events.errors import ConfigError, SignatureMismatch
from kirim_events.events import parse_delivery

SECRET = "whsec_engine_test_secret"
URL = "http://receiver.test/webhooks/kirim"


class FakeClock:
    """Time that moves only when the engine sleeps."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class Receiver:
    """A tiny ASGI webhook receiver: verifies, records, answers what ``policy`` says."""

    def __init__(
        self,
        secrets: Any = SECRET,
        policy: Callable[[int, dict[str, str]], int] = lambda n, h: 200,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.secrets = secrets
        self.policy = policy
        self.clock = clock
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.verified = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((headers, body))
        now = self.clock() if self.clock else None
        kirim_events.verify(body, headers["x-kirim-signature"], self.secrets, now=now)
        self.verified += 1
        status = self.policy(len(self.requests), headers)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _live(
    n: int, *, seed: int = 5, receiver: Receiver | None = None, **engine: Any
) -> tuple[Emulator, Receiver, FakeClock]:
    clock = FakeClock()
    receiver = receiver or Receiver(clock=clock)
    if receiver.clock is None:
        receiver.clock = clock
    emu = Emulator(
        seed=seed, secrets=SECRET, clock=clock, sleep=clock.sleep, engine=EngineConfig(**engine)
    )
    emu.subscribe(URL)
    _run(emu.send(n, transport=httpx.ASGITransport(app=receiver)))
    return emu, receiver, clock


def _sending_to(url: str, *, seed: int, **engine: Any) -> Emulator:
    """An emulator on the wall clock, subscribed to ``url`` (a loopback server)."""
    emu = Emulator(seed=seed, secrets=SECRET, engine=EngineConfig(**engine))
    emu.subscribe(url)
    return emu


# ------------------------------------------------------------------ signatures


def test_every_offline_delivery_verifies_and_parses() -> None:
    emu = Emulator(seed=11, secrets=SECRET, engine=EngineConfig(duplicate_rate=0.1, disorder=0.2))
    emu.subscribe(URL)
    deliveries = list(emu.iter_deliveries(3000))
    assert len(deliveries) > 2900
    keys: set[str] = set()
    for d in deliveries:
        t = kirim_events.verify(d.body, d.headers["X-Kirim-Signature"], SECRET, now=d.sent_at)
        assert t == d.signature_t
        records = parse_delivery(d.body, d.headers)
        assert tuple(r.event_key for r in records) == d.event_keys
        keys.update(d.event_keys)
    # Every world event reached the receiver at least once, with the key the truth names.
    truth_keys = set(emu.truth.log().collect()["event_key"].to_list())
    assert keys == truth_keys
    assert len(truth_keys) == 3000


def test_a_wrong_secret_fails_verification() -> None:
    emu = Emulator(seed=2, secrets=SECRET)
    emu.subscribe(URL)
    d = next(emu.iter_deliveries(5))
    with pytest.raises(
        SignatureMismatch, match="no v1 signature matches any of the 1 configured secret"
    ):
        kirim_events.verify(d.body, d.headers["X-Kirim-Signature"], "whsec_other", tolerance=None)


def test_headers_are_exactly_kirims() -> None:
    emu = Emulator(seed=4, secrets=SECRET)
    emu.subscribe(URL)
    for d in emu.iter_deliveries(200):
        assert set(d.headers) == {
            "Content-Type",
            "User-Agent",
            "X-Kirim-Source",
            "X-Kirim-Event",
            "X-Kirim-Event-Id",
            "X-Kirim-Delivery-Id",
            "X-Kirim-Attempt",
            "X-Kirim-Signature",
        }
        assert d.headers["X-Kirim-Delivery-Id"].startswith("wbd_")
        assert d.headers["X-Kirim-Source"] in {"meta", "kirim"}
        assert d.headers["X-Kirim-Attempt"] in {"1", "2"}


def test_every_live_delivery_verifies_with_two_active_secrets() -> None:
    clock = FakeClock()
    emu = Emulator(seed=8, secrets=[SECRET, "whsec_next"], clock=clock, sleep=clock.sleep)
    emu.subscribe(URL)
    old_only = Receiver(secrets="whsec_next", clock=clock)
    _run(emu.send(200, transport=httpx.ASGITransport(app=old_only)))
    assert old_only.verified == len(old_only.requests) > 150
    header = old_only.requests[0][0]["x-kirim-signature"]
    assert header.count("v1=") == 2


def test_an_expired_secret_stops_signing() -> None:
    clock = FakeClock()
    emu = Emulator(seed=8, secrets=SECRET, clock=clock, sleep=clock.sleep)
    sub = emu.subscribe(URL)
    minted = emu.store.mint_secret(sub, now=clock(), expires_in_hours=0)
    receiver = Receiver(secrets=minted.value, clock=clock)
    _run(emu.send(30, transport=httpx.ASGITransport(app=receiver)))
    assert len(receiver.requests) > 20  # of 30 world events, some go to no subscription
    assert receiver.verified == len(receiver.requests)  # the receiver holding the new one
    for headers, body in receiver.requests:
        signature = headers["x-kirim-signature"]
        assert signature.count("v1=") == 1
        kirim_events.verify(body, signature, minted.value, tolerance=None)  # the new signs
        with pytest.raises(SignatureMismatch, match="no v1 signature matches"):
            kirim_events.verify(body, signature, SECRET, tolerance=None)  # the expired not


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_offline_deliveries() -> None:
    def run(seed: int) -> list[tuple[tuple[tuple[str, str], ...], bytes]]:
        emu = Emulator(
            seed=seed, secrets=SECRET, engine=EngineConfig(duplicate_rate=0.2, disorder=0.3)
        )
        emu.subscribe(URL, now=0)
        return [(tuple(sorted(d.headers.items())), d.body) for d in emu.iter_deliveries(1500)]

    first, second = run(21), run(21)
    assert first == second
    assert first != run(22)


def test_same_seed_gives_byte_identical_live_deliveries() -> None:
    def run() -> list[tuple[tuple[tuple[str, str], ...], bytes]]:
        _, receiver, _ = _live(
            400, seed=9, concurrency=4, duplicate_rate=0.1, disorder=0.2, disorder_delay=5
        )
        return [(tuple(sorted(h.items())), b) for h, b in receiver.requests]

    first, second = run(), run()
    assert len(first) > 380
    assert first == second


# ------------------------------------------------------------------ retries


# kirim-api.md section 3: the delay before each attempt, as Kirim documents it (the oracle:
# not the engine's own SCHEDULE, which a swap of two delays would leave agreeing with itself)
DOCUMENTED_DELAYS = (0, 10, 30, 2 * 60, 10 * 60, 3600, 6 * 3600, 24 * 3600)


def test_the_schedule_is_kirims_documented_one() -> None:
    assert SCHEDULE == DOCUMENTED_DELAYS
    assert sum(DOCUMENTED_DELAYS) == 112_360  # "31 h 12 m 40 s" since attempt 1


def test_retry_times_follow_the_schedule_with_jitter() -> None:
    emu, receiver, _ = _live(
        25, receiver=Receiver(policy=lambda n, h: 503), concurrency=3, time_compression=1.0
    )
    attempts = emu.store.attempts
    by_row: dict[str, list[Any]] = {}
    for a in attempts:
        by_row.setdefault(a.delivery_id, []).append(a)
    ratios = []
    for rows in by_row.values():
        assert [a.attempt for a in rows] == list(range(1, 9))
        assert [a.outcome for a in rows] == ["retry"] * 7 + ["dead"]
        for prev, cur in itertools.pairwise(rows):
            nominal = DOCUMENTED_DELAYS[cur.attempt - 1]
            gap = cur.sent_at - prev.sent_at
            assert 0.8 * nominal - 1e-6 <= gap <= 1.2 * nominal + 1e-6
            ratios.append(gap / nominal)
            assert cur.signature_t == int(cur.sent_at)
    total = [rows[-1].sent_at - rows[0].sent_at for rows in by_row.values()]
    assert all(0.8 * 112_360 <= t <= 1.2 * 112_360 for t in total)
    # Jitter is real: spread across the band, not pinned to the nominal delay.
    assert min(ratios) < 0.9
    assert max(ratios) > 1.1
    assert all(row.status == "dead" for row in emu.store.deliveries)
    assert len(receiver.requests) == 8 * len(by_row)


def test_time_compression_divides_the_waits() -> None:
    emu, _, _ = _live(
        5, receiver=Receiver(policy=lambda n, h: 500), concurrency=1, time_compression=100.0
    )
    rows = [a for a in emu.store.attempts if a.delivery_id == emu.store.deliveries[0].id]
    gap = rows[-1].sent_at - rows[0].sent_at
    assert 0.8 * 1123.6 <= gap <= 1.2 * 1123.6


def test_retry_delay_is_uniform_in_the_band() -> None:
    rng = random.Random(1)
    draws = [retry_delay(2, rng) for _ in range(4000)]
    assert 8.0 <= min(draws) < 8.05
    assert 11.95 < max(draws) <= 12.0
    assert abs(sum(draws) / len(draws) - 10.0) < 0.1
    with pytest.raises(ValueError, match=r"attempt must be 2\.\.8, got 1"):
        retry_delay(1, rng)
    with pytest.raises(ValueError, match=r"attempt must be 2\.\.8, got 9"):
        retry_delay(9, rng)


def test_permanent_4xx_fails_at_once_and_5xx_then_2xx_succeeds() -> None:
    def policy(n: int, headers: dict[str, str]) -> int:
        if headers["x-kirim-event"].startswith("contact."):
            return 410
        return 503 if headers["x-kirim-attempt"] == "1" else 200

    emu, _, _ = _live(120, receiver=Receiver(policy=policy))
    statuses = Counter(
        (r.event_type.startswith("contact."), r.status, r.attempt) for r in emu.store.deliveries
    )
    assert set(statuses) <= {(True, "failed", 1), (False, "succeeded", 2)}
    assert statuses[(True, "failed", 1)] > 0
    unacked = emu.unacknowledged_event_keys()
    assert unacked
    assert all(k.startswith("evt_") for k in unacked)
    contact_keys = {
        k for r in emu.store.deliveries if r.event_type.startswith("contact.") for k in r.event_keys
    }
    assert unacked == contact_keys


def test_429_waits_for_retry_after() -> None:
    class Limited(Receiver):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            self.requests.append(({}, b""))
            if len(self.requests) == 1:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 429,
                        "headers": [(b"retry-after", b"120")],
                    }
                )
            else:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    emu, _, _ = _live(1, receiver=Limited(), concurrency=1)
    first, second = emu.store.attempts[:2]
    assert first.response_status_code == 429
    assert first.outcome == "retry"
    assert second.sent_at - first.sent_at >= 120


def test_timeouts_and_connection_errors_are_retried() -> None:
    clock = FakeClock()

    class Flaky(Receiver):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            self.requests.append(({}, b""))
            if len(self.requests) == 1:
                await asyncio.sleep(1.0)  # longer than the engine's timeout (virtual time)
            if len(self.requests) == 2:
                raise httpx.ConnectError("refused")
            await receive()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    emu = Emulator(
        seed=1,
        secrets=SECRET,
        clock=clock,
        sleep=clock.sleep,
        engine=EngineConfig(concurrency=1, timeout=0.25),
    )
    emu.subscribe(URL)
    virtualtime.run(emu.send(1, transport=httpx.ASGITransport(app=Flaky())))
    outcomes = [(a.outcome, a.error is not None) for a in emu.store.attempts]
    assert outcomes == [("retry", True), ("retry", True), ("succeeded", False)]
    assert "timeout" in (emu.store.attempts[0].error or "")
    assert emu.store.deliveries[0].status == "succeeded"


def test_duplicates_repeat_the_same_delivery_as_a_new_attempt() -> None:
    emu, receiver, _ = _live(300, duplicate_rate=0.3)
    seen = Counter(h["x-kirim-delivery-id"] for h, _ in receiver.requests)
    twice = [d for d, n in seen.items() if n >= 2]
    assert 0.15 * len(seen) < len(twice) < 0.45 * len(seen)
    bodies: dict[str, set[bytes]] = {}
    for headers, body in receiver.requests:
        bodies.setdefault(headers["x-kirim-delivery-id"], set()).add(body)
    assert all(len(b) == 1 for b in bodies.values())
    assert all(r.status == "succeeded" for r in emu.store.deliveries)
    assert emu.unacknowledged_event_keys() == set()


def test_a_subscription_to_either_name_of_the_status_event_gets_both_shapes() -> None:
    # kirim-api.md §4.3: one page names the status event message.status_updated (the third
    # shape's name), every other page message.status, and the receiver stores both as
    # message.status. Names were matched exactly, so a subscription to message.status got
    # no third-shape status body, and one to message.status_updated no Meta one.
    clock = FakeClock()
    emu = Emulator(
        seed=5,
        secrets=SECRET,
        clock=clock,
        sleep=clock.sleep,
        world=WorldConfig(third_shape_rate=0.5),
    )
    everything = emu.subscribe(URL)
    by_doc = emu.subscribe(URL + "/status", events=["message.status"])
    by_alias = emu.subscribe(URL + "/status_updated", events=["message.status_updated"])
    inbound = emu.subscribe(URL + "/received", events=["message.received"])
    _run(emu.send(300, transport=httpx.ASGITransport(app=Receiver(clock=clock))))

    def sent_to(sub: Any) -> Counter[str]:
        rows = emu.store.deliveries
        return Counter(r.event_type for r in rows if r.subscription_id == sub.id)

    statuses = Counter(
        {k: n for k, n in sent_to(everything).items() if k.startswith("message.status")}
    )
    assert set(statuses) == {"message.status", "message.status_updated"}
    assert sent_to(by_doc) == sent_to(by_alias) == statuses
    assert set(sent_to(inbound)) == {"message.received"}  # no other name is an alias


@pytest.mark.parametrize("events", [["message.*"], ["Message.Status"], [], "message.status"])
def test_subscribe_refuses_event_names_as_the_api_does(events: Any) -> None:
    # POST /v1/webhook_subscriptions answers these 400; Emulator.subscribe took them, and a
    # name no event type has (a string: its letters) was sent nothing, without a word,
    # while an empty list subscribed to every type
    emu = Emulator(seed=5, secrets=SECRET)
    with pytest.raises(ConfigError, match="events must be a non-empty list of event names"):
        emu.subscribe(URL, events=events)
    assert emu.store.subscriptions == {}
    assert emu.subscribe(URL, events=["message.status", "contact.created"]).events == [
        "message.status",
        "contact.created",
    ]


@pytest.mark.parametrize(
    "events",
    [("message.status", "contact.created"), iter(["message.status", "contact.created"])],
)
def test_subscribe_takes_event_names_in_any_sequence_not_only_a_list(events: Any) -> None:
    # a tuple (or any iterable of names) was taken before the names were checked, as the
    # store makes a list of it; the check then asked for a list and refused a tuple
    emu = Emulator(seed=5, secrets=SECRET)
    sub = emu.subscribe(URL, events=events)
    assert sub.events == ["message.status", "contact.created"]
    assert sub.matches("message.status_updated")
    assert not sub.matches("message.received")


def test_disorder_delivers_statuses_out_of_order() -> None:
    _emu, receiver, _ = _live(600, seed=12, disorder=0.5, disorder_delay=30, concurrency=4)
    arrival = [
        (r.message_id, r.status, r.occurred_at)
        for h, b in receiver.requests
        for r in parse_delivery(b, h)
        if r.type == "message.status"
    ]
    inversions = sum(1 for a, b in itertools.pairwise(arrival) if b[2] < a[2])
    assert inversions > 10
    # Without disorder the engine keeps event-time order (a batched Meta body counts at
    # its latest item, as Meta sends it then).
    _, calm, _ = _live(600, seed=12, concurrency=1)
    times = [max(r.occurred_at for r in parse_delivery(b, h)) for h, b in calm.requests]
    assert times == sorted(times)


def test_auto_disable_after_consecutive_failed_deliveries() -> None:
    emu, receiver, _ = _live(
        80, receiver=Receiver(policy=lambda n, h: 400), concurrency=1, auto_disable_after=5
    )
    sub = next(iter(emu.store.subscriptions.values()))
    assert sub.status == "disabled"
    assert len(receiver.requests) == 5
    held = [r for r in emu.store.deliveries if r.attempt == 0]
    assert held
    assert all(r.status == "pending" and "disabled" in (r.error or "") for r in held)


def test_auto_disable_is_a_change_the_subscriptions_updated_at_shows() -> None:
    # it stayed at the creation time: GET /v1/webhook_subscriptions showed a subscription
    # "disabled" but never updated
    emu, _, _ = _live(
        6, receiver=Receiver(policy=lambda n, h: 500), concurrency=1, auto_disable_after=2
    )
    sub = next(iter(emu.store.subscriptions.values()))
    assert sub.status == "disabled"
    disabled_at = max(a.sent_at for a in emu.store.attempts if a.outcome == "dead")
    assert sub.updated_at == disabled_at > sub.created_at + 25 * 3600


def test_rows_held_by_a_disabled_subscription_go_out_when_it_is_active_again() -> None:
    answer = {"status": 400}
    clock = FakeClock()
    key = "kdv_live_abcdefghijklmnopqrstuvwx"
    emu = Emulator(
        seed=5, secrets=SECRET, api_keys=[key], clock=clock, sleep=clock.sleep,
        engine=EngineConfig(concurrency=1, auto_disable_after=5),
    )  # fmt: skip
    sub = emu.subscribe(URL)
    receiver = Receiver(policy=lambda n, h: answer["status"], clock=clock)
    hook = httpx.ASGITransport(app=receiver)
    _run(emu.send(40, transport=hook))
    held = [r for r in emu.store.deliveries if r.attempt == 0]
    assert held
    assert all(r.status == "pending" for r in held)

    async def reenable_and_deliver() -> int:
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=emu.app), base_url="http://k")
        async with api, httpx.AsyncClient(transport=hook) as client:
            answer["status"] = 200
            resp = await api.patch(
                f"/v1/webhook_subscriptions/{sub.id}",
                json={"status": "active"},
                headers={"Authorization": f"Bearer {key}"},
            )
            await emu.engine.run(None, client=client)
            return resp.status_code

    assert _run(reenable_and_deliver()) == 200
    assert all(r.status == "succeeded" and r.error is None for r in held)
    assert sub.status == "active"


def test_a_handler_that_raises_counts_as_a_5xx_and_is_retried() -> None:
    class Raising(Receiver):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if not self.requests:
                self.requests.append(({}, b""))
                raise RuntimeError("handler bug")
            await super().__call__(scope, receive, send)

    emu, _, _ = _live(1, receiver=Raising(), concurrency=1)
    first, second = emu.store.attempts[:2]
    assert (first.outcome, second.outcome) == ("retry", "succeeded")
    assert "RuntimeError: handler bug" in (first.error or "")
    assert emu.engine.report.errors == []


@pytest.mark.parametrize(
    ("retry_after", "waited"),
    [("inf", (8.0, 12.0)), ("1e300", (8.0, 12.0)), ("-3", (8.0, 12.0)),
     ("9" * 40, (86_400.0, 86_400.0))],
)  # fmt: skip
def test_an_odd_retry_after_never_stalls_the_run(
    retry_after: str, waited: tuple[float, float]
) -> None:
    """Only whole seconds count (else the schedule's 10 s, jittered), at most the longest
    wait of the schedule: an answer of ``inf`` once left the run waiting for ever."""

    class Limited(Receiver):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            self.requests.append(({}, b""))
            first = len(self.requests) == 1
            headers = [(b"retry-after", retry_after.encode())] if first else []
            start = {"type": "http.response.start", "status": 429 if first else 200}
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

    async def within_a_minute() -> Emulator:
        clock = FakeClock()
        emu = Emulator(
            seed=1, secrets=SECRET, clock=clock, sleep=clock.sleep,
            engine=EngineConfig(concurrency=1),
        )  # fmt: skip
        emu.subscribe(URL)
        await asyncio.wait_for(emu.send(1, transport=httpx.ASGITransport(app=Limited())), 60)
        return emu

    first, second = _run(within_a_minute()).store.attempts[:2]
    assert waited[0] <= second.sent_at - first.sent_at <= waited[1]


def test_pacing_with_held_back_deliveries_waits_instead_of_spinning() -> None:
    """With --rate, once the queue of fresh deliveries is full and the held-back ones are
    due later, the loop must wait for them: it once looped without awaiting, which on a
    fake clock never ends (and on a real one burnt a core)."""

    async def within_a_minute() -> Emulator:
        clock = FakeClock()
        emu = Emulator(
            seed=1, secrets=SECRET, clock=clock, sleep=clock.sleep,
            engine=EngineConfig(rate=100, disorder=1.0, disorder_delay=5.0, concurrency=1,
                                duplicate_rate=0),
        )  # fmt: skip
        emu.subscribe(URL)
        receiver = Receiver(clock=clock)
        await asyncio.wait_for(emu.send(6, transport=httpx.ASGITransport(app=receiver)), 60)
        return emu

    emu = _run(within_a_minute())
    assert all(r.status == "succeeded" for r in emu.store.deliveries)


def test_bad_engine_config_is_a_config_error() -> None:
    for bad, says in (
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"duplicate_rate": 1.5}, "duplicate_rate and disorder must be between 0 and 1"),
        ({"time_compression": 0}, "time_compression and timeout must be positive"),
        ({"max_attempts": 9}, r"max_attempts must be 1\.\.8"),
    ):
        with pytest.raises(ConfigError, match=says):
            EngineConfig(**bad).validate()
    with pytest.raises(ConfigError, match="failure_rate must be between 0 and 1, got 2"):
        WorldConfig(failure_rate=2).validate()


def test_sending_needs_a_subscription() -> None:
    emu = Emulator(seed=1)
    with pytest.raises(RuntimeError, match="subscription"):
        list(emu.iter_deliveries(3))


def test_a_slow_loopback_receiver_times_out_and_is_retried() -> None:
    import time

    calls: list[float] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        calls.append(time.monotonic())
        if len(calls) == 1:
            # real seconds: here the timeout over a real socket is the behaviour (on virtual
            # time, in-process: test_timeouts_and_connection_errors_are_retried)
            await asyncio.sleep(2.0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve(slow) as base:
        emu = _sending_to(f"{base}/hook", seed=1, concurrency=1, timeout=1.0,
                          time_compression=1000)  # fmt: skip
        _run(emu.send(1))
    first, second = emu.store.attempts
    assert first.outcome == "retry"
    assert "timeout" in (first.error or "")
    assert second.outcome == "succeeded"
    assert second.response_status_code == 200


def test_rate_paces_world_events_per_second() -> None:
    emu, receiver, _clock = _live(200, concurrency=4, rate=20.0)
    first = [a.sent_at for a in emu.store.attempts if a.attempt == 1]
    span = max(first) - min(first)
    # 200 events at 20/s: about 10 s of engine time, never faster.
    assert 9.0 <= span <= 10.5
    assert len(receiver.requests) == len(emu.store.deliveries)
    fast, _, _ = _live(200, concurrency=4)
    fast_first = [a.sent_at for a in fast.store.attempts if a.attempt == 1]
    assert max(fast_first) - min(fast_first) < 1.0


def test_a_disabled_subscription_is_reported_with_the_events_it_never_got() -> None:
    # After 3 permanent failures in a row the subscription is disabled: Kirim keeps no row
    # of later events. The run said nothing, and "never acknowledged" left those events out.
    emu, receiver, _ = _live(40, receiver=Receiver(policy=lambda n, h: 410), auto_disable_after=3)
    (sub,) = emu.store.subscriptions.values()
    assert sub.status == "disabled"
    report = emu.engine.report
    assert report.disabled == [sub.id]
    assert report.unsent > 0
    truth = set(emu.truth.log().collect()["event_key"])
    assert emu.unacknowledged_event_keys() == truth  # none acknowledged, sent or not
    assert emu.unacknowledged_event_keys(sub.id) == truth
    assert len(receiver.requests) < len(truth)
    # the summary counts the held rows once: they were also counted as pending
    from kirim_events.cli.emulate import _summary

    table = _summary(report, emu)
    rows = dict(zip(table.columns[0]._cells, table.columns[1]._cells, strict=True))
    held = {r.id for rs in emu.store.held.values() for r in rs}
    assert held
    assert rows["deliveries held (queued when disabled)"] == str(len(held))
    pending = [r for r in emu.store.deliveries if r.status == "pending"]
    words = ("pending", "not yet due", "not yet attempted", "held")
    shown = sum(int(v) for k, v in rows.items() if any(w in k for w in words))
    assert shown == len(pending)  # each pending row on one line of the summary


class Answers:
    """An ASGI handler answering 200 with a given body and headers (never verified)."""

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.body, self.headers = body, headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"not gzip at all", [(b"content-encoding", b"gzip")]),  # undecodable: still a 2xx
        (b"x" * 5_000_000, []),  # a huge answer: only its start is kept
    ],
)
def test_any_2xx_is_delivered_whatever_its_body(
    body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    clock = FakeClock()
    emu = Emulator(seed=3, secrets=SECRET, clock=clock, sleep=clock.sleep)
    emu.subscribe(URL)
    _run(emu.send(10, transport=httpx.ASGITransport(app=Answers(body, headers))))
    rows = emu.store.deliveries
    assert {(r.status, r.attempt, r.response_status_code) for r in rows} == {("succeeded", 1, 200)}
    assert all(len(r.response_body or "") <= 500 for r in rows)
    assert emu.unacknowledged_event_keys() == set()


def test_more_deliveries_at_once_than_httpx_pools_by_default_are_not_timed_out() -> None:
    # httpx holds 100 connections unless told otherwise: with 120 deliveries at once, the
    # last ones waited for a connection, ran out their time and were sent twice. The handler
    # holds every request until 101 are in at once, so the peak shows that the emulator had
    # more connections open than httpx's default; with only 100, the gate never opens and
    # the handler gives up after 20 s, inside the engine's timeout: a peak of 100.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    n = 120
    state = {"open": 0, "peak": 0}
    gates: list[asyncio.Event] = []  # made in the server's loop, on the first request

    async def held(request: Request) -> Response:
        await request.body()
        if not gates:
            gates.append(asyncio.Event())
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])
        if state["open"] > 100:
            gates[0].set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gates[0].wait(), 20)
        state["open"] -= 1
        return Response("ok")

    app = Starlette(routes=[Route("/hook", held, methods=["POST"])])
    with serve(app) as url:
        emu = _sending_to(f"{url}/hook", seed=4, concurrency=n, timeout=60,
                          time_compression=100_000)  # fmt: skip
        report = _run(emu.send(n))
    assert report.deliveries > 100  # 119: one world event goes to no subscription
    assert state["peak"] > 100
    assert report.retries == 0
    assert report.succeeded == report.deliveries


@pytest.mark.parametrize("stops", [1, 2])
def test_a_stop_cuts_short_an_attempt_a_hung_handler_holds(stops: int) -> None:
    # Ctrl-C waited out --timeout (30 s here) for a handler that never answered, and a
    # second Ctrl-C did not cut it short: the attempt now gets a short grace, then stops
    # (at once on a second stop), and is reported as cut short.
    # The row then shows this attempt, not the answer of the one before it.
    arrived = asyncio.Event()
    hung = fails_then_hangs(500, b"boom", arrived)  # the first attempt fails; the retry hangs

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        config = EngineConfig(timeout=30, time_compression=10_000)
        emu = Emulator(seed=2, secrets=SECRET, engine=config, clock=loop.time)
        emu.subscribe(URL)
        sending = asyncio.ensure_future(
            emu.send(1, transport=httpx.ASGITransport(app=hung), forever=True)
        )
        await arrived.wait()
        stopped = loop.time()
        for _ in range(stops):
            emu.stop()
        report = await sending
        return emu, report, loop.time() - stopped

    # on virtual time: the grace and the 30 s timeout pass in no real time, at fixed instants
    emu, report, after = virtualtime.run(main(), start=1_790_000_000.0)
    # one stop gives the attempt its grace, a second cuts it short; never the 30 s timeout
    # and a stop is seen at once (it was seen at the engine's next half-second look)
    if stops == 2:
        assert after < 0.1
    else:
        assert STOP_GRACE <= after < STOP_GRACE + 0.1
    assert report.interrupted == 1
    (row,) = emu.store.deliveries
    assert (row.status, row.error, row.attempt) == (
        "pending",
        "interrupted: the emulator stopped during this attempt",
        2,
    )
    assert (row.response_status_code, row.response_body) == (None, None)


def test_a_handler_behind_tls_with_a_local_ca_is_reached(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kirim posts only to https; a handler's local CA (mkcert) is trusted through
    SSL_CERT_FILE, as httpx trusts it by default (the emulator ignores proxy settings)."""
    import shutil
    import subprocess

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    app = Starlette(routes=[Route("/hook", lambda r: PlainTextResponse("ok"), methods=["POST"])])

    async def post(url: str) -> int:
        emu = kirim_events.emulator.Emulator(seed=1)  # reads SSL_CERT_FILE now
        async with emu.webhook_client() as client:
            return (await client.post(url, content=b"{}")).status_code

    with serve(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as base:
        url = base.replace("http://", "https://") + "/hook"
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(post(url))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert asyncio.run(post(url)) == 200
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    emu = kirim_events.emulator.Emulator(seed=1)  # an http-only run is not stopped by it
    emu.subscribe("http://127.0.0.1:9/hook")
    with pytest.raises(ConfigError, match="SSL_CERT_FILE"):
        emu.subscribe("https://127.0.0.1:9/hook")


def test_the_same_seed_duplicates_and_holds_back_the_same_deliveries() -> None:
    """Which deliveries are sent twice or held back was drawn from the delivery id, which
    carries the wall clock: two runs with one seed broke a handler in two different ways."""

    def run(clock_start: float, url: str = URL) -> tuple[set[str], list[str]]:
        clock = FakeClock(clock_start)
        config = EngineConfig(duplicate_rate=0.3, disorder=0.3, concurrency=1)
        emu = Emulator(seed=3, secrets=SECRET, clock=clock, sleep=clock.sleep, engine=config)
        emu.subscribe(url)
        receiver = Receiver(clock=clock)
        _run(emu.send(60, transport=httpx.ASGITransport(app=receiver)))
        twice = {a.event_id for a in emu.store.attempts if a.outcome == "lost_ack"}
        arrived = [headers["x-kirim-event-id"] for headers, _ in receiver.requests]
        return twice, arrived

    first, again = run(1_790_000_000.0), run(1_790_003_600.5)  # an hour and a bit apart
    assert first[0]  # some were sent twice
    assert first == again
    # nor the URL: a handler on another (free) port is broken the same way
    assert run(1_790_000_000.0, URL.replace("://", "://other.") + "/elsewhere") == first


def test_an_attempt_failing_in_the_stop_grace_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # the grace loop threw the attempts that ended in it away: a bug of ours raised there
    # went to asyncio's "exception never retrieved", not to the report's errors
    from kirim_events.emulator import engine as engine_module

    arrived, release = asyncio.Event(), asyncio.Event()
    broken = [False]
    real_rng = engine_module.delivery_rng

    def rng(*args: Any) -> Any:
        if broken[0]:
            raise RuntimeError("a bug after the answer")
        return real_rng(*args)

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        arrived.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setattr(engine_module, "delivery_rng", rng)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        emu = Emulator(seed=2, secrets=SECRET, engine=EngineConfig(timeout=30), clock=loop.time)
        emu.subscribe(URL)
        sending = asyncio.ensure_future(
            emu.send(1, transport=httpx.ASGITransport(app=slow), forever=True)
        )
        await arrived.wait()
        emu.stop()
        broken[0] = True
        release.set()  # the attempt ends within the grace, and raises
        return await sending

    report = virtualtime.run(main(), start=1_790_000_000.0)
    assert report.errors == ["RuntimeError('a bug after the answer')"]
