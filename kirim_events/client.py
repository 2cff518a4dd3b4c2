"""KirimClient: Kirim's REST API over httpx, with retries, rate-limit pacing and pagination.

What it does (kirim-api.md §7):

* ``Authorization: Bearer <KIRIM_KEY>``; the key is a :class:`~kirim_events.config.Secret` and
  never appears in a repr, a log line or an error message, nor in the lines httpx and httpcore
  log of an answer that echoes it (:mod:`kirim_events.logsecrets`).
* The error envelope ``{"error": {"type", "code", "message", "request_id"}}`` becomes an
  :class:`~kirim_events.errors.ApiError` subclass carrying ``status_code``, ``type``, ``code``
  and ``request_id`` (from the body, else the ``X-Request-Id`` header).
* 408, 429, 5xx and transport errors are retried with exponential backoff and full jitter;
  ``Retry-After`` is honoured (seconds or an HTTP date) up to ``MAX_RETRY_AFTER``; a longer
  one raises :class:`~kirim_events.errors.RateLimitTooLong`, and requests of that class are
  refused unsent until the wait is over. Other 4xx raise at once.
* One :class:`~kirim_events.ratelimit.RateLimiter` per client, shared by all its threads,
  paces requests from ``X-RateLimit-Limit/Remaining/Reset`` so that it does not run past the
  limit (see :mod:`kirim_events.ratelimit`). Reads (GET) and writes (POST...) are separate
  buckets, as Kirim's are.
* :meth:`KirimClient.iter_pages` walks ``GET /v1/webhook_deliveries``: the cursor is opaque and
  sent back verbatim with the same filters on every page (cursors are filter-bound).
* Delivery objects are parsed tolerantly into :class:`Delivery` (alternative field names of
  §7.4 mapped, unknown fields kept in ``extra``, a ``payload`` object re-serialised and flagged
  inexact).
* POSTs carry an ``Idempotency-Key`` made once per logical operation and reused on retries.

Clock, sleep and randomness are injected (``clock=``, ``sleep=``, ``rng=``) for tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from kirim_events.config import (
    Secret,
    api_base,
    checked_api_key,
    parse_api_url,
    refuse_key_in_url,
    shown_url,
)
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
from kirim_events.events import parse_time
from kirim_events.logsecrets import blank, hide_in_logs, place_filter, stop_hiding
from kirim_events.ratelimit import RateLimiter, retry_after
from kirim_events.schema import INT32

__all__ = [
    "BulkReplayResult",
    "Delivery",
    "KirimClient",
    "Page",
    "RateLimiter",
    "format_time",
]

log = logging.getLogger("kirim_events.client")
_T = TypeVar("_T")

MAX_PAGE_SIZE = 100
MAX_RETRY_AFTER = 3600
"""A 429 asking to wait longer (seconds) is not retried: the error says how long."""
BULK_REPLAY_CAP = 1000
_USER_AGENT = "kirim-events"


def format_time(value: datetime) -> str:
    """Format an aware datetime as Kirim's ISO-8601 UTC (``Z``; microseconds when non-zero)."""
    if value.tzinfo is None:
        raise ValueError("datetimes sent to Kirim must be timezone-aware")
    value = value.astimezone(UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- objects


_ALIASES = {
    "attempts": "attempt",
    "response_status": "response_status_code",
    "last_attempt_at": "updated_at",
}
_KNOWN = (
    "id",
    "object",
    "status",
    "replayed_from",
    "subscription_id",
    "event_id",
    "event_type",
    "attempt",
    "url",
    "response_status_code",
    "response_body",
    "error",
    "next_retry_at",
    "created_at",
    "updated_at",
    "payload",
)


def _unicode(text: str) -> str:
    """``text`` with any lone UTF-16 surrogate written as its escape (``\\ud800``).

    JSON may escape half a surrogate pair ("\\ud800"), which decodes to a str that no UTF-8
    store takes: one such id in a history row failed every journal write of its page, as a
    "journal write failed" StorageError that each resume met again. Escaped, it stays the
    same text on every read (the same row stays one row)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _opt_str(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return _unicode(str(value))


def _attempt(value: Any) -> int | None:
    """The attempt number: Kirim counts from 1 (kirim-api.md §7.4), so a 0 (or less) is no
    attempt yet, read as missing, as the emulator serves it (None) and as a webhook never
    carries it: the lake's ``attempt`` is a number of an attempt made, or null."""
    number = _opt_int(value)
    return number if number is None or number >= 1 else None


def _opt_int(value: Any) -> int | None:
    """A whole number the lake's int32 columns hold, else None: a number beyond them in a
    history row (3e9, 1e999) was stored in the journal and then failed every flush
    (ArrowInvalid), or failed the journal write or the walk itself (OverflowError), at every
    resume; it is read as missing instead."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number in INT32 else None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of Kirim's delivery history, read tolerantly (kirim-api.md §7.4).

    Every field but ``extra`` may be None: only ``id``, ``object``, ``status`` and
    ``replayed_from`` are documented. ``payload`` is the raw body as sent when Kirim returns
    it as a string (``payload_exact``); a JSON object is re-serialised (``payload_exact`` is
    False: never check a signature against it); None when absent.
    """

    id: str | None
    status: str | None
    event_id: str | None
    event_type: str | None
    subscription_id: str | None
    replayed_from: str | None
    attempt: int | None
    # the handler's URL may carry a user name, a password or a token: kept out of the repr
    url: str | None = field(repr=False)
    response_status_code: int | None
    response_body: str | None
    error: str | None
    created_at: datetime | None
    updated_at: datetime | None
    next_retry_at: datetime | None
    payload: str | None
    payload_exact: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes | None:
        """``payload`` as the bytes of a request body (None when absent). A payload string
        holding a lone surrogate (the API escaped half a pair: no UTF-8 body had it) gives
        its code units as bytes, which no parser reads: the body goes to quarantine."""
        if self.payload is None:
            return None
        return self.payload.encode("utf-8", "surrogatepass")

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> Delivery:
        """Build a Delivery from one API object, mapping alternative field names."""
        if not isinstance(obj, Mapping):
            raise InvalidResponse(f"a delivery must be a JSON object, got {type(obj).__name__}")
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in obj.items():
            name = _ALIASES.get(key, key)
            if name in _KNOWN:
                values.setdefault(name, value)  # the documented name wins over an alias
                if key != name and values[name] is None:
                    values[name] = value
            else:
                extra[key] = value
        payload = values.get("payload")
        exact = True
        if payload is not None and not isinstance(payload, str):
            # Original bytes lost (§7.4): keep a canonical re-serialisation, flagged inexact.
            payload = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
            if _unicode(payload) is not payload:  # a lone surrogate: keep it an escape
                payload = json.dumps(values["payload"], separators=(",", ":"))
            exact = False
        return cls(
            id=_opt_str(values.get("id")),
            status=_opt_str(values.get("status")),
            event_id=_opt_str(values.get("event_id")),
            event_type=_opt_str(values.get("event_type")),
            subscription_id=_opt_str(values.get("subscription_id")),
            replayed_from=_opt_str(values.get("replayed_from")),
            attempt=_attempt(values.get("attempt")),
            url=_opt_str(values.get("url")),
            response_status_code=_opt_int(values.get("response_status_code")),
            response_body=_opt_str(values.get("response_body")),
            error=_opt_str(values.get("error")),
            created_at=parse_time(values.get("created_at")),
            updated_at=parse_time(values.get("updated_at")),
            next_retry_at=parse_time(values.get("next_retry_at")),
            payload=payload,
            payload_exact=exact,
            extra=extra,
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list endpoint."""

    deliveries: list[Delivery]
    next_cursor: str | None
    has_more: bool
    request_id: str | None
    unreadable: list[str] = field(default_factory=list)
    """Items of ``data`` that are no JSON object (null, a number ...), as JSON text: left
    out of ``deliveries`` rather than stopping every walk at this page."""


@dataclass(frozen=True, slots=True)
class BulkReplayResult:
    """The answer to ``bulk_replay``: how many were enqueued, and whether the 1000 cap hit."""

    enqueued: int
    capped: bool


# --------------------------------------------------------------------------- the client


GARBLED_ATTEMPTS = 3
"""Tries of a read whose 2xx answer cannot be read (truncated JSON, an HTML page)."""
RATE_LIMITED_ATTEMPTS = 4
"""429 answers a request may get, in multiples of ``max_attempts``, before it gives up."""
MAX_EMPTY_PAGES = 100
"""Empty pages in a row, each saying there is more, after which a walk of the history
stops (Kirim's pages can be empty once in a while; a hundred in a row is a loop). So do as
many pages in a row that hold only rows of the page before (a cursor that does not move on,
but reads new each time: encrypted with a fresh nonce, say)."""


def _short(cursor: str) -> str:
    return cursor if len(cursor) <= 40 else f"{cursor[:37]}..."


_STREAM_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


_WAIT_SLICE = 0.25
"""Longest single wait of a client's pause (seconds): how late a stop signal the kernel
gave another thread is seen (:meth:`KirimClient._sleep`)."""


class KirimClient:
    """A small synchronous client for Kirim's REST API (thread-safe).

    Parameters
    ----------
    base_url
        ``KIRIM_API_URL``, e.g. ``https://api.kirim.chat``. Every path starts with ``/v1``,
        which is added per request; a base URL that already ends in ``/v1`` is taken
        without it.
    api_key
        The ``KIRIM_KEY`` API key, as a :class:`Secret` (a plain str is wrapped).
    transport
        An httpx transport (the test seam: ``httpx.MockTransport``, an ASGI transport).
    sleep, clock, rng
        Injected waiting, wall clock and randomness (jitter, idempotency keys).
    max_attempts
        Tries per request before a retryable error (5xx, 408, transport) is raised; 429s
        have 4 x as many of their own, and a read whose 2xx cannot be read 3.
    backoff, max_backoff
        Base and ceiling in seconds of the exponential backoff (full jitter).
    timeout
        Seconds each step of a request (connecting, sending, each read) may take; a whole
        answer must also arrive within four times it (a server trickling its answer a byte
        at a time is cut off there and the request retried).
    on_retry
        Called as ``on_retry(delay, error)`` before each wait for a retry (the CLI says the
        first one on stderr; the library itself never prints).

    Examples
    --------
    >>> client = KirimClient("https://api.kirim.chat", Secret("kdv_live_x"))  # doctest: +SKIP
    >>> for page, _cursor in client.iter_pages(status="dead"):  # doctest: +SKIP
    ...     print(len(page.deliveries))
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret | str,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_attempts: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 30.0,
        limiter: RateLimiter | None = None,
        on_retry: Callable[[float, ApiError], None] | None = None,
    ) -> None:
        self._key = key = checked_api_key(api_key)
        refuse_key_in_url(base_url, key)
        parse_api_url(base_url)  # a user name, password or query: not sent as meant, logged
        self._on_retry = on_retry
        self.base_url = api_base(base_url)
        self._shown_base = shown_url(self.base_url)  # what error messages name
        self._sleep_fn = sleep
        self._interrupted = threading.Event()
        # request class -> (until when, the 429 that asked): refused here without sending
        self._refused: dict[str, tuple[float, RateLimitTooLong]] = {}
        self._clock = clock
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.limiter = limiter or RateLimiter(clock=clock, sleep=self._sleep)
        self.requests_sent = 0
        self.retries = 0
        self.answer_deadline = 4 * timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=timeout,
            headers={"Authorization": f"Bearer {key.reveal()}", "User-Agent": _USER_AGENT},
            follow_redirects=False,
        )
        # httpx logs each answer's reason phrase (INFO) and httpcore its headers (DEBUG): a
        # server that echoes the Authorization header there must not get the key logged
        hide_in_logs(key.reveal())
        self._hiding = True

    def __repr__(self) -> str:
        return f"KirimClient({self._shown_base!r}, api_key=Secret('**********'))"

    @property
    def account(self) -> str:
        """Which Kirim and which key this client talks to, as a hash that reveals neither
        the key nor anything to guess it by (it names backfill checkpoints)."""
        ident = f"{self.base_url}\n{self._key.reveal()}".encode()
        return hashlib.sha256(ident).hexdigest()[:32]

    def _hide(self, text: str) -> str:
        """``text`` with the API key blanked out: an error a server or a proxy words may
        echo the request's Authorization header."""
        return blank(text, self._key.reveal(), str(self._key))

    def interrupt(self) -> None:
        """Cut short every wait of this client (Retry-After, backoff, pacing) until
        :meth:`resume`: they raise :class:`~kirim_events.errors.Interrupted` (a backfill
        stopping on Ctrl-C calls it, so as not to sit out a long Retry-After)."""
        self._interrupted.set()

    def resume(self) -> None:
        """Undo :meth:`interrupt`: waits are waited out again."""
        self._interrupted.clear()

    def _sleep(self, seconds: float) -> None:
        if self._sleep_fn is time.sleep:
            # In short waits: a signal the kernel hands to another thread (the journal's
            # writer) only flags it, and Python runs the handler (Ctrl-C, SIGTERM) when the
            # main thread next runs Python code; one wait of a 600 s Retry-After sat it out.
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0 and not self._interrupted.wait(
                min(left, _WAIT_SLICE)
            ):
                pass
        elif not self._interrupted.is_set():
            self._sleep_fn(seconds)
        if self._interrupted.is_set():
            raise Interrupted("the client was interrupted while it waited")

    def __enter__(self) -> KirimClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()
        if self._hiding:
            self._hiding = False
            stop_hiding(self._key.reveal())

    def new_idempotency_key(self) -> str:
        """A UUIDv4 from the injected rng: one per logical operation (§7.2)."""
        with self._rng_lock:
            bits = self._rng.getrandbits(128)
        return str(uuid.UUID(int=bits, version=4))

    # ------------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        """Send one API request with pacing and retries; return the decoded JSON object.

        See :meth:`_ask`, which this is with no parsing beyond the JSON object. With
        ``retry=False`` it is sent once: its first error is raised, a 429 too, without
        waiting (for a request a run can do without).
        """
        return self._ask(
            method,
            path,
            _as_is,
            params=params,
            json_body=json_body,
            idempotency_key=idempotency_key,
            retry=retry,
        )

    def _ask(
        self,
        method: str,
        path: str,
        parse: Callable[[dict[str, Any], str], _T],
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        retry: bool = True,
    ) -> _T:
        """Send one API request with pacing and retries; return ``parse(body, where)`` of
        the decoded JSON object (``where`` names the request for messages). An answer that
        ``parse`` refuses (InvalidResponse: a page of the wrong shape) is asked again as one
        that is not JSON is, within the same few tries.

        Raises
        ------
        RetryableApiError
            Still failing after ``max_attempts`` tries (408/5xx/transport), or after 4 x that
            many 429s.
        PermanentApiError
            Any other 4xx (AuthenticationError for 401/403, NotFoundError for 404), an
            answer that is not a JSON object (InvalidResponse), or a 429 asking to wait
            over ``MAX_RETRY_AFTER`` (RateLimitTooLong; until that wait is over, requests
            of the same class raise it again without being sent).
        ConfigError
            A parameter no request can carry (text holding a lone surrogate), not sent.
        """
        method = method.upper()
        klass = "read" if method in {"GET", "HEAD"} else "write"
        refused = self._refused.get(klass)
        if refused is not None and self._clock() < refused[0]:
            raise refused[1]
        headers: dict[str, str] = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or self.new_idempotency_key()
        _refuse_unsendable(method, path, params, json_body)
        attempt = limited = garbled = 0
        while True:
            attempt += 1
            self.limiter.acquire(klass)
            try:
                self.requests_sent += 1
                response = self._send(
                    self._http.build_request(
                        method, path, params=params, json=json_body, headers=headers
                    )
                )
            except (httpx.TransportError, httpx.DecodingError) as exc:
                # DecodingError (a body its Content-Encoding does not describe: a proxy's
                # doing) is no TransportError in httpx, but as transient a failure
                self.limiter.release(klass, None)
                # a transport error can quote a header: never let it show the key
                text = self._hide(str(exc))
                error: ApiError = RetryableApiError(  # which host: a DNS error names none
                    f"{method} {path} at {self._shown_base}: {type(exc).__name__}: {text}"
                )
            except BaseException:
                self.limiter.release(klass, None)  # or the limiter counts it in flight for ever
                raise
            else:
                self.limiter.release(klass, response.headers, refused=response.status_code == 429)
                if not response.is_success:
                    where = f"{path} at {self._shown_base}"
                    error = _error_from(response, method, where, self._clock(), self._hide)
                else:
                    where = f"{path} at {self._shown_base}"
                    try:
                        return parse(_decode(response, method, where), f"{method} {where}")
                    except InvalidResponse as exc:
                        # a 2xx cut short or replaced by a proxy's page: a read may be asked
                        # again, a few times; a write may have been done, so it is not
                        garbled += 1
                        if method not in ("GET", "HEAD") or garbled >= GARBLED_ATTEMPTS:
                            raise
                        error = RetryableApiError(
                            f"{exc.args[0]} (asking again)",  # str(exc) adds the status
                            status_code=exc.status_code,
                            request_id=exc.request_id,
                        )
            if isinstance(error, RateLimitTooLong):
                self._refused[klass] = (self._clock() + error.retry_after, error)
            # 429s have their own, larger budget: the server says when to come back, and a
            # busy limit shared by parallel slices should slow a run, not end it
            limited += isinstance(error, RateLimited)
            failures = attempt - limited - garbled  # each kind has its own budget
            if (
                not error.retryable
                or not retry
                or failures >= self.max_attempts
                or limited >= RATE_LIMITED_ATTEMPTS * self.max_attempts
            ):
                log.info("kirim api error (giving up): %s", error)  # the caller reports it
                raise error
            self.retries += 1
            delay = self._delay(attempt, error)
            log.info("kirim api: retrying in %.2fs after %s", delay, error)
            if self._on_retry is not None:
                self._on_retry(delay, error)
            if isinstance(error, RateLimited):
                self.limiter.block(klass, delay)
            else:
                self._sleep(delay)

    def _send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its whole answer within ``answer_deadline`` seconds
        (httpx's timeout bounds each read, not the answer) and before :meth:`interrupt`."""
        deadline = time.monotonic() + self.answer_deadline
        place_filter()  # on a logger the HTTP stack made since (kirim_events.logsecrets)
        response = self._http.send(request, stream=True)
        try:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if self._interrupted.is_set():
                    raise Interrupted("the client was interrupted while it read an answer")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(
                        f"the answer took over {self.answer_deadline:g} s", request=request
                    )
        finally:
            response.close()
        # whole and decoded (so without the headers that described the encoded stream)
        headers = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() not in _STREAM_HEADERS
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=b"".join(chunks),
            request=request,
            extensions=response.extensions,
        )

    def _delay(self, attempt: int, error: ApiError) -> float:
        ceiling: float = min(self.max_backoff, self.backoff * float(1 << min(attempt - 1, 30)))
        with self._rng_lock:
            jitter = self._rng.uniform(0, ceiling)
        if isinstance(error, RateLimited) and error.retry_after is not None:
            # Never earlier than Kirim asked; a little jitter so threads do not stampede.
            return error.retry_after + jitter * 0.1
        if isinstance(error, RateLimited):
            # A 429 that says nothing (a proxy's): the limit's window is unknown, so wait at
            # least 2 s, 4 s, 8 s ... (up to max_backoff), never a jittered instant.
            floor: float = min(self.max_backoff, float(1 << min(attempt, 30)))
            return max(floor, ceiling) + jitter * 0.1
        return jitter

    # ------------------------------------------------------------------ deliveries

    def list_deliveries(
        self,
        *,
        cursor: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        **filters: str | datetime | None,
    ) -> Page:
        """Fetch one page of ``GET /v1/webhook_deliveries``.

        ``filters`` (``subscription_id``, ``status``, ``event_type``, ``event_id``,
        ``created_after``, ``created_before``; datetimes are formatted for Kirim) must be the
        same on every page of one walk: cursors are filter-bound.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be 1-{MAX_PAGE_SIZE}, got {limit}")
        params = _params(filters)
        params["limit"] = str(limit)
        if cursor is not None:
            params["cursor"] = cursor
        return self._ask("GET", "/v1/webhook_deliveries", _page, params=params)

    def iter_pages(
        self,
        *,
        cursor: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        **filters: str | datetime | None,
    ) -> Iterator[tuple[Page, str | None]]:
        """Walk every page; yield ``(page, cursor used to fetch it)``.

        The cursor is sent back verbatim with the same filters each time; a checkpoint
        stores ``page.next_cursor`` to resume after the page is durably handled.

        Raises
        ------
        InvalidResponse
            The history would be walked for ever: a next cursor repeats one of this walk's,
            or ``MAX_EMPTY_PAGES`` pages in a row are empty or hold only rows of the last
            page that had rows, yet say there is more.
        """
        seen: set[str] = set() if cursor is None else {cursor}
        # pages in a row that bring no row beyond those of the last page that had rows:
        # empty pages, and copies of that page (a cursor that does not move on), also with
        # empty pages between the copies
        stale = n = 0
        all_empty = True
        before: set[tuple[str | None, int | None, datetime | None, str | None]] = set()
        while True:
            page = self.list_deliveries(cursor=cursor, limit=limit, **filters)
            n += 1
            yield page, cursor
            if not page.has_more:
                return
            cursor = page.next_cursor
            rows = {(d.id, d.attempt, d.created_at, d.payload) for d in page.deliveries}
            if rows <= before:
                stale, all_empty = stale + 1, all_empty and not rows
            else:
                stale, all_empty = 0, True
            before = rows or before
            if cursor is not None and cursor in seen:
                raise InvalidResponse(
                    f"the history's pages loop: page {n} of this walk points back to the"
                    f" cursor of an earlier page ({_short(cursor)}); stopped walking"
                )
            if stale >= MAX_EMPTY_PAGES and all_empty:
                raise InvalidResponse(
                    f"{stale} empty pages in a row of the history each say there is more;"
                    " stopped walking"
                )
            if stale >= MAX_EMPTY_PAGES:
                raise InvalidResponse(
                    f"{stale} pages in a row of the history hold only rows of the page before"
                    " or none (its cursors do not move on), each saying there is more;"
                    " stopped walking"
                )
            if cursor is not None:
                seen.add(cursor)

    def get_delivery(self, delivery_id: str) -> Delivery:
        """``GET /v1/webhook_deliveries/{id}`` (assumed endpoint) as a Delivery."""
        body = self.request("GET", f"/v1/webhook_deliveries/{_path_id(delivery_id)}")
        return Delivery.from_api(_data_object(body))

    def get_subscription(self, subscription_id: str, *, retry: bool = True) -> dict[str, Any]:
        """``GET /v1/webhook_subscriptions/{id}`` (assumed endpoint): the subscription object
        (``status`` is ``active``, or ``disabled`` after Kirim's auto-disable); ``retry`` as
        for :meth:`request`."""
        path = f"/v1/webhook_subscriptions/{_path_id(subscription_id)}"
        body = self.request("GET", path, retry=retry)
        return _data_object(body)

    def replay(self, delivery_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Ask Kirim to send a stored delivery again (a new delivery row); return its object."""
        body = self.request(
            "POST",
            f"/v1/webhook_deliveries/{_path_id(delivery_id)}/replay",
            idempotency_key=idempotency_key or self.new_idempotency_key(),
        )
        return _data_object(body)

    def bulk_replay(
        self,
        subscription_id: str,
        *,
        status: str = "dead",
        event_type: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> BulkReplayResult:
        """``POST /v1/webhook_deliveries/bulk_replay`` once (at most 1000 replays per call).

        When the result is ``capped``, narrow the window and call again (see
        :func:`kirim_events.reconcile.bulk_replay_window` for the splitting loop).
        """
        if status not in {"dead", "failed"}:
            raise ValueError("bulk_replay status must be 'dead' or 'failed'")
        payload: dict[str, Any] = {"subscription_id": subscription_id, "status": status}
        payload.update(
            _params(
                {
                    "event_type": event_type,
                    "created_after": created_after,
                    "created_before": created_before,
                }
            )
        )
        body = self.request(
            "POST",
            "/v1/webhook_deliveries/bulk_replay",
            json_body=payload,
            idempotency_key=idempotency_key or self.new_idempotency_key(),
        )
        data = _data_object(body)
        enqueued = _opt_int(data.get("enqueued"))
        if enqueued is None:
            raise InvalidResponse("bulk_replay answer has no integer 'enqueued'")
        return BulkReplayResult(enqueued=enqueued, capped=bool(data.get("capped")))


# --------------------------------------------------------------------------- helpers


def _refuse_unsendable(
    method: str, path: str, params: Mapping[str, str] | None, body: Mapping[str, Any] | None
) -> None:
    """ConfigError for a parameter no request can carry: text holding a lone surrogate,
    which is how Python reads a command-line byte that is no UTF-8 (an é typed in a Latin-1
    terminal). httpx raised UnicodeEncodeError building the request: a traceback."""
    for source in (params or {}, body or {}):
        for name, value in source.items():
            if isinstance(value, str) and _unicode(value) is not value:
                raise ConfigError(
                    f"{method} {path}: {name} {value!r} is no Unicode text (a byte"
                    " that is no UTF-8, typed in another encoding?): not sent"
                )


def check_id(value: str) -> None:
    """ValueError unless ``value`` can be an id in a path (no slash, no dot segment, not
    empty, Unicode text): what the client's requests by id refuse, for a caller to check
    first. A lone surrogate (a command-line byte that is no UTF-8) made quote() raise
    UnicodeEncodeError: deliveries replay, which checks ids first, then met it as a
    traceback."""
    if not value or "/" in value or value in {".", ".."} or _unicode(value) is not value:
        raise ValueError(f"not a valid id: {value!r}")


def _path_id(value: str) -> str:
    """``value`` as one path segment: a slash or a dot segment is refused, and the rest is
    escaped, so that the server reads exactly this id (``wbd_1#x`` went out as ``wbd_1``,
    and ``%2e%2e`` reached the server as ``..``)."""
    check_id(value)
    return quote(value, safe="")


def _params(filters: Mapping[str, str | datetime | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in filters.items():
        if value is None:
            continue
        out[key] = format_time(value) if isinstance(value, datetime) else str(value)
    return out


class _TooDeep(ValueError):
    """JSON nested deeper than Python's decoder reads."""


def _json(response: httpx.Response) -> Any:
    """The answer's JSON; ValueError when it is none, _TooDeep when it is nested too deeply
    to read (a history row's ``payload`` object may be: the decoder's RecursionError was
    taken by no caller for a bad answer, and a backfill ended in a traceback)."""
    try:
        return response.json()
    except RecursionError:
        raise _TooDeep from None


def _decode(response: httpx.Response, method: str, where: str) -> dict[str, Any]:
    try:
        body = _json(response)
    except ValueError as exc:
        why = (
            "is JSON nested too deeply to read"
            if isinstance(exc, _TooDeep)
            else "is not JSON (is KIRIM_API_URL Kirim's API?)"
        )
        raise InvalidResponse(
            f"{method} {where}: the answer {why}",
            status_code=response.status_code,
            request_id=response.headers.get("X-Request-Id"),
        ) from None
    if not isinstance(body, dict):
        raise InvalidResponse(
            f"{method} {where}: the answer is JSON {type(body).__name__}, not an object",
            status_code=response.status_code,
            request_id=response.headers.get("X-Request-Id"),
        )
    return body


def _as_is(body: dict[str, Any], where: str) -> dict[str, Any]:
    return body


def _data_object(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    if not isinstance(data, dict):
        raise InvalidResponse("answer has no 'data' object", request_id=_rid(body))
    return data


def _rid(body: Mapping[str, Any]) -> str | None:
    rid = body.get("request_id")
    return rid if isinstance(rid, str) else None


def _page(body: Mapping[str, Any], where: str) -> Page:
    data = body.get("data")
    if not isinstance(data, list):
        raise InvalidResponse(f"{where}: the page has no 'data' array", request_id=_rid(body))
    cursor = body.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise InvalidResponse(f"{where}: next_cursor is not a string", request_id=_rid(body))
    if cursor is not None and _unicode(cursor) is not cursor:
        # an escaped lone surrogate: no URL carries it (httpx raised UnicodeEncodeError
        # building the next request, after a backfill had checkpointed the cursor)
        raise InvalidResponse(
            f"{where}: next_cursor is no Unicode text (it holds a lone UTF-16 surrogate"
            f" escape), so it cannot be sent back: {_short(_unicode(cursor))}",
            request_id=_rid(body),
        )
    has_more_raw = body.get("has_more")
    # has_more may be missing (tolerance): then a cursor means "more"; an empty one is no
    # cursor (some APIs end their pages with next_cursor "", as Slack's do)
    has_more = has_more_raw if isinstance(has_more_raw, bool) else bool(cursor)
    if has_more and not cursor:
        raise InvalidResponse(
            f"{where}: the page says has_more but gives no next_cursor", request_id=_rid(body)
        )
    return Page(
        deliveries=[Delivery.from_api(item) for item in data if isinstance(item, Mapping)],
        next_cursor=cursor if has_more else None,
        has_more=has_more,
        request_id=_rid(body),
        unreadable=[json.dumps(item) for item in data if not isinstance(item, Mapping)],
    )


def _error_from(
    response: httpx.Response,
    method: str,
    path: str,
    now: float,
    hide: Callable[[str], str] = lambda text: text,
) -> ApiError:
    """The error of an answer that is no success; ``hide`` blanks the key out of each text
    the server gave (a gateway's 401 may quote the Authorization header it refused)."""
    status = response.status_code
    etype = code = message = rid = None
    try:
        body = _json(response)
    except ValueError:
        body = None
    enveloped = False  # Kirim's error object: an unknown id at Kirim, not another server
    if isinstance(body, dict):
        err = body.get("error")
        if enveloped := isinstance(err, dict):
            etype, code = _opt_str(err.get("type")), _opt_str(err.get("code"))
            message, rid = _opt_str(err.get("message")), _opt_str(err.get("request_id"))
        rid = rid or _opt_str(body.get("request_id"))
    rid = rid or response.headers.get("X-Request-Id")
    etype, code, message, rid = (
        None if t is None else hide(t) for t in (etype, code, message, rid)
    )
    # the reason phrase too: a gateway's "401 refused Bearer kdv_live_..." put the key in
    # the error (so in the CLI's error line and kirim_events.client's log) when no JSON came
    text = f"{method} {path}: {message or hide(response.reason_phrase) or 'error'}"
    if 300 <= status < 400 and "Location" in response.headers:
        # not followed (the key must not go where it points); say where, without a query
        text += f" (redirected to {shown_url(hide(response.headers['Location']))})"
    kw: dict[str, Any] = {"status_code": status, "type": etype, "code": code, "request_id": rid}
    if status == 429:
        wait = retry_after(response.headers, now)
        if wait is not None and wait > MAX_RETRY_AFTER:
            # per-minute limits (kirim-api.md §7.2) never ask this much: do not sit silently
            # for hours or days; a backfill keeps its checkpoint for a later run
            return RateLimitTooLong(
                f"{text} (Kirim asks to wait {wait:.0f} s, more than {MAX_RETRY_AFTER} s: "
                "stopped; run again later)",
                retry_after=wait,
                **kw,
            )
        return RateLimited(text, retry_after=wait, **kw)
    if status == 408 or status >= 500 or code == "idempotency_in_progress":
        return RetryableApiError(text, **kw)
    if status in (401, 403):
        return AuthenticationError(text, **kw)
    if status == 404:
        if not enveloped:
            text += " (no Kirim error in the answer: is KIRIM_API_URL Kirim's API?)"
        return NotFoundError(text, **kw)
    return PermanentApiError(text, **kw)
