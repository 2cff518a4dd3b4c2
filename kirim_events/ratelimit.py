"""Client-side pacing for Kirim's rate limits, read from ``X-RateLimit-*`` and ``Retry-After``.

Kirim limits each organisation with token buckets per class (kirim-api.md §7.2): *read* for
GET/HEAD and *write* for the rest. Every 2xx and 4xx answer carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` (floored) and ``X-RateLimit-Reset`` (unix seconds when the bucket is
full again); a 429 adds ``Retry-After``. :class:`RateLimiter` keeps a local token estimate per
class, re-synchronised by every answer, and derives the refill rate from
``(Limit - Remaining) / (Reset - now)`` when the deficit is large enough for Reset's
whole-second rounding not to matter (a Reset in milliseconds, or in seconds from now, is
read as the time it means; one more than an hour ahead as absent). It is shared by every
thread of one :class:`~kirim_events.client.KirimClient`, so parallel backfill slices stay
within one limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["RateLimiter", "retry_after"]

_WINDOW_POLL = 0.05  # seconds between looks while the requests in flight fill the window
_WINDOW_MAX = 64  # a window this wide that still draws no 429 is dropped
MAX_RESET_AHEAD = 3600.0
"""Kirim's buckets are per minute (kirim-api.md §7.2): an ``X-RateLimit-Reset`` further
ahead than this is no unix time of one, and is read as absent rather than waited for (one
in milliseconds paced a backfill to a request every few thousand years, without a word)."""


@dataclass
class _Bucket:
    tokens: float | None = None  # local estimate; None = not known yet
    rate: float | None = None  # tokens per second, derived from the headers
    limit: int | None = None
    updated: float = 0.0
    in_flight: int = 0
    blocked_until: float = 0.0
    reset_at: float = 0.0
    window: int | None = None  # after a 429 with no rate known: requests in flight at most
    stale: int = 0  # answers still due to requests sent before that 429: they do not widen


class RateLimiter:
    """Client-side pacing shared by every request (and thread) of one client.

    Parameters
    ----------
    clock
        Wall-clock seconds (``time.time``); ``X-RateLimit-Reset`` is a unix time.
    sleep
        How to wait (``time.sleep``); tests pass a fake that advances ``clock``.
    reserve
        Tokens left unused as a safety margin against floored ``Remaining`` values.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        reserve: float = 1.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._reserve = reserve
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, klass: str) -> _Bucket:
        return self._buckets.setdefault(klass, _Bucket())

    def _reserve_or_wait(self, klass: str) -> float:
        """Take one token (return 0) or return how long to wait before trying again."""
        with self._lock:
            b = self._bucket(klass)
            now = self._clock()
            if b.blocked_until > now:
                return b.blocked_until - now
            if b.window is not None and b.in_flight >= b.window:
                return _WINDOW_POLL  # as many requests probe the limit as it has allowed
            if b.tokens is not None:
                if b.rate:
                    # never below what one request takes: capped under it (a Limit of 1,
                    # or a nonsense one below), no request could go again, for ever
                    floor = 1 + self._reserve
                    cap = max(float(b.limit), floor) if b.limit else float("inf")
                    b.tokens = min(cap, b.tokens + b.rate * (now - b.updated))
                elif b.reset_at and now >= b.reset_at and b.limit:
                    b.tokens = float(b.limit)  # no rate known: the bucket is full at Reset
                b.updated = now
                if b.tokens < 1 + self._reserve:
                    need = 1 + self._reserve - b.tokens
                    if b.rate:
                        return need / b.rate
                    if b.reset_at > now:
                        return b.reset_at - now
                    b.tokens = None  # nothing known: probe, the answer re-synchronises
                if b.tokens is not None:
                    b.tokens -= 1
            b.in_flight += 1
            return 0.0

    def acquire(self, klass: str = "read") -> None:
        """Block until a request of class ``klass`` ("read" or "write") may be sent."""
        while True:
            wait = self._reserve_or_wait(klass)
            if wait <= 0:
                return
            # At least 1 ms: a tinier wait may not even move a float unix clock forward.
            wait = max(wait, 0.001)
            self._sleep(wait)

    def release(
        self, klass: str, headers: Mapping[str, str] | None, *, refused: bool = False
    ) -> None:
        """Record a finished request and re-synchronise from its rate-limit headers;
        ``refused``: it was answered 429 (:meth:`block` follows), which widens no window."""
        with self._lock:
            b = self._bucket(klass)
            b.in_flight = max(0, b.in_flight - 1)
            if headers is None:
                # no answer (a transport error): if it was one from before the 429, no
                # answer of those is due from it, and none can be due beyond those in flight
                b.stale = min(b.stale, b.in_flight)
                return
            limit = _int_header(headers, "X-RateLimit-Limit")
            remaining = _int_header(headers, "X-RateLimit-Remaining")
            now = self._clock()
            reset = _reset_time(_float_header(headers, "X-RateLimit-Reset"), now)
            if remaining is None:
                # An answer to a request sent since the window opened (a 429 closes it again
                # in block): one more may go, so the window doubles with each round of
                # answers (a TCP slow start), up to none at all.
                if b.stale:
                    b.stale -= 1
                elif b.window is not None and not refused:
                    b.window = None if b.window >= _WINDOW_MAX else b.window + 1
                return
            b.window, b.stale = None, 0  # the limit is known again: pace by it
            if limit is not None:
                b.limit = limit
            if reset is not None:
                b.reset_at = reset
                deficit = (limit or 0) - remaining
                # Only a large deficit gives a rate unspoilt by Reset's whole-second rounding.
                if limit and deficit >= max(3, limit // 4) and reset - now > 0.5:
                    b.rate = deficit / (reset - now)
            # Requests still in flight may not be counted by the server yet: assume they are
            # not (conservative; it costs a constant few tokens, not throughput).
            b.tokens = float(remaining - b.in_flight)
            b.updated = now

    def block(self, klass: str, seconds: float) -> None:
        """Stop every request of ``klass`` for ``seconds`` (after a 429)."""
        with self._lock:
            b = self._bucket(klass)
            b.blocked_until = max(b.blocked_until, self._clock() + seconds)
            if b.rate:
                b.tokens = 0.0
                b.updated = b.blocked_until
            else:
                # After the block, probe one request at a time, then two ...: all threads at
                # once would meet the same empty bucket and be refused again (16 slices sent
                # 91 of 139 requests into 429s against a server with no X-RateLimit headers).
                b.tokens = None
                b.window, b.stale = 1, b.in_flight


def _reset_time(value: float | None, now: float) -> float | None:
    """``X-RateLimit-Reset`` as a unix time: unix seconds, as documented; from 1e11 up,
    milliseconds (as :func:`~kirim_events.events.parse_time` reads epoch numbers); below 1e9
    (before 2001), seconds from now, as the IETF ``RateLimit-Reset`` header counts them.
    None when absent or more than ``MAX_RESET_AHEAD`` ahead."""
    if value is None:
        return None
    if value >= 1e11:
        value /= 1000
    elif value < 1e9:
        value = now + max(0.0, value)
    return value if value - now <= MAX_RESET_AHEAD else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = _float_header(headers, name)
    return None if value is None else int(value)


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # nan, inf: as if absent


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if absent.

    An HTTP date is measured from the answer's own ``Date`` when it has one, so a client
    clock that runs ahead of Kirim's does not shorten the wait; else from ``now``.
    """
    seconds = _float_header(headers, "Retry-After")  # not a finite number: a date, or none
    if seconds is not None:
        return max(0.0, seconds)
    until = _http_date(headers.get("Retry-After"))
    if until is None:
        return None
    sent = _http_date(headers.get("Date"))
    return max(0.0, until - (now if sent is None else sent))


def _http_date(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    # An HTTP-date is UTC in all its forms (RFC 9110 §5.6.7), but the asctime one has no
    # zone and RFC 5322's "-0000" says none: both parse naive, which timestamp() read as
    # the machine's local time (hours off a 30 s Retry-After outside UTC).
    return when.replace(tzinfo=when.tzinfo or UTC).timestamp()
