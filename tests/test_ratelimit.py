"""RateLimiter on a fake clock: pacing without a derived rate, blocks, tiny waits, windows.

(The client's own pacing tests, against a simulated token bucket, are in test_client.py.)
"""

from __future__ import annotations

import pytest
from test_client import FakeTime, _bucket_headers, _taken_before_a_wait

from kirim_events.ratelimit import RateLimiter, retry_after


def _limiter() -> tuple[RateLimiter, FakeTime]:
    t = FakeTime()
    return RateLimiter(clock=t.clock, sleep=t.sleep), t


def test_a_small_deficit_derives_no_rate_and_waits_for_the_reset() -> None:
    # 2 of 100 spent: too few for a rate unspoilt by Reset's rounding, so none is derived
    # (2 tokens in 10 s would have been one every 5 s); the bucket is full again at Reset.
    limiter, t = _limiter()
    limiter.acquire("read")
    limiter.release("read", _bucket_headers(t, limit=100, remaining=98, full_in=10))
    assert _taken_before_a_wait(limiter, t) == 97  # 98 tokens, 1 kept in reserve
    assert t.sleeps == [pytest.approx(10.0)]  # until Reset, then the waiting one went


def test_a_reset_that_is_now_derives_no_rate_and_divides_by_nothing() -> None:
    limiter, t = _limiter()
    limiter.acquire("read")
    limiter.release("read", _bucket_headers(t, limit=60, remaining=0, full_in=0))
    limiter.acquire("read")  # full at Reset, which is now
    assert t.sleeps == []


def test_a_shorter_block_does_not_cut_a_longer_one_short() -> None:
    limiter, t = _limiter()
    limiter.block("read", 10)
    limiter.block("read", 1)  # another thread's 429 with a shorter Retry-After
    limiter.acquire("read")
    assert sum(t.sleeps) == pytest.approx(10)


def test_no_tokens_come_back_during_a_block() -> None:
    limiter, t = _limiter()
    limiter.acquire("read")
    # a refill rate of 1 token a second (55 spent, full in 55 s)
    limiter.release("read", _bucket_headers(t, limit=60, remaining=5, full_in=55))
    limiter.block("read", 30)
    limiter.acquire("read")
    # the bucket is empty when the block ends: 2 tokens (1 + the reserve) take 2 s more
    assert t.sleeps == [pytest.approx(30), pytest.approx(2)]


def test_a_tiny_wait_sleeps_a_millisecond_at_least() -> None:
    # 99,999 spent in a second: a token comes back every 10 us, a wait a float unix clock
    # may not even move by
    limiter, t = _limiter()
    limiter.acquire("read")
    limiter.release("read", _bucket_headers(t, limit=100_000, remaining=1, full_in=1))
    limiter.acquire("read")
    assert t.sleeps == [0.001]


def test_the_probing_window_is_dropped_once_it_is_wide() -> None:
    limiter, t = _limiter()

    def may_go() -> int:
        n = 0
        while n < 200 and limiter._reserve_or_wait("read") == 0:
            n += 1
        return n

    limiter.block("read", 1.0)  # a 429 without rate-limit headers
    t.now += 1.0
    widths = []
    for _ in range(8):
        widths.append(may_go())
        for _ in range(widths[-1]):
            limiter.release("read", {})
    assert widths == [1, 2, 4, 8, 16, 32, 64, 200]  # past 64 wide: no window at all


def test_a_negative_retry_after_is_no_wait() -> None:
    assert retry_after({"Retry-After": "-5"}, 1_800_000_000.0) == 0.0
