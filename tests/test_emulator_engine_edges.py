"""The emulator's engine: the documented retry schedule, disorder's share and scale, and
what a deleted subscription loses (cases found by mutation testing)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import httpx
import pytest
from test_emulator_engine import SECRET, URL, FakeClock, Receiver, _live, _run

from kirim_events.emulator import Emulator, EngineConfig
from kirim_events.emulator.engine import disorder_lag
from kirim_events.errors import ConfigError


def test_without_jitter_the_waits_are_kirims_documented_schedule() -> None:
    # kirim-api.md §3: 0, 10 s, 30 s, 2 min, 10 min, 1 h, 6 h, 24 h
    emu, _, _ = _live(1, receiver=Receiver(policy=lambda n, h: 503), jitter=0.0)
    rows = [a for a in emu.store.attempts if a.delivery_id == emu.store.deliveries[0].id]
    gaps = [round(b.sent_at - a.sent_at, 6) for a, b in itertools.pairwise(rows)]
    assert gaps == [10, 30, 120, 600, 3600, 21600, 86400]


def test_a_jitter_of_one_is_refused() -> None:
    # U(0, 2) times the schedule: a retry could come at once
    with pytest.raises(ConfigError, match=r"jitter must be in \[0, 1\)"):
        EngineConfig(jitter=1.0).validate()


def test_disorder_holds_back_its_share_of_deliveries_within_the_delay() -> None:
    config = EngineConfig(disorder=0.25, disorder_delay=60.0)
    lags = [disorder_lag(random.Random(i), config) for i in range(4000)]
    held = [lag for lag in lags if lag > 0]
    assert 0.2 < len(held) / len(lags) < 0.3
    assert max(held) <= 60.0
    assert disorder_lag(random.Random(1), EngineConfig()) == 0.0


def test_time_compression_divides_the_disorder_delay() -> None:
    emu, _, _ = _live(30, disorder=1.0, disorder_delay=600.0, time_compression=60.0)
    created = {row.id: row.created_at for row in emu.store.deliveries}
    lags = [a.sent_at - created[a.delivery_id] for a in emu.store.attempts if a.attempt == 1]
    assert max(lags) <= 10.0 + 1e-6  # 600 s of disorder, compressed 60 times
    assert max(lags) > 1.0


def test_a_deleted_subscription_is_not_counted_as_missing_events() -> None:
    clock = FakeClock()
    emu = Emulator(seed=3, secrets=SECRET, clock=clock, sleep=clock.sleep)
    emu.subscribe(URL)
    gone = emu.subscribe("http://other.test/hook")
    gone.status, gone.deleted = "disabled", True
    receiver: Any = Receiver(clock=clock)
    _run(emu.send(10, transport=httpx.ASGITransport(app=receiver)))
    assert len(receiver.requests) == len(emu.store.deliveries) > 0
    assert emu.engine.report.unsent == 0
    assert gone.id not in emu.store.unsent


def _outcomes(emu: Emulator) -> set[tuple[str, ...]]:
    by_row: dict[str, list[str]] = {}
    for a in emu.store.attempts:
        by_row.setdefault(a.delivery_id, []).append(a.outcome)
    return {tuple(outcomes) for outcomes in by_row.values()}


@pytest.mark.parametrize("status", [300, 308, 408])
def test_a_redirect_or_a_request_timeout_is_retried(status: int) -> None:
    # kirim-api.md §3: 3xx and 408 are retried; other 4xx are permanent
    def policy(n: int, headers: dict[str, str]) -> int:
        return status if headers["x-kirim-attempt"] == "1" else 200

    emu, _, _ = _live(10, receiver=Receiver(policy=policy))
    assert _outcomes(emu) == {("retry", "succeeded")}


def test_a_lost_acknowledgement_is_never_pretended_on_the_last_attempt() -> None:
    emu, _, _ = _live(10, duplicate_rate=1.0, max_attempts=3)
    assert _outcomes(emu) == {("lost_ack", "lost_ack", "succeeded")}
    assert {row.status for row in emu.store.deliveries} == {"succeeded"}


def _slow_then_ok(seconds: float) -> Receiver:
    """A receiver whose first answer (503) takes ``seconds`` of the engine's clock."""
    receiver = Receiver()

    def policy(n: int, headers: dict[str, str]) -> int:
        if headers["x-kirim-attempt"] != "1":
            return 200
        receiver.clock.t += seconds  # type: ignore[union-attr]
        return 503

    receiver.policy = policy
    return receiver


def test_a_retry_waits_from_the_start_of_the_attempt_before_it() -> None:
    emu, _, _ = _live(1, receiver=_slow_then_ok(5.0), jitter=0.0)
    first, second = emu.store.attempts
    assert second.sent_at - first.sent_at == pytest.approx(10.0)  # not 5 + 10


def test_a_retry_is_never_due_before_the_attempt_before_it_ended() -> None:
    # 10 s compressed 1000 times is 10 ms; the attempt took 100 s
    emu, _, _ = _live(3, receiver=_slow_then_ok(100.0), time_compression=1000.0)
    firsts = [a for a in emu.store.attempts if a.attempt == 1]
    assert firsts
    for a in firsts:
        assert a.next_retry_at is not None
        assert a.next_retry_at >= a.sent_at + 100.0


def test_a_row_shows_the_attempt_in_flight_and_the_url_it_went_to() -> None:
    # The history read during attempt 2 said attempt 2 was answered 503 (attempt 1's
    # answer) with a retry due in the past; and after a PATCH of the URL during attempt 2
    # the row named the new URL, though attempt 2 went to the old one
    clock = FakeClock()
    emu = Emulator(seed=5, secrets=SECRET, clock=clock, sleep=clock.sleep)
    sub = emu.subscribe(URL)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def receiver(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        (row,) = emu.store.deliveries
        headers = dict(scope["headers"])
        seen.append((f"{scope['server'][0]}{scope['path']}", row.to_json()))
        status = 503
        if headers[b"x-kirim-attempt"] == b"2":
            sub.url, status = "http://moved.test/hook", 200  # as a PATCH would, meanwhile
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    _run(emu.send(1, transport=httpx.ASGITransport(app=receiver)))
    (row,) = emu.store.deliveries
    assert len(seen) == 2
    (_, first), (where, during) = seen
    assert first["attempt"] == 1
    assert during["attempt"] == 2
    assert (during["response_status_code"], during["response_body"]) == (None, None)
    assert (during["next_retry_at"], during["error"], during["status"]) == (None, None, "pending")
    assert where == "receiver.test/webhooks/kirim"
    assert row.url == URL  # where attempt 2 went
    assert (row.attempt, row.status, row.response_status_code) == (2, "succeeded", 200)


def test_a_success_between_failures_keeps_a_subscription_active() -> None:
    # auto-disable counts failures in a row: each success starts the count again
    emu, _, _ = _live(
        20,
        receiver=Receiver(policy=lambda n, h: 410 if n % 2 else 200),
        concurrency=1,
        auto_disable_after=2,
    )
    (sub,) = emu.store.subscriptions.values()
    assert (sub.status, emu.engine.report.disabled) == ("active", [])
    assert emu.engine.report.failed >= 2


@pytest.mark.parametrize("value", ["²", "١٢٠", "12³"])
def test_a_retry_after_of_other_digits_counts_as_none(value: str) -> None:
    # str.isdigit() holds for them; float() refuses "²" and reads "١٢٠" as 120
    from kirim_events.emulator.engine import _retry_after

    assert _retry_after(value) == 0.0
    assert _retry_after("120") == 120.0


def test_a_503_with_retry_after_keeps_to_the_schedule() -> None:
    # only a 429's Retry-After stretches the wait (kirim-api.md §3)
    class Busy(Receiver):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            self.requests.append(({}, b""))
            first = len(self.requests) == 1
            headers = [(b"retry-after", b"3000")] if first else []
            start = {"type": "http.response.start", "status": 503 if first else 200}
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

    emu, _, _ = _live(1, receiver=Busy(), jitter=0.0)
    first, second = emu.store.attempts
    assert second.sent_at - first.sent_at == pytest.approx(10.0)


def test_a_subscription_without_an_active_secret_sends_nothing() -> None:
    clock = FakeClock()
    emu = Emulator(seed=3, secrets=SECRET, clock=clock, sleep=clock.sleep,
                   engine=EngineConfig(max_attempts=2))  # fmt: skip
    sub = emu.subscribe(URL)
    sub.secrets.clear()
    receiver: Any = Receiver(clock=clock)
    _run(emu.send(5, transport=httpx.ASGITransport(app=receiver)))
    assert receiver.requests == []
    assert emu.store.attempts
    assert {a.error for a in emu.store.attempts} == {"subscription has no active secret"}
    assert {row.status for row in emu.store.deliveries} == {"dead"}


def test_the_report_counts_each_retry_scheduled() -> None:
    emu, _, _ = _live(1, receiver=Receiver(policy=lambda n, h: 503), max_attempts=3)
    report = emu.engine.report
    assert (report.attempts, report.retries, report.dead) == (3, 2, 1)


def test_only_the_start_of_a_huge_answer_is_read() -> None:
    from collections.abc import AsyncIterator

    from kirim_events.emulator.engine import _post

    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:  # 10 MiB, a KiB at a time
        nonlocal pulled
        for _ in range(10_240):
            pulled += 1
            yield b"x" * 1024

    async def main() -> tuple[int, str, str | None]:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=chunks()))
        async with httpx.AsyncClient(transport=transport) as client:
            return await _post(client, URL, b"{}", {})

    status, text, _ = _run(main())
    assert (status, len(text)) == (200, 500)
    assert pulled <= 3  # 2 KiB, not the whole answer
