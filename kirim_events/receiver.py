"""ASGI app that receives Kirim webhooks: raw body -> verify -> journal (fsync) -> 2xx.

Answers (kirim-api.md §3: any non-408/429 4xx is *permanent* for Kirim, 5xx is retried):

======================================  ======  =============================================
request                                  status  receipt outcome
======================================  ======  =============================================
signed, new event(s)                     200     ``new`` (body ``{"outcome": "new"}``)
signed, every event already journaled    200     ``duplicate``
no / malformed / wrong / stale signature 401     ``rejected`` (reason missing, malformed, ...)
body above ``max_body`` bytes            413     ``rejected`` (reason ``too_large``)
body not in within ``body_timeout`` s    408     ``rejected`` (reason ``body_timeout``)
signed but unparseable                   200     ``quarantined`` (kept byte-exact first)
journal or quarantine cannot be written  503     none (Kirim retries)
another method on the webhook path       405
another path                             404
======================================  ======  =============================================

Requests answered 404 or 405 are counted (``unrouted_total``), and a POST to another path
is logged as a warning, at most once a minute: a subscription URL with the wrong path would
otherwise fail in silence until Kirim disables it. A rejected request (401, 408, 413) is
logged as a warning too, the first of each reason at once, but at most
``REJECT_LOG_BURST`` of a reason in ``REJECT_LOG_EVERY`` seconds: past that they are only
counted (``rejected_total``), and a line says how many were not logged, when the next one
is or when :meth:`Receiver.log_held` finds the interval over (the collector asks at each
flush tick, and at its stop). So is a "busy" 503. A flood of made-up requests cannot flood
the log.

The signature is checked on the raw bytes before any parsing. 2xx is sent only after the
journal commit that holds the delivery returned (durable). ``GET /healthz`` proves the journal
is writable; ``GET /metrics`` serves Prometheus text. Logs carry ids and reasons, never
bodies or secrets.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from kirim_events.config import Secret, SecretLike, as_secrets
from kirim_events.deadlines import Deadlines
from kirim_events.errors import ConfigError, PayloadError, SignatureError, StorageError
from kirim_events.events import (
    Records,
    canonical_type,
    header_event_id,
    header_number,
    parse_delivery,
)
from kirim_events.journal import Journal
from kirim_events.logbudget import LogBudget
from kirim_events.printable import printable
from kirim_events.replays import HeaderKeyedReplays
from kirim_events.signing import DEFAULT_TOLERANCE, check_header, check_tolerance, verify

__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_MAX_BODY", "DEFAULT_PATH", "Metrics", "Receiver"]

DEFAULT_PATH = "/webhooks/kirim"
DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 20.0
"""Seconds a request may take to send its body (then 408, which Kirim retries). Kirim
itself gives up after 10 s; a body trickling in for longer only holds a connection and its
buffer. The collector's graceful stop waits 10 s longer, so a stop answers it rather than
cancels it; ``collect`` gives each request head the same time."""
DEFAULT_MIN_FREE = 64 << 20
"""Bytes free where the journal is below which ``/healthz`` answers 503."""
MIN_BUFFERED = 64 << 20
"""The least memory (bytes) that bodies being received and handled may hold together past
their first ``FREE_BODY_BYTES``; the budget is this or four ``max_body``, whichever is more.
Past it a request gets 503 (Kirim retries): a few hundred clients sending 4 MiB bodies with
made-up signatures cannot take gigabytes."""
FREE_BODY_BYTES = 64 << 10
"""The first bytes of each body, which do not count against the budget (their memory is
bounded by ``--max-connections``): Kirim's bodies are a few kB, so clients filling the
budget with large bodies cannot turn Kirim's deliveries away."""
PARSE_IN_THREAD_BYTES = 256 * 1024
"""Bodies from this size are parsed off the event loop (a 3.7 MB batch took 3.5 s), so the
acknowledgements of other deliveries do not wait for them."""
log = logging.getLogger("kirim_events.receiver")
_KEPT = (b"content-type", b"user-agent")
RECEIPT_TEXT_MAX = 200
"""Header values kept in the receipt of a refused request (and named in its log line) are
cut to this many characters: anyone reaching the port could otherwise store kilobytes per
unsigned request. Kirim's ids are about 30 long; a signed request's receipt keeps them
whole, as its events do (the duplicates count joins the two on ``delivery_id``)."""


def check_body_timeout(seconds: float) -> float:
    """``seconds`` if it is a usable body timeout (above 0, at most an hour), else ConfigError."""
    if not 0 < seconds <= 3600:  # NaN too
        raise ConfigError(f"body timeout must be above 0 and at most 3600 s, got {seconds!r}")
    return seconds


def _clip(value: str | None) -> str | None:
    return value if value is None or len(value) <= RECEIPT_TEXT_MAX else value[:RECEIPT_TEXT_MAX]


def _shown_id(receipt: Mapping[str, Any]) -> str:
    """The delivery id for a log line: an unsigned header, so escaped whatever the host's
    log formatter (the receipt keeps it as sent)."""
    return printable(receipt["delivery_id"] or "-")


def _shown_ids(receipt: Mapping[str, Any]) -> str:
    """The delivery id, then the event id when the request named one, escaped as
    :func:`_shown_id` does: ``wbd_... event evt_...``."""
    event_id = receipt["event_id"]
    return _shown_id(receipt) + (f" event {printable(event_id)}" if event_id else "")


UNROUTED_LOG_EVERY = 60.0  # seconds between warnings with a hint (another path, a secret)
REJECT_LOG_BURST = 10
"""Warnings logged per rejection reason (or "busy" 503s) in ``REJECT_LOG_EVERY`` seconds."""
REJECT_LOG_EVERY = 60.0
_BUSY = "'busy' 503 answers"  # the log budget's kinds: this, and rejected deliveries (reason)


class _Throttle:
    """Says yes at most once per ``every`` seconds (the first time at once)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every:
            return False
        self.last = now
        return True


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Metrics:
    """Counters for ``/metrics``: requests, outcomes, rejections by reason, flushes."""

    def __init__(self) -> None:
        self.received = 0
        self.events_new = 0
        self.duplicates = 0
        self.quarantined = 0
        self.storage_errors = 0
        self.unrouted = 0
        self.rejected: dict[str, int] = {}
        self.flushes = 0
        self.flush_seconds_total = 0.0
        self.flush_seconds_last = 0.0
        self.flush_errors = 0
        self.last_flush_at = 0.0

    def reject(self, reason: str) -> None:
        """Count one rejected request under ``reason``."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def flushed(self, seconds: float, at: float) -> None:
        """Record one completed flush that took ``seconds``, finished at unix time ``at``."""
        self.flushes += 1
        self.flush_seconds_total += seconds
        self.flush_seconds_last = seconds
        self.last_flush_at = at

    def render(self, backlog: int) -> str:
        """Return the Prometheus text exposition of every metric."""
        p = "kirim_events_"
        lines = [
            f"# HELP {p}received_total Webhook POSTs received on the webhook path.",
            f"# TYPE {p}received_total counter",
            f"{p}received_total {self.received}",
            f"# HELP {p}events_new_total Events journaled for the first time.",
            f"# TYPE {p}events_new_total counter",
            f"{p}events_new_total {self.events_new}",
            f"# HELP {p}duplicates_total Deliveries whose events were all seen before.",
            f"# TYPE {p}duplicates_total counter",
            f"{p}duplicates_total {self.duplicates}",
            f"# HELP {p}quarantined_total Signed bodies kept in quarantine (unparseable).",
            f"# TYPE {p}quarantined_total counter",
            f"{p}quarantined_total {self.quarantined}",
            f"# HELP {p}rejected_total Requests rejected, by reason.",
            f"# TYPE {p}rejected_total counter",
        ]
        lines += [
            f'{p}rejected_total{{reason="{r}"}} {n}' for r, n in sorted(self.rejected.items())
        ]
        lines += [
            f"# HELP {p}unrouted_total Requests to another path or with another method (404/405).",
            f"# TYPE {p}unrouted_total counter",
            f"{p}unrouted_total {self.unrouted}",
            f"# HELP {p}storage_errors_total Requests answered 503 because storage failed.",
            f"# TYPE {p}storage_errors_total counter",
            f"{p}storage_errors_total {self.storage_errors}",
            f"# HELP {p}journal_backlog Events journaled but not yet flushed to the lake.",
            f"# TYPE {p}journal_backlog gauge",
            f"{p}journal_backlog {backlog}",
            f"# HELP {p}flush_seconds Time spent flushing the journal into the lake.",
            f"# TYPE {p}flush_seconds summary",
            f"{p}flush_seconds_sum {self.flush_seconds_total:.6f}",
            f"{p}flush_seconds_count {self.flushes}",
            f"# HELP {p}flush_last_seconds Duration of the latest flush.",
            f"# TYPE {p}flush_last_seconds gauge",
            f"{p}flush_last_seconds {self.flush_seconds_last:.6f}",
            f"# HELP {p}flush_last_timestamp_seconds Unix time the latest flush finished.",
            f"# TYPE {p}flush_last_timestamp_seconds gauge",
            f"{p}flush_last_timestamp_seconds {self.last_flush_at:.3f}",
            f"# HELP {p}flush_errors_total Flushes that failed (retried at the next tick).",
            f"# TYPE {p}flush_errors_total counter",
            f"{p}flush_errors_total {self.flush_errors}",
        ]
        return "\n".join(lines) + "\n"


def _either(headers: Mapping[str, str], check: Callable[[str | None], object]) -> bool:
    """Run ``check`` on ``X-Kirim-Signature`` (``X-Kirim-Signature-256`` when it is
    absent), then on ``-256`` if the first failed and both are there: the docs name both,
    and one present but unusable must not hide a good other. True when only ``-256``
    passed; when neither did, the first one's SignatureError."""
    first = headers.get("x-kirim-signature")
    other = headers.get("x-kirim-signature-256")
    try:
        check(first or other)
    except SignatureError:
        if not (first and other):
            raise
        try:
            check(other)
        except SignatureError:
            pass
        else:
            return True
        raise
    return False


_SIGNATURES = frozenset({"x-kirim-signature", "x-kirim-signature-256"})


def _read_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``X-Kirim-*``, content-type and user-agent headers (ASGI names are lower-case
    already; no other is ever read or kept). Of another header sent twice the last counts.
    A signature header sent as several field lines is one list (RFC 9110 §5.3), whether
    split (``t=`` on one line, ``v1=`` on the next) or one line per secret: keeping only
    the last line refused a delivery signed with our secret (401, which Kirim never retries)."""
    headers: dict[str, str] = {}
    for k, v in raw:
        if k.startswith(b"x-kirim-") or k in _KEPT:
            name, value = k.decode("latin-1"), v.decode("latin-1")
            if name in _SIGNATURES and name in headers:
                value = _merge_signatures(headers[name], value)
            headers[name] = value
    return headers


def _merge_signatures(first: str, second: str) -> str:
    """Two field lines of one signature header as one value. A ``t=`` the first holds
    already is dropped from the second (one line per secret, signed at one time); another
    ``t=`` stays, and the header is malformed, as it has no one signing time."""
    stamps = {
        v.strip() for k, _, v in (p.partition("=") for p in first.split(",")) if k.strip() == "t"
    }
    parts = [
        p
        for p in second.split(",")
        if not (p.partition("=")[0].strip() == "t" and p.partition("=")[2].strip() in stamps)
    ]
    return ",".join([first, *parts]) if parts else first


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    """The bodies being received already hold the receiver's memory budget."""


_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


def webhook_path(path: str) -> str:
    """``path`` as the receiver matches it (``/webhooks/kirim``), or ConfigError for one no
    subscription URL could name: a blank, ``%`` or another character a URL path holds only
    escaped, or a ``.`` / ``..`` segment (which clients resolve away)."""
    if not path:
        # not the root: --path "$WEBHOOK_PATH" with the variable unset took every POST to "/"
        raise ConfigError(
            "webhook path is blank: give one such as /webhooks/kirim (or / for the root, or"
            " leave --path out)"
        )
    segments = path.strip("/").split("/")
    if path.strip("/") and not all(
        _PATH_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments
    ):
        raise ConfigError(
            f"webhook path {printable(path)!r} is no URL path Kirim could post to: use letters,"
            " digits and - . _ ~ between slashes, such as /webhooks/kirim"
        )
    return "/" + path.strip("/")


def check_options(
    secrets: SecretLike | Iterable[SecretLike], path: str, tolerance: int | None
) -> tuple[tuple[Secret, ...], str, int | None]:
    """The secrets, path and tolerance as a :class:`Receiver` keeps them; ValueError or
    ConfigError for those it refuses, so that a caller can refuse them before it opens
    anything (the collector, before its journal)."""
    keys = as_secrets(secrets)
    if not keys:
        raise ValueError("the receiver needs at least one webhook secret")
    return keys, webhook_path(path), check_tolerance(tolerance)


class Receiver:
    """The webhook receiver, an ASGI application.

    Parameters
    ----------
    journal
        Where accepted events, receipts and quarantined bodies go.
    secrets
        Every webhook secret currently accepted (rotation); a match on any one is enough.
    path
        The webhook path; other paths get 404 (except ``/healthz`` and ``/metrics``).
    max_body
        Largest accepted body in bytes (413 above it), enforced while streaming.
    tolerance
        Signature freshness window in seconds (``None`` or 0 disables only the freshness
        check).
    body_timeout
        Seconds a request may take to send its body; 408 after that.
    min_free
        ``/healthz`` answers 503 when the journal's file system has fewer free bytes
        (default 64 MiB, or four bodies of ``max_body`` if more): a tiny test write still
        succeeds on a nearly full disk, the next webhooks would not.
    now
        Clock returning unix seconds, used for freshness and ``received_at``.
    metrics
        Shared counters (a new :class:`Metrics` when omitted).
    """

    def __init__(
        self,
        journal: Journal,
        secrets: SecretLike | Iterable[SecretLike],
        *,
        path: str = DEFAULT_PATH,
        max_body: int = DEFAULT_MAX_BODY,
        tolerance: int | None = 300,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        min_free: int | None = None,
        now: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.journal = journal
        self._secrets, self.path, self.tolerance = check_options(secrets, path, tolerance)
        self.max_body = max_body
        self.body_timeout = check_body_timeout(body_timeout)
        self._deadlines = Deadlines(body_timeout)
        # a replay verifies within the tolerance of its t, itself within it of the first one
        self._replays = HeaderKeyedReplays(2 * (self.tolerance or DEFAULT_TOLERANCE) + 60)
        self.min_free = max(DEFAULT_MIN_FREE, 4 * max_body) if min_free is None else min_free
        self.max_buffered = max(MIN_BUFFERED, 4 * max_body)
        self._buffered = 0  # bytes of the bodies being received and handled, all requests
        self._buffered_lock = threading.Lock()  # a receiver may serve several event loops
        self._now = now
        self.metrics = metrics or Metrics()
        self._unrouted_hint = _Throttle(UNROUTED_LOG_EVERY)
        self._mismatch_hint = _Throttle(UNROUTED_LOG_EVERY)
        self._log_budget = LogBudget(REJECT_LOG_BURST, REJECT_LOG_EVERY, now)

    def __repr__(self) -> str:
        return f"Receiver(path={self.path!r}, secrets={len(self._secrets)})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        if path == self.path:
            if method != "POST":
                self.metrics.unrouted += 1
                extra = [(b"allow", b"POST"), _CLOSE]
                await _answer(send, 405, {"error": "method not allowed"}, extra)
                return
            held = [0]  # what this request's body counts against the memory budget
            try:
                status, body, unread = await self._webhook(scope, receive, held)
            finally:
                if held[0]:
                    self._hold(-held[0])
            # an answer before the whole body was read: close rather than wait on the rest
            await _send(send, status, body, _JSON_TYPE, [_CLOSE] if unread else ())
        elif path == "/healthz" and method in ("GET", "HEAD"):
            await self._healthz(send)
        elif path == "/metrics" and method in ("GET", "HEAD"):
            text = self.metrics.render(self.journal.backlog).encode()
            await _send(send, 200, text, b"text/plain; version=0.0.4; charset=utf-8")
        else:
            self._unrouted(method, path)
            await _answer(send, 404, {"error": "not found"}, [_CLOSE])

    def _unrouted(self, method: str, path: str) -> None:
        self.metrics.unrouted += 1
        if method != "POST" or not self._unrouted_hint.due():
            return
        log.warning(
            "POST to %s answered 404: webhooks are received at %s (is the subscription's URL "
            "right?); more such requests are counted in unrouted_total, logged once a minute",
            printable(path[:200]),
            self.path,
        )

    async def _healthz(self, send: Send) -> None:
        try:
            await asyncio.wait_for(self.journal.ping_async(), timeout=5)
            # the journal's own folder: it may be another file system than the data folder;
            # in a thread, as a hung network mount must not stall the loop
            where = self.journal.path.parent
            free = (await asyncio.wait_for(asyncio.to_thread(shutil.disk_usage, where), 5)).free
        except (StorageError, TimeoutError, OSError) as exc:
            log.error("health check failed: journal not writable (%s)", type(exc).__name__)
            await _answer(send, 503, {"status": "unavailable", "journal": "not writable"})
            return
        if free < self.min_free:
            # a tiny write still succeeds on a nearly full disk, but the next bodies will not
            log.error("health check failed: %d bytes free where the journal is", free)
            body = {"status": "unavailable", "journal": "disk nearly full", "disk_free": free}
            await _answer(send, 503, body)
            return
        body = {"status": "ok", "journal_backlog": self.journal.backlog, "disk_free": free}
        await _answer(send, 200, body)

    def _hold(self, n: int) -> None:
        """Count ``n`` more bytes (fewer if negative) against the budget; _Busy past it."""
        with self._buffered_lock:
            if n > 0 and self._buffered + n > self.max_buffered:
                raise _Busy
            self._buffered += n

    def _check_length(self, scope: Scope) -> None:
        """_TooLarge when the request says its body is larger than ``max_body``."""
        for name, value in scope["headers"]:
            if name != b"content-length" or not value.isdigit():
                continue
            # 19 digits or more is too large (and int() of 5000 digits would raise)
            if len(value) > 18 or int(value) > self.max_body:
                raise _TooLarge

    async def _read_body(self, receive: Receive, held: list[int]) -> bytes:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            counted = max(0, size - FREE_BODY_BYTES) - held[0]
            if counted > 0:
                self._hold(counted)
                held[0] += counted
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _webhook(
        self, scope: Scope, receive: Receive, held: list[int]
    ) -> tuple[int, bytes, bool]:
        """(status, answer, whether the body was left unread)."""
        self.metrics.received += 1
        received_ts = self._now()
        received_at = datetime.fromtimestamp(received_ts, UTC)
        headers = _read_headers(scope["headers"])
        receipt: dict[str, Any] = {
            "delivery_id": headers.get("x-kirim-delivery-id"),
            "attempt": header_number(headers.get("x-kirim-attempt")),
            "event_id": headers.get("x-kirim-event-id"),
            "event_type": canonical_type(headers.get("x-kirim-event")),
            "origin": "webhook",
            "received_at": received_at,
        }
        try:
            self._check_length(scope)
            # a request whose every signature header is missing, malformed or stale cannot
            # verify, whatever its body: answered before the body is read
            self._check_headers(headers, received_ts)
            async with self._deadlines.limit():
                body = await self._read_body(receive, held)
        except SignatureError as exc:
            return *await self._reject(receipt, exc.reason, 401, "invalid signature"), True
        except _TooLarge:
            answer = await self._reject(receipt, "too_large", 413, "body exceeds the size limit")
            return *answer, True
        except TimeoutError:
            answer = await self._reject(receipt, "body_timeout", 408, "body not received in time")
            return *answer, True
        except _Busy:
            if self._may_warn(_BUSY):
                log.warning("bodies being received hold %d bytes: answering 503", self._buffered)
            return 503, _json({"error": "busy, retry later"}), True
        except ConnectionError:
            return 400, _json({"error": "client disconnected"}), True
        parsed = headers  # what the parser reads; quarantine keeps every header
        try:
            if self._verify(body, headers, received_ts):
                # the parser reads the signature time (an event's time when the body has
                # none) from the header that verified, not from the one that did not
                parsed = {k: v for k, v in headers.items() if k != "x-kirim-signature"}
        except SignatureError as exc:
            return *await self._reject(receipt, exc.reason, 401, "invalid signature"), False
        try:
            records = await _parse(body, parsed, received_at)
        except PayloadError as exc:
            return *await self._quarantine(body, headers, receipt, exc.reason), False
        except Exception as exc:  # never a 5xx loop (parse_delivery raises ParseFailure)
            log.error("parser failed on a signed body (%s); quarantining it", type(exc).__name__)
            return *await self._quarantine(body, headers, receipt, "parse_error"), False
        if records.header_keyed:
            # the event key comes from the unsigned X-Kirim-Event-Id: a signed delivery sent
            # again with another id, or none, is a copy of the first, not a second event
            event_id = header_event_id(parsed)
            signature = parsed.get("x-kirim-signature") or parsed["x-kirim-signature-256"]
            first = self._replays.first_id(body, signature, event_id, received_ts)
            if first != event_id:
                log.warning("delivery %s: a signed body seen before under another event id; "
                            "kept as a copy of it", _shown_id(receipt))  # fmt: skip
                again = {k: v for k, v in parsed.items() if k != "x-kirim-event-id"}
                if first is not None:
                    again["x-kirim-event-id"] = first
                records = await _parse(body, again, received_at)
        receipt["n_events"] = len(records)
        if receipt["event_id"] is None and records:
            receipt["event_id"] = records[0].event_id
        if receipt["event_type"] is None and records:
            receipt["event_type"] = records[0].type
        try:
            flags = await self.journal.append_async(records, [receipt])
        except StorageError as exc:
            self.metrics.storage_errors += 1
            log.error("journal write failed, answering 503: %s", exc)
            return 503, _json({"error": "storage unavailable, retry later"}), False
        n_new = sum(flags)
        self.metrics.events_new += n_new
        if not n_new:
            self.metrics.duplicates += 1
        if log.isEnabledFor(logging.DEBUG):  # every delivery passes here: escape only if logged
            log.debug("delivery %s: %d of %d events new", _shown_ids(receipt), n_new, len(flags))
        return 200, _accepted(len(flags), n_new), False

    def _check_headers(self, headers: dict[str, str], now: float) -> None:
        """SignatureError when no signature header could verify any body: missing,
        malformed or outside the tolerance (the body is not needed to know)."""
        _either(headers, lambda h: check_header(h, tolerance=self.tolerance, now=now))

    def _verify(self, body: bytes, headers: dict[str, str], now: float) -> bool:
        """Accept the body if either signature header verifies it, else SignatureError.
        True when only ``X-Kirim-Signature-256`` verified."""
        secrets = self._secrets
        return _either(headers, lambda h: verify(body, h, secrets, self.tolerance, now))

    async def _reject(
        self, receipt: dict[str, Any], reason: str, status: int, message: str
    ) -> tuple[int, bytes]:
        self.metrics.reject(reason)
        for name in ("delivery_id", "event_id", "event_type"):  # not signed: keep it short
            receipt[name] = _clip(receipt[name])
        if self._may_warn(f"rejected deliveries ({reason})"):
            log.warning("rejected delivery %s (%s): %d", _shown_ids(receipt), reason, status)
        if reason == "mismatch" and self._mismatch_hint.due():  # beside each delivery's line
            log.warning(
                "a signature matched none of the %d secret(s): is KIRIM_WEBHOOK_SECRET the "
                "subscription's? Kirim takes a 401 as final (and disables a subscription "
                "after 24 in a row): once fixed, run kirim-events reconcile to recover them",
                len(self._secrets),
            )
        receipt.update(outcome="rejected", reason=reason, n_events=0)
        try:
            await self.journal.append_async([], [receipt])
        except StorageError as exc:
            # The answer is about the request, not our storage: still reject it.
            log.error("could not journal a rejection receipt: %s", exc)
        return status, _json({"error": message, "reason": reason})

    def _may_warn(self, kind: str) -> bool:
        """Whether a warning of ``kind`` is within its budget (``REJECT_LOG_BURST`` per
        ``REJECT_LOG_EVERY`` s). Says first how many were held back in the interval before,
        and, at the first one held back, that the rest of this interval's are too."""
        turn = self._log_budget.take(kind)
        if turn.held:
            _log_held(kind, turn.held, turn.held_for)
        if turn.first_held:
            log.warning(
                "more than %d %s within %.0f s: the next ones in that time are only counted",
                REJECT_LOG_BURST,
                kind,
                REJECT_LOG_EVERY,
            )
        return turn.log

    def log_held(self, final: bool = False) -> None:
        """Log how many warnings of each kind were held back in an interval that has ended
        (in any, when ``final``: the collector stops). Cheap when there are none."""
        for kind, n, seconds in self._log_budget.held(final):
            _log_held(kind, n, seconds)

    async def _quarantine(
        self, body: bytes, headers: dict[str, str], receipt: dict[str, Any], reason: str
    ) -> tuple[int, bytes]:
        try:
            await asyncio.to_thread(
                self.journal.quarantine, body, headers, reason, received_at=receipt["received_at"]
            )
            receipt.update(outcome="quarantined", reason=reason, n_events=0)
            await self.journal.append_async([], [receipt])
        except StorageError as exc:
            self.metrics.storage_errors += 1
            log.error("quarantine write failed, answering 503: %s", exc)
            return 503, _json({"error": "storage unavailable, retry later"})
        self.metrics.quarantined += 1
        log.warning("quarantined delivery %s (%s): 200", _shown_ids(receipt), reason)
        return 200, _json({"outcome": "quarantined", "reason": reason})


def _log_held(kind: str, n: int, seconds: float) -> None:
    log.warning("%s not logged in the last %.0f s: %d", kind, seconds, n)


async def _send(send: Send, status: int, body: bytes, content_type: bytes, extra: Any = ()) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_JSON_TYPE = b"application/json"
_CLOSE = (b"connection", b"close")  # on answers given before the body was read


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=256)
def _accepted(events: int, new: int) -> bytes:
    # The 200 answer of a journaled delivery: a handful of distinct bodies, encoded once each.
    return _json({"outcome": "new" if new else "duplicate", "events": events, "new": new})


async def _parse(body: bytes, headers: dict[str, str], received_at: datetime) -> Records:
    """parse_delivery, in a thread for a large body (the loop keeps answering)."""
    if len(body) < PARSE_IN_THREAD_BYTES:
        return parse_delivery(body, headers, received_at=received_at, origin="webhook")
    return await asyncio.to_thread(
        parse_delivery, body, headers, received_at=received_at, origin="webhook"
    )


async def _answer(send: Send, status: int, payload: dict[str, Any], extra: Any = ()) -> None:
    await _send(send, status, _json(payload), _JSON_TYPE, extra)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
