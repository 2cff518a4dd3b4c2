"""KirimClient against httpx.MockTransport: envelopes, retries, Retry-After, pacing, parsing."""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from kirim_events.client import Delivery, KirimClient, RateLimiter, format_time
from kirim_events.config import Secret
from kirim_events.errors import (
    ApiError,
    AuthenticationError,
    ConfigError,
    Interrupted,
    InvalidResponse,
    NotFoundError,
    PermanentApiError,
    RateLimited,
    RateLimitTooLong,
    RetryableApiError,
)
from kirim_events.ratelimit import retry_after

KEY = "kdv_live_AAAAAAAAAAAAAAAAAAAAAAAA"


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_client(handler: Callable[[httpx.Request], httpx.Response], t: FakeTime) -> KirimClient:
    return KirimClient(
        "https://api.test",
        Secret(KEY),
        transport=httpx.MockTransport(handler),
        sleep=t.sleep,
        clock=t.clock,
        rng=random.Random(7),
    )


def error(status: int, type_: str, code: str, **headers: str) -> httpx.Response:
    body = {"error": {"type": type_, "code": code, "message": f"{code}!", "request_id": "req_1"}}
    return httpx.Response(status, json=body, headers={"X-Request-Id": "req_1", **headers})


def page(items: list[dict[str, Any]], cursor: str | None) -> httpx.Response:
    return httpx.Response(
        200,
        json={"data": items, "has_more": cursor is not None, "next_cursor": cursor},
    )


def test_a_transport_error_that_quotes_the_key_does_not_show_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # h11 names an illegal header with its value; any transport error text could.
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value {request.headers['Authorization']!r}")

    client = make_client(handler, FakeTime())
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RetryableApiError, match="LocalProtocolError: Illegal header value") as info:
        client.list_deliveries()
    assert "Illegal header value" in str(info.value)
    for text in (str(info.value), repr(info.value), caplog.text):
        assert KEY not in text


@pytest.mark.parametrize("status", [401, 403, 429, 500, 302])
def test_an_error_answer_that_echoes_the_key_does_not_show_it(
    status: int, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # A gateway or a debugging proxy in front of the API may quote the Authorization header
    # it refused, in the error's message, code, request id or Location; the error is
    # printed by the CLI (and its retry note), and logged.
    from kirim_events.cli.backfill import _RetryNote

    def handler(request: httpx.Request) -> httpx.Response:
        said = f"refused {request.headers['Authorization']}"
        body = {"error": {"type": said, "code": said, "message": said, "request_id": said}}
        headers = {"Location": f"https://login.example/{KEY}/again?k={KEY}"}
        return httpx.Response(status, json=body, headers=headers)

    t = FakeTime()
    client = KirimClient(
        "https://api.test", Secret(KEY), transport=httpx.MockTransport(handler),
        sleep=t.sleep, clock=t.clock, rng=random.Random(7), on_retry=_RetryNote(), max_attempts=2,
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ApiError) as info:
        client.request("GET", "/v1/me")
    err = info.value
    assert err.status_code == status
    assert "refused Bearer" in str(err) or "Found" in str(err)  # the server's words are kept
    printed = capsys.readouterr().err
    for text in (str(err), repr(err), err.code or "", err.request_id or "", caplog.text, printed):
        assert KEY not in text


@pytest.mark.parametrize(
    "base", ["https://api.test", "https://api.test/", "https://api.test/v1", "https://api.test/v1/"]
)
def test_a_base_url_ending_in_v1_is_taken_without_it(base: str) -> None:
    """Every path starts with /v1; a KIRIM_API_URL copied with it must not give /v1/v1."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return page([], None)

    client = KirimClient(base, Secret(KEY), transport=httpx.MockTransport(handler))
    client.list_deliveries()
    assert seen == ["/v1/webhook_deliveries"]


def test_bearer_auth_and_key_hidden(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTime()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return error(401, "authentication_error", "invalid_api_key")

    client = make_client(handler, t)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError, match="invalid_api_key! status=401") as info:
        client.list_deliveries()
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"
    err = info.value
    assert (err.status_code, err.type, err.code, err.request_id) == (
        401,
        "authentication_error",
        "invalid_api_key",
        "req_1",
    )
    assert len(seen) == 1  # permanent: no retry
    for text in (str(err), repr(err), repr(client), caplog.text):
        assert KEY not in text


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, PermanentApiError), (403, AuthenticationError), (404, NotFoundError)],
)
def test_permanent_errors_raise_at_once(status: int, cls: type[ApiError]) -> None:
    t = FakeTime()
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return error(status, "invalid_request_error", "resource_not_found")

    with pytest.raises(cls, match=f"resource_not_found! status={status}") as info:
        make_client(handler, t).get_delivery("wbd_X")
    assert not info.value.retryable
    assert len(calls) == 1


def test_a_404_names_the_base_url_and_asks_about_it_when_not_kirims() -> None:
    # KIRIM_API_URL pointed at another server: "GET /v1/webhook_deliveries: Not Found" named
    # neither the server nor the likely mistake.
    t = FakeTime()

    def foreign(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="<html>nothing here</html>")

    with pytest.raises(
        NotFoundError, match="no Kirim error in the answer: is KIRIM_API_URL Kirim's API"
    ) as info:
        make_client(foreign, t).get_delivery("wbd_X")
    text = str(info.value)
    assert "/v1/webhook_deliveries/wbd_X at http" in text
    assert "is KIRIM_API_URL Kirim's API?" in text

    def kirim(request: httpx.Request) -> httpx.Response:  # Kirim's own "no such id"
        return error(404, "invalid_request_error", "resource_not_found")

    with pytest.raises(
        NotFoundError, match="resource_not_found! status=404 code=resource_not_found"
    ) as info:
        make_client(kirim, t).get_delivery("wbd_X")
    assert "KIRIM_API_URL" not in str(info.value)


def test_the_cli_says_once_that_it_retries(capsys: pytest.CaptureFixture[str]) -> None:
    # A closed port or a wrong KIRIM_API_URL: backfill sat silent for 20 s, reconcile for
    # 44 s, retrying, before the error.
    from kirim_events.cli.backfill import _RetryNote

    t = FakeTime()
    answers: list[Exception] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            raise answers.pop(0)
        return httpx.Response(200, json={"data": {"id": "wbd_X", "status": "succeeded"}})

    def cli_client() -> KirimClient:  # as the CLI makes one per command
        return KirimClient(
            "https://api.test", Secret(KEY), transport=httpx.MockTransport(handler),
            sleep=t.sleep, clock=t.clock, rng=random.Random(7), on_retry=_RetryNote(),
        )  # fmt: skip

    answers += [httpx.ConnectError("refused"), httpx.ConnectError("refused")]
    with cli_client() as client:
        assert client.get_delivery("wbd_X").status == "succeeded"
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("note:") == 1
    assert "retrying in" in err
    assert "at https://api.test: ConnectError: refused" in err
    assert KEY not in err
    answers.append(httpx.ConnectError("refused"))  # the library alone says nothing
    make_client(handler, t).get_delivery("wbd_X")
    assert "note:" not in capsys.readouterr().err
    answers.append(httpx.ConnectError("refused"))  # the next command says it again
    with cli_client() as client:
        client.get_delivery("wbd_X")
    assert capsys.readouterr().err.count("note:") == 1


def test_retries_5xx_and_408_then_succeeds_with_growing_jittered_backoff() -> None:
    t = FakeTime()
    answers = [
        error(500, "api_error", "internal_error"),
        error(408, "api_error", "timeout"),
        httpx.Response(503, text="<html>bad gateway</html>"),
        page([{"id": "wbd_1", "status": "succeeded"}], None),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    client = make_client(handler, t)
    client._rng = Edge("high")  # every draw at the top of its range: the ceilings
    result = client.list_deliveries()
    assert [d.id for d in result.deliveries] == ["wbd_1"]
    assert client.retries == 3
    # full jitter under a doubling ceiling: 0.5, 1, 2
    assert t.sleeps == [0.5, 1.0, 2.0]


class Edge(random.Random):
    """A random source whose ``uniform(a, b)`` always gives ``b`` (high) or ``a`` (low)."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return b if self.end == "high" else a


@pytest.mark.parametrize(("end", "expected"), [("high", [0.5, 1.0, 1.5, 1.5]), ("low", [0.0] * 4)])
def test_backoff_doubles_up_to_its_cap_and_jitter_spans_down_to_zero(
    end: str, expected: list[float]
) -> None:
    t = FakeTime()
    client = make_client(lambda request: httpx.Response(503), t)
    client._rng = Edge(end)
    client.max_attempts, client.max_backoff = 5, 1.5
    with pytest.raises(RetryableApiError, match="Service Unavailable status=503"):
        client.list_deliveries()
    assert t.sleeps == expected


def test_transport_errors_are_retried_then_raised() -> None:
    t = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = make_client(handler, t)
    client.max_attempts = 3
    with pytest.raises(RetryableApiError, match="ConnectError") as raised:
        client.list_deliveries()
    assert client.requests_sent == 3
    assert f"at {client.base_url}: ConnectError" in str(raised.value)


def test_429_honours_retry_after_seconds() -> None:
    t = FakeTime()
    answers = [
        error(429, "rate_limit_error", "rate_limit_exceeded", **{"Retry-After": "7"}),
        page([], None),
    ]
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(t.now)
        return answers.pop(0)

    make_client(handler, t).list_deliveries()
    assert sent_at[1] - sent_at[0] >= 7.0
    assert sent_at[1] - sent_at[0] <= 7.0 + 0.1 * 0.5 + 1e-9


def test_429_gives_up_as_rate_limited_with_retry_after() -> None:
    t = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        return error(429, "rate_limit_error", "rate_limit_exceeded", **{"Retry-After": "2"})

    client = make_client(handler, t)
    client.max_attempts = 2
    with pytest.raises(RateLimited, match="rate_limit_exceeded! status=429") as info:
        client.list_deliveries()
    assert info.value.retry_after == 2.0
    assert info.value.code == "rate_limit_exceeded"


def test_a_429_without_headers_waits_seconds_growing_each_time() -> None:
    # A proxy's bare 429 was retried like a 5xx: the first retry could come at once.
    t = FakeTime()
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(t.now)
        return httpx.Response(429, text="slow down")

    client = make_client(handler, t)
    client.max_attempts = 5
    with pytest.raises(RateLimited, match="Too Many Requests status=429"):
        client.list_deliveries()
    waits = [b - a for a, b in itertools.pairwise(sent_at)]
    assert [round(w) for w in waits[:4]] == [2, 4, 8, 16]
    assert all(30 <= w <= 33 for w in waits[4:])  # then max_backoff, with a little jitter
    # 429s have 4 x max_attempts: a busy shared limit slows a run rather than ends it
    assert len(sent_at) == 4 * 5


def test_retry_after_as_a_date_counts_from_the_answers_own_date() -> None:
    # Our clock runs 45 s ahead of Kirim's: measured from it, "in 30 s" was already past.
    now = 1_800_000_000.0
    kirim_now = now - 45
    headers = {
        "Date": formatdate(kirim_now, usegmt=True),
        "Retry-After": formatdate(kirim_now + 30, usegmt=True),
    }
    assert retry_after(headers, now) == 30.0
    assert retry_after({"Retry-After": headers["Retry-After"]}, now) == 0.0  # no Date: ours
    assert retry_after({"Retry-After": "12"}, now) == 12.0


@pytest.mark.parametrize(
    "headers",
    [
        {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "nan", "X-RateLimit-Reset": "1"},
        {"X-RateLimit-Limit": "1e400", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "inf"},
        {"X-RateLimit-Limit": "inf", "X-RateLimit-Remaining": "inf", "X-RateLimit-Reset": "nan"},
    ],
)
def test_rate_limit_headers_that_are_not_numbers_are_ignored(headers: dict[str, str]) -> None:
    # nan / inf gave ValueError or OverflowError tracebacks out of the limiter
    t = FakeTime()
    answers = [page([], "c1"), page([], None)]

    def handler(request: httpx.Request) -> httpx.Response:
        response = answers.pop(0)
        response.headers.update(headers)
        return response

    client = make_client(handler, t)
    assert client.list_deliveries().next_cursor == "c1"
    assert client.list_deliveries(cursor="c1").next_cursor is None


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_retry_after_that_is_no_number_counts_as_absent(value: str) -> None:
    # inf blocked the limiter for ever (and Event.wait raised OverflowError)
    assert retry_after({"Retry-After": value}, 1_800_000_000.0) is None
    t = FakeTime()
    answers = [error(429, "rate_limit_error", "x", **{"Retry-After": value}), page([], None)]
    make_client(lambda request: answers.pop(0), t).list_deliveries()
    assert 2.0 <= t.now - 1_800_000_000.0 < 3.0  # the wait of a 429 that says nothing


def test_a_429_asking_for_more_than_an_hour_stops_with_how_long() -> None:
    # Kirim's limits are per minute; a day's Retry-After was waited out silently
    t = FakeTime()
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return error(429, "rate_limit_error", "rate_limit_exceeded", **{"Retry-After": "86400"})

    client = make_client(handler, t)
    with pytest.raises(RateLimitTooLong, match="wait 86400 s, more than 3600 s") as info:
        client.list_deliveries()
    assert isinstance(info.value, PermanentApiError)
    assert (len(sent), t.sleeps, info.value.status_code) == (1, [], 429)
    # until the wait is over, reads are refused here, unsent; writes are another class
    t.now += 86_000
    with pytest.raises(RateLimitTooLong, match=r"^GET /v1/webhook_deliveries at .*wait 86400 s"):
        client.list_deliveries()
    assert len(sent) == 1
    with pytest.raises(
        RateLimitTooLong, match=r"^POST /v1/webhook_deliveries/wbd_1/replay at .*wait 86400 s"
    ):
        client.replay("wbd_1")  # the handler refuses this one too: sent, then refused
    assert len(sent) == 2
    t.now += 401
    with pytest.raises(RateLimitTooLong, match=r"^GET /v1/webhook_deliveries at .*wait 86400 s"):
        client.list_deliveries()
    assert len(sent) == 3  # the wait was over: asked again
    ok = [error(429, "rate_limit_error", "x", **{"Retry-After": "3600"}), page([], None)]
    make_client(lambda request: ok.pop(0), t).list_deliveries()  # an hour is still waited
    assert t.sleeps[:1] == [pytest.approx(3600, abs=1)]


def test_interrupt_cuts_a_long_retry_after_short() -> None:
    # Ctrl-C during a backfill sat out Retry-After: 600 in a worker thread.
    asked = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        asked.set()
        return error(429, "rate_limit_error", "rate_limit_exceeded", **{"Retry-After": "600"})

    client = KirimClient("https://api.test", Secret(KEY), transport=httpx.MockTransport(handler))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.list_deliveries()
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    assert asked.wait(10)  # answered "wait 600 s": the worker waits, or is about to
    client.interrupt()
    worker.join(timeout=60)  # else it sits out the 600 s
    assert not worker.is_alive()
    assert [type(e) for e in outcome] == [Interrupted]


class BucketServer:
    """A token bucket like Kirim's: `limit` per `window` seconds, headers on every answer."""

    def __init__(self, t: FakeTime, limit: int, window: float) -> None:
        self.t, self.limit, self.rate = t, limit, limit / window
        self.tokens = float(limit)
        self.updated = t.now
        self.served = 0
        self.rejected = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.t.now
        self.tokens = min(self.limit, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            self.rejected += 1
            return error(429, "rate_limit_error", "rate_limit_exceeded", **{"Retry-After": "1"})
        self.tokens -= 1
        self.served += 1
        reset = now + (self.limit - self.tokens) / self.rate
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(int(self.tokens)),
            "X-RateLimit-Reset": str(int(reset + 0.999)),
        }
        return httpx.Response(200, json={"data": [], "has_more": False}, headers=headers)


def test_pacing_from_headers_never_runs_past_the_limit_and_keeps_up() -> None:
    t = FakeTime()
    server = BucketServer(t, limit=60, window=60.0)  # 1 request per second, burst 60
    client = make_client(server, t)
    start = t.now
    for _ in range(300):
        client.list_deliveries()
    elapsed = t.now - start
    assert server.rejected == 0  # never ran past the limit
    # 300 requests with a burst of 60 at 1/s take at least 240 s; pacing wastes little.
    assert elapsed >= 240 - 2
    steady = (300 - 60) / elapsed
    assert steady >= 0.9  # >= 90 % of the limit


@pytest.mark.parametrize(
    ("reset", "rejected"),
    [
        (lambda unix, now: unix * 1000, 0),  # milliseconds: was a wait of thousands of years
        (lambda unix, now: unix - now, 0),  # seconds from now (IETF RateLimit-Reset)
        (lambda unix, now: unix + 86_400, None),  # a day ahead: no per-minute bucket's
    ],
)
def test_a_reset_that_is_no_unix_seconds_never_stalls_the_pacing(
    reset: Callable[[int, float], float], rejected: int | None
) -> None:
    # kirim-api.md §7.2 says unix seconds; a Reset in milliseconds made the limiter derive a
    # refill rate of a token every few thousand years, and the backfill slept without a word.
    t = FakeTime()
    server = BucketServer(t, limit=60, window=60.0)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = server(request)
        if "X-RateLimit-Reset" in answer.headers:  # not on its 429s
            unix = int(answer.headers["X-RateLimit-Reset"])
            answer.headers["X-RateLimit-Reset"] = str(reset(unix, t.now))
        return answer

    client = make_client(handler, t)
    start = t.now
    for _ in range(150):
        client.list_deliveries()
    assert max(t.sleeps) <= 60
    assert t.now - start <= 2 * (150 - 60)  # 1 a second past the burst, as with unix seconds
    if rejected is not None:
        assert server.rejected == rejected  # read as the time it means: paced as before


def _taken_before_a_wait(limiter: RateLimiter, t: FakeTime, most: int = 10_000) -> int:
    """How many requests start (and stay in flight: parallel slices) before one must wait."""
    before = len(t.sleeps)
    n = 0
    while n < most:
        limiter.acquire("read")
        if len(t.sleeps) > before:
            return n
        n += 1
    return n


def _bucket_headers(t: FakeTime, *, limit: int, remaining: int, full_in: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(t.now) + full_in),
    }


def test_parallel_requests_share_the_tokens_an_answer_reports() -> None:
    """Requests in flight at once (backfill's slices) each take a token of the local
    estimate, keep one in reserve, wait as long as the derived refill rate says, and never
    count more than a full bucket however long the client was idle. A sequential client is
    re-synchronised by every answer and shows none of this."""
    t = FakeTime()
    limiter = RateLimiter(clock=t.clock, sleep=t.sleep)
    limiter.acquire("read")  # nothing known yet: a probe
    # 55 of 60 spent, full again in 55 s: a refill rate of 1 token a second
    limiter.release("read", _bucket_headers(t, limit=60, remaining=5, full_in=55))
    assert _taken_before_a_wait(limiter, t) == 4  # 5 tokens, 1 kept in reserve
    assert t.sleeps == [pytest.approx(1.0)]  # the one token short comes back in a second
    t.now += 1_000  # idle far longer than the bucket takes to fill
    assert _taken_before_a_wait(limiter, t) == 59  # a full bucket of 60, less the reserve


def test_requests_still_in_flight_are_not_counted_as_spent_by_the_server() -> None:
    t = FakeTime()
    limiter = RateLimiter(clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        limiter.acquire("read")  # three probes in flight
    # the first answer says 5 remain; the two others may not be counted in it yet
    limiter.release("read", _bucket_headers(t, limit=60, remaining=5, full_in=55))
    assert _taken_before_a_wait(limiter, t) == 2  # 5 - 2 in flight - 1 reserve


def test_limiter_blocks_all_threads_after_429() -> None:
    t = FakeTime()
    limiter = RateLimiter(clock=t.clock, sleep=t.sleep)
    limiter.block("read", 5)
    limiter.acquire("read")
    assert sum(t.sleeps) >= 5
    limiter.acquire("write")  # other class unaffected
    assert sum(t.sleeps) == pytest.approx(5)


def test_429s_do_not_use_up_the_attempts_of_other_errors() -> None:
    t = FakeTime()
    answers = iter([429] * 10 + [503] * 3 + [200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 200:
            return page([{"id": "wbd_1"}], None)
        return httpx.Response(status, headers={"Retry-After": "1"}, text="busy")

    client = make_client(handler, t)
    client.max_attempts = 4  # 10 x 429 and 3 x 503: within 16 429s and 4 tries
    assert [d.id for d in client.list_deliveries().deliveries] == ["wbd_1"]


def test_after_a_bare_429_parallel_requests_probe_one_then_more() -> None:
    """Without X-RateLimit headers, every thread retried together when the block ended and
    met the same empty bucket. Now one probes, then two, four ... as rounds of answers come
    back (a 429 starts over at one); rate-limit headers end the window."""
    from kirim_events.ratelimit import RateLimiter

    t = FakeTime()
    limiter = RateLimiter(clock=t.clock, sleep=t.sleep)

    def may_go() -> int:
        """How many requests may go now, up to 200 (each one taken stays in flight)."""
        n = 0
        while n < 200 and limiter._reserve_or_wait("read") == 0:
            n += 1
        return n

    assert may_go() > 100  # nothing known: no window
    for _ in range(limiter._bucket("read").in_flight):
        limiter.release("read", None)
    limiter.block("read", 2.0)
    t.now += 2.0
    assert may_go() == 1
    for width in (2, 4, 8):
        for _ in range(limiter._bucket("read").in_flight):
            limiter.release("read", {})  # answers without rate-limit headers
        assert may_go() == width
    limiter.block("read", 1.0)  # another 429, 8 requests still out: one again
    t.now += 1.0
    for _ in range(8):  # their answers were asked before the 429: they do not widen it
        limiter.release("read", {})
    assert may_go() == 1
    limiter.block("read", 1.0)  # 1 out when the 429 came; it fails with no answer at all
    t.now += 1.0
    limiter.release("read", None)
    assert may_go() == 1
    limiter.release("read", {})  # the next answer widens the window: nothing stale is due
    assert may_go() == 2
    limiter.release("read", {}, refused=True)  # a 429 (block follows): it widens nothing
    assert may_go() == 1  # its place only; a plain answer would have let 2 go
    limiter.release("read", {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "90"})
    assert may_go() > 50  # the limit is known: paced by tokens, no window


def test_iter_pages_sends_cursor_verbatim_with_same_filters() -> None:
    t = FakeTime()
    seen: list[httpx.QueryParams] = []
    cursors = ["c1/+==", "c2"]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params)
        n = len(seen)
        nxt = cursors[n - 1] if n <= len(cursors) else None
        return page([{"id": f"wbd_{n}"}], nxt)

    before = datetime(2026, 5, 2, tzinfo=UTC)
    pages = list(
        make_client(handler, t).iter_pages(
            status="dead", created_before=before, created_after=None, limit=50
        )
    )
    assert [p.deliveries[0].id for p, _ in pages] == ["wbd_1", "wbd_2", "wbd_3"]
    assert [c for _, c in pages] == [None, "c1/+==", "c2"]
    for params in seen:
        assert params["status"] == "dead"
        assert params["created_before"] == "2026-05-02T00:00:00Z"
        assert params["limit"] == "50"
        assert "created_after" not in params
    assert seen[1]["cursor"] == "c1/+=="


@pytest.mark.parametrize("loop", [["c1", "c1"], ["c1", "c2", "c3", "c1"], ["c1", "c2", "c2"]])
def test_a_walk_whose_cursors_loop_stops_with_a_clear_error(loop: list[str]) -> None:
    t = FakeTime()
    calls: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.params.get("cursor"))
        return page([{"id": f"wbd_{len(calls)}"}], loop[min(len(calls), len(loop)) - 1])

    with pytest.raises(InvalidResponse, match=r"pages loop: page \d+ of this walk points back"):
        list(make_client(handler, t).iter_pages())
    assert len(calls) == len(loop)  # not one request more than it took to see it


def test_a_resumed_walk_handed_its_own_cursor_back_stops() -> None:
    t = FakeTime()
    client = make_client(lambda r: page([{"id": "wbd_1"}], "c7"), t)
    with pytest.raises(InvalidResponse, match="pages loop"):
        list(client.iter_pages(cursor="c7"))


def test_endless_empty_pages_that_say_there_is_more_stop() -> None:
    t = FakeTime()
    calls = itertools.count(1)
    client = make_client(lambda r: page([], f"c{next(calls)}"), t)
    with pytest.raises(InvalidResponse, match="100 empty pages in a row"):
        list(client.iter_pages())
    # a few empty pages between full ones are fine
    n = itertools.count(1)

    def some_empty(request: httpx.Request) -> httpx.Response:
        i = next(n)
        return page([] if i % 3 else [{"id": f"wbd_{i}"}], f"c{i}" if i < 300 else None)

    pages = list(make_client(some_empty, t).iter_pages())
    assert len(pages) == 300


def test_a_page_without_has_more_goes_on_while_it_gives_a_cursor() -> None:
    # kirim-api.md §7.1: a list is {data, has_more, next_cursor}; a page lacking has_more
    # (tolerance) has more exactly when it gives a cursor, and has_more false ends the walk
    # whatever cursor comes with it.
    t = FakeTime()
    bodies = iter(
        [
            {"data": [{"id": "wbd_1"}], "next_cursor": "c1"},
            {"data": [{"id": "wbd_2"}], "has_more": "yes", "next_cursor": "c2"},
            {"data": [{"id": "wbd_3"}], "next_cursor": None},
        ]
    )
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.params.get("cursor"))
        return httpx.Response(200, json=next(bodies))

    pages = [p for p, _ in make_client(handler, t).iter_pages()]
    assert [p.deliveries[0].id for p in pages] == ["wbd_1", "wbd_2", "wbd_3"]
    assert sent == [None, "c1", "c2"]
    assert [p.has_more for p in pages] == [True, True, False]
    done = {"data": [{"id": "wbd_9"}], "has_more": False, "next_cursor": "c9"}
    client = make_client(lambda r: httpx.Response(200, json=done), t)
    assert [(p.has_more, p.next_cursor) for p, _ in client.iter_pages()] == [(False, None)]


def test_pages_repeating_the_same_rows_under_new_cursors_stop() -> None:
    # A cursor that does not move on, but reads new each time (encrypted with a fresh
    # nonce, say: kirim-api.md §7.3 keeps its encoding opaque), served the same rows page
    # after page: the walk never ended, as no cursor repeated and no page was empty.
    t = FakeTime()
    calls = itertools.count(1)
    rows = [{"id": "wbd_1", "created_at": "2026-05-01T00:00:00Z"}, {"id": "wbd_2"}]
    client = make_client(lambda r: page(rows, f"c{next(calls)}"), t)
    with pytest.raises(InvalidResponse, match="100 pages in a row of the history hold only"):
        list(client.iter_pages())
    assert next(calls) == 102  # the first page, then a hundred of its copies
    # nor does an empty page between the copies clear the count
    calls = itertools.count(1)

    def copies_and_empty(request: httpx.Request) -> httpx.Response:
        i = next(calls)
        return page(rows if i % 2 else [], f"c{i}")

    with pytest.raises(InvalidResponse, match="100 pages in a row of the history hold only"):
        list(make_client(copies_and_empty, t).iter_pages())
    assert next(calls) == 102
    # pages that overlap the page before, each bringing a row of its own, go on
    n = itertools.count(1)

    def overlapping(request: httpx.Request) -> httpx.Response:
        i = next(n)
        return page([{"id": f"wbd_{i - 1}"}, {"id": f"wbd_{i}"}], f"c{i}" if i < 300 else None)

    assert len(list(make_client(overlapping, t).iter_pages())) == 300


def test_an_answer_trickling_in_is_cut_off_and_retried() -> None:
    """httpx's timeout bounds each read; a server sending a byte at a time never trips it."""
    t = FakeTime()
    sent: list[int] = []

    class Trickle(httpx.SyncByteStream):  # 32 bytes over 1.6 s at least: past the deadline
        def __iter__(self) -> Iterator[bytes]:
            for byte in b'{"data": [], "has_more": false}':
                time.sleep(0.05)
                yield bytes([byte])

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        if len(sent) == 1:
            return httpx.Response(200, stream=Trickle())
        return page([{"id": "wbd_1"}], None)

    client = make_client(handler, t)
    # real time (the deadline is kept on time.monotonic): 1 s, so that the second, instant
    # answer is read well within it on a loaded machine (0.1 s was not always)
    client.answer_deadline = 1.0
    [(got, _)] = list(client.iter_pages())
    assert [d.id for d in got.deliveries] == ["wbd_1"]
    assert (len(sent), client.retries) == (2, 1)


def test_an_interrupt_cuts_an_answer_being_read() -> None:
    t = FakeTime()

    class Endless(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            while True:
                time.sleep(0.01)
                yield b" "

    client = make_client(lambda r: httpx.Response(200, stream=Endless()), t)
    threading.Timer(0.2, client.interrupt).start()
    with pytest.raises(Interrupted, match="interrupted while it read an answer"):
        client.request("GET", "/v1/webhook_deliveries")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "the answer is not JSON"),
        (b"[1, 2]", "the answer is JSON list, not an object"),
        (json.dumps({"items": []}).encode(), "the page has no 'data' array"),
        (
            json.dumps({"data": [], "has_more": True, "next_cursor": None}).encode(),
            "the page says has_more but gives no next_cursor",
        ),
    ],
)
def test_malformed_pages_raise_invalid_response(body: bytes, says: str) -> None:
    t = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    with pytest.raises(InvalidResponse, match=says):
        make_client(handler, t).list_deliveries()


def test_a_garbled_2xx_to_a_read_is_asked_again_a_few_times() -> None:
    """A page cut short, or a proxy's HTML page with 200, stopped a whole backfill."""
    t = FakeTime()
    answers = iter([b'{"data": [{"id": "wbd_1"', b"<html>maintenance</html>"])
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        body = next(answers, None)
        return page([{"id": "wbd_1"}], None) if body is None else httpx.Response(200, content=body)

    client = make_client(handler, t)
    assert [d.id for d in client.list_deliveries().deliveries] == ["wbd_1"]
    assert (len(sent), client.retries) == (3, 2)
    # always garbled: an InvalidResponse after 3 tries
    garbled = make_client(lambda r: httpx.Response(200, content=b"<html>"), t)
    with pytest.raises(InvalidResponse, match="not JSON"):
        garbled.list_deliveries()
    assert garbled.requests_sent == 3
    # the 3 tries count garbled answers only, not 429s before them (busy parallel slices)
    answers = iter([429, 429, 200])

    def busy_then_garbled(request: httpx.Request) -> httpx.Response:
        status = next(answers, None)
        if status == 429:
            return httpx.Response(429, headers={"Retry-After": "1"})
        if status == 200:
            return httpx.Response(200, content=b"<html>proxy</html>")
        return page([{"id": "wbd_2"}], None)

    assert [d.id for d in make_client(busy_then_garbled, t).list_deliveries().deliveries] == [
        "wbd_2"
    ]
    # nor do garbled answers use up the tries of 5xx: 2 garbled, then 7 x 503 (of 8 tries)
    codes = iter([200, 200] + [503] * 7)

    def garbled_then_down(request: httpx.Request) -> httpx.Response:
        code = next(codes, None)
        if code == 200:
            return httpx.Response(200, content=b"<html>")
        return httpx.Response(code) if code else page([{"id": "wbd_3"}], None)

    assert [d.id for d in make_client(garbled_then_down, t).list_deliveries().deliveries] == [
        "wbd_3"
    ]
    # a write may have been done: its garbled answer is not sent again
    writes = make_client(lambda r: httpx.Response(202, content=b"<html>"), t)
    with pytest.raises(
        InvalidResponse,
        match=r"^POST /v1/webhook_deliveries/wbd_1/replay at .*: the answer is not JSON",
    ):
        writes.replay("wbd_1")
    assert writes.requests_sent == 1


def test_a_redirect_says_where_it_pointed_without_its_query() -> None:
    location = "https://elsewhere.example/v1/webhook_deliveries?token=hunter2"
    client = make_client(lambda r: httpx.Response(302, headers={"Location": location}), FakeTime())
    with pytest.raises(
        PermanentApiError,
        match=r"Found \(redirected to https://elsewhere\.example/v1/webhook_deliveries\)",
    ) as e:
        client.list_deliveries()
    assert "(redirected to https://elsewhere.example/v1/webhook_deliveries)" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_page_items_that_are_no_object_are_set_apart() -> None:
    """One odd item must not stop every walk at its page (a rerun would stop there again)."""
    body = {"data": [5, None, {"id": "wbd_1"}, "x", []], "has_more": False}
    got = make_client(lambda r: httpx.Response(200, json=body), FakeTime()).list_deliveries()
    assert [d.id for d in got.deliveries] == ["wbd_1"]
    assert got.unreadable == ["5", "null", '"x"', "[]"]


def test_list_limit_is_checked() -> None:
    client = make_client(lambda r: page([], None), FakeTime())
    with pytest.raises(ValueError, match="limit"):
        client.list_deliveries(limit=101)


def test_delivery_parsing_is_tolerant() -> None:
    d = Delivery.from_api(
        {
            "id": "wbd_1",
            "status": "dead",
            "attempts": 8,
            "response_status": 500,
            "last_attempt_at": "2026-05-01T10:00:00Z",
            "created_at": "2026-05-01T09:00:00.123Z",
            "shiny_new_field": {"a": 1},
            "payload": '{"id":"evt_1", "type":"a.b","data":{}}',
        }
    )
    assert (d.attempt, d.response_status_code) == (8, 500)
    # Kirim counts attempts from 1: a 0 (a row not attempted yet) is no attempt number
    assert [Delivery.from_api({"attempt": n}).attempt for n in (0, -1, "0", 1)] == [
        None,
        None,
        None,
        1,
    ]
    assert d.updated_at == datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert d.created_at == datetime(2026, 5, 1, 9, 0, 0, 123000, tzinfo=UTC)
    assert d.extra == {"shiny_new_field": {"a": 1}}
    assert d.payload == '{"id":"evt_1", "type":"a.b","data":{}}'
    assert d.payload_exact
    assert d.event_id is None
    assert d.replayed_from is None

    obj = Delivery.from_api({"id": "wbd_2", "payload": {"id": "evt_2", "type": "a.b", "data": {}}})
    assert obj.payload == '{"id":"evt_2","type":"a.b","data":{}}'
    assert not obj.payload_exact

    bare = Delivery.from_api({})
    assert bare.id is None
    assert bare.payload is None


@pytest.mark.parametrize(
    "first",
    [
        error(502, "api_error", "internal_error"),
        # kirim-api.md §7.2: the same key still in flight at Kirim, after its 30 s wait
        error(409, "conflict", "idempotency_in_progress"),
    ],
)
def test_replay_reuses_idempotency_key_on_retry(first: httpx.Response) -> None:
    t = FakeTime()
    keys: list[str] = []
    answers = [
        first,
        httpx.Response(202, json={"data": {"id": "wbd_new", "replayed_from": "wbd_1"}}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        assert request.url.path == "/v1/webhook_deliveries/wbd_1/replay"
        return answers.pop(0)

    result = make_client(handler, t).replay("wbd_1")
    assert result["replayed_from"] == "wbd_1"
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert len(keys[0]) == 36


# ------------------------------------------------------------------ ids in request paths


def _recording_client(seen: list[httpx.URL]) -> KirimClient:
    """A client whose server records each request's URL and answers with a small object."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(202 if request.method == "POST" else 200, json={"data": {}})

    return make_client(handler, FakeTime())


@pytest.mark.parametrize(
    "value", ["wbd_01KQGDC0YMGXD5P4DQDWK71R4R", "wbs_1", "sec-A_9", "wbd.1", "...", "wbd 1"]
)
def test_an_id_goes_into_its_path_segment_as_it_is(value: str) -> None:
    seen: list[httpx.URL] = []
    client = _recording_client(seen)
    client.get_subscription(value)
    client.replay(value)
    # decoded, the path holds exactly the id (a blank is sent escaped, as URLs must)
    assert [url.path for url in seen] == [
        f"/v1/webhook_subscriptions/{value}",
        f"/v1/webhook_deliveries/{value}/replay",
    ]
    assert [url.query for url in seen] == [b"", b""]


@pytest.mark.parametrize("value", ["", "/", ".", "..", "wbd_1/replay", "../wbs_1", "wbd_1/"])
def test_an_id_that_would_change_the_path_is_refused_before_sending(value: str) -> None:
    from kirim_events.client import _path_id

    says = re.escape(f"not a valid id: {value!r}")
    with pytest.raises(ValueError, match=says):
        _path_id(value)
    seen: list[httpx.URL] = []
    client = _recording_client(seen)
    with pytest.raises(ValueError, match=says):
        client.get_delivery(value)
    with pytest.raises(ValueError, match=says):
        client.get_subscription(value)
    with pytest.raises(ValueError, match=says):
        client.replay(value)
    assert seen == []  # nothing went out


@pytest.mark.parametrize("value", ["wbd_1?x=1", "wbd_1#x", "%2e%2e", "..%2f", "wbd_1%2Freplay"])
def test_an_id_with_url_syntax_reaches_no_other_resource(value: str) -> None:
    # sent escaped, so that the server decodes exactly the id (refusing it would be safe
    # too, but Kirim's id format is not documented, and a tolerant client sends what it got)
    seen: list[httpx.URL] = []
    _recording_client(seen).replay(value)
    (url,) = seen
    assert (url.path, url.query) == (f"/v1/webhook_deliveries/{value}/replay", b"")


def test_bulk_replay_body_and_result() -> None:
    t = FakeTime()
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"data": {"enqueued": 1000, "capped": True}})

    client = make_client(handler, t)
    result = client.bulk_replay(
        "wbs_X", status="failed", created_after=datetime(2026, 5, 1, 0, 0, 0, 5, tzinfo=UTC)
    )
    assert (result.enqueued, result.capped) == (1000, True)
    assert bodies[0] == {
        "subscription_id": "wbs_X",
        "status": "failed",
        "created_after": "2026-05-01T00:00:00.000005Z",
    }
    with pytest.raises(ValueError, match="dead"):
        client.bulk_replay("wbs_X", status="succeeded")


def test_format_time_rejects_naive() -> None:
    with pytest.raises(ValueError, match="aware"):
        format_time(datetime(2026, 1, 1))


def test_a_request_that_raises_otherwise_still_leaves_the_limiter() -> None:
    # Only transport errors released the limiter's slot: any other error left it "in flight".
    def handler(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug in a transport")

    client = make_client(handler, FakeTime())
    with pytest.raises(RuntimeError, match="a bug in a transport"):
        client.list_deliveries()
    assert client.limiter._bucket("read").in_flight == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://user:PASSW0RD@api.example",
        "https://PASSW0RD@api.example/v1",
        "https://api.example/?token=PASSW0RD",
        "https://api.example/v1?token=PASSW0RD",
        "https://api.example/v1#PASSW0RD",
    ],
)
def test_a_base_url_with_a_credential_is_refused_without_showing_it(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As Settings refuses such a KIRIM_API_URL. httpx sent a user name and password as Basic
    # auth in place of the Bearer key (every request refused), appended each path to the
    # query (every request went to /), and logged the whole URL at INFO, password included.
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"data": {}})

    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match="KIRIM_API_URL must not carry") as info:
        KirimClient(url, Secret(KEY), transport=httpx.MockTransport(handler)).request(
            "GET", "/v1/me"
        )
    assert sent == []
    for text in (str(info.value), repr(info.value), caplog.text):
        assert "PASSW0RD" not in text
        assert KEY not in text


def test_an_answer_that_is_no_page_names_where_it_came_from_and_is_asked_again() -> None:
    """A proxy's HTML page said only "answer is not JSON status=200", unlike other errors,
    and its retry note said the status twice; a JSON page of the wrong shape (has_more with
    no cursor) named no URL and was not asked again, as an HTML one was."""
    t = FakeTime()
    html = make_client(lambda r: httpx.Response(200, content=b"<html>portal</html>"), t)
    with pytest.raises(InvalidResponse, match="the answer is not JSON") as caught:
        html.list_deliveries()
    said = str(caught.value)
    assert said.startswith("GET /v1/webhook_deliveries at https://api.test: the answer is not JSON")
    assert "is KIRIM_API_URL Kirim's API?" in said
    assert said.count("status=200") == 1
    notes: list[str] = []
    noted = KirimClient("https://api.test", Secret(KEY), sleep=t.sleep, clock=t.clock,
                        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"<")),
                        on_retry=lambda delay, error: notes.append(str(error)))  # fmt: skip
    with pytest.raises(InvalidResponse, match="the answer is not JSON"):
        noted.list_deliveries()
    assert notes
    assert all(note.count("status=200") == 1 for note in notes)
    # has_more without a cursor: asked again, then named with its URL
    answers = iter([{"data": [], "has_more": True, "next_cursor": None}])
    sent = []

    def once_broken(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        body = next(answers, None)
        return page([{"id": "wbd_1"}], None) if body is None else httpx.Response(200, json=body)

    client = make_client(once_broken, t)
    assert [d.id for d in client.list_deliveries().deliveries] == ["wbd_1"]
    assert (len(sent), client.retries) == (2, 1)
    shape_notes: list[str] = []
    no_cursor = httpx.MockTransport(
        lambda r: httpx.Response(200, json={"data": [], "has_more": True, "next_cursor": None})
    )
    broken = KirimClient("https://api.test", Secret(KEY), sleep=t.sleep, clock=t.clock,
                         transport=no_cursor,
                         on_retry=lambda delay, error: shape_notes.append(str(error)))  # fmt: skip
    before = t.clock()
    with pytest.raises(InvalidResponse, match=r"at https://api\.test: the page says has_more"):
        broken.list_deliveries()
    assert broken.requests_sent == 3
    # asked again as a garbled answer is: after a backoff, with the retry note
    assert len(shape_notes) == 2
    assert all("(asking again)" in note for note in shape_notes)
    assert t.clock() > before


def test_a_delivery_repr_shows_no_credential_of_its_handler_url() -> None:
    """A history row names the subscriber's URL, which may carry a token or a password."""
    row = Delivery.from_api(
        {
            "id": "dlv_1",
            "status": "succeeded",
            "url": "https://u:PASSW0RD@hooks.example/k?token=T0KEN",
        }
    )
    assert row.url == "https://u:PASSW0RD@hooks.example/k?token=T0KEN"
    assert "PASSW0RD" not in repr(row)
    assert "T0KEN" not in repr(row)
    assert "dlv_1" in repr(row)
