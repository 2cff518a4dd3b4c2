"""Shared state and request helpers of the emulated REST API: errors, auth, rate-limit
buckets, idempotency records, filter-bound cursors, paging and input validation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request

from kirim_events.config import valid_host
from kirim_events.emulator.faults import TokenBucket
from kirim_events.emulator.ids import ulid
from kirim_events.emulator.store import DeliveryRow, Store, Subscription, same_event_type
from kirim_events.events import EVENT_TYPE_PATTERN, header_number
from kirim_events.timearg import read_time

__all__ = ["ANONYMOUS", "BULK_REPLAY_CAP", "ApiError", "ApiState", "Handler"]

BULK_REPLAY_CAP = 1000
ANONYMOUS = ""
"""The rate-limit bucket of requests without a valid key (no key can be empty)."""
ORGANISATION = "organisation"
"""The rate-limit bucket of every valid key: the emulator is one organisation."""
KEY_PATTERN = re.compile(r"^kdv_live_[A-Za-z0-9_-]{24}$")
SUBSCRIPTION_PATTERN = re.compile(r"^wbs_[0-9A-HJKMNP-TV-Z]{26}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ApiError(Exception):
    """An error answer in Kirim's envelope."""

    def __init__(
        self, status: int, type_: str, code: str, message: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param


def bad(code: str, message: str, param: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error`` with ``code`` and the offending ``param``."""
    return ApiError(400, "invalid_request_error", code, message, param)


def not_found(what: str, ident: str) -> ApiError:
    """A 404 ``resource_not_found`` for ``what`` with id ``ident``."""
    return ApiError(404, "not_found", "resource_not_found", f"no {what} with id {ident!r}", "id")


@dataclass
class ApiState:
    """Everything the handlers share: the store, keys, clock, buckets, cursor key."""

    store: Store
    keys: tuple[str, ...] = field(repr=False)  # API keys: never in a repr
    clock: Callable[[], float]
    rng: random.Random
    read_limit: int
    write_limit: int
    allow_http_loopback: bool
    cursor_key: bytes = field(repr=False)
    retention_days: float | None = None

    def __post_init__(self) -> None:
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        # (api key, Idempotency-Key) -> (expires, fingerprint, status, payload)
        self.idempotency: dict[tuple[str, str], tuple[float, str, int, dict[str, Any]]] = {}

    def cutoff(self) -> float | None:
        """Rows created before this instant are past Kirim's history window (None: all kept)."""
        if self.retention_days is None:
            return None
        return self.clock() - self.retention_days * 86400

    def delivery(self, ident: str) -> DeliveryRow:
        """The delivery row ``ident`` within the history window, or a 404."""
        row = self.store.by_id.get(ident)
        cutoff = self.cutoff()
        if row is None or (cutoff is not None and row.created_at < cutoff):
            raise not_found("webhook delivery", ident)
        return row

    def request_id(self) -> str:
        """A new ``req_`` id."""
        return ulid("req", int(self.clock() * 1000), self.rng)

    def authenticate(self, request: Request) -> str:
        """The request's API key, or a 401 ``invalid_api_key``."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "authentication_error", "invalid_api_key", "missing Bearer API key")
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(key.encode(), token.encode())
        if not matched or not KEY_PATTERN.match(token):
            raise ApiError(401, "authentication_error", "invalid_api_key", "invalid API key")
        return token

    def limit(self, key: str, write: bool) -> tuple[bool, dict[str, str]]:
        """Take a token from the read or write bucket of ``key``'s organisation.

        Kirim's buckets are per organisation and class (kirim-api.md §7.2) and the emulator
        is one organisation, so every valid key shares them; ``ANONYMOUS`` (no valid key)
        has buckets of its own.
        """
        return self._bucket(ANONYMOUS if key == ANONYMOUS else ORGANISATION, write).take()

    def spend(self, *, write: bool = False) -> None:
        """Spend the organisation's read (or write) bucket at once, as its other users would:
        its next request of that class is refused until a token has refilled."""
        self._bucket(ORGANISATION, write).spend()

    def _bucket(self, owner: str, write: bool) -> TokenBucket:
        kind = "write" if write else "read"
        bucket = self.buckets.get((owner, kind))
        if bucket is None:
            limit = self.write_limit if write else self.read_limit
            bucket = self.buckets[(owner, kind)] = TokenBucket(limit, clock=self.clock)
        return bucket

    # ------------------------------------------------------------------ cursors

    def encode_cursor(self, seq: int, filters_hash: str) -> str:
        """An opaque cursor for ``seq`` bound to ``filters_hash`` (HMAC-signed)."""
        raw = base64.urlsafe_b64encode(json.dumps({"s": seq, "f": filters_hash}).encode())
        text = raw.rstrip(b"=").decode()
        return f"{text}.{self._mac(text)}"

    def decode_cursor(self, cursor: str, filters_hash: str) -> int:
        """The ``seq`` inside ``cursor``; 400 ``invalid_cursor`` if forged or rebound."""
        text, _, mac = cursor.partition(".")
        # bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
        if not mac or not hmac.compare_digest(mac.encode(), self._mac(text).encode()):
            raise bad("invalid_cursor", "cursor is not one this API issued", "cursor")
        try:
            value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            seq, bound = int(value["s"]), str(value["f"])
        except (ValueError, KeyError, TypeError):
            raise bad("invalid_cursor", "cursor is unreadable", "cursor") from None
        if bound != filters_hash:
            raise bad(
                "invalid_cursor",
                "cursor was issued for other filters; repeat the same filters on every page",
                "cursor",
            )
        return seq

    def _mac(self, text: str) -> str:
        return hmac.new(self.cursor_key, text.encode(), hashlib.sha256).hexdigest()[:24]


Handler = Callable[[Request, ApiState], Awaitable[tuple[int, dict[str, Any]]]]


def query_limit(request: Request) -> int:
    """The validated ``limit`` query parameter (1-100, default 25)."""
    raw = request.query_params.get("limit")
    if raw is None:
        return 25
    limit = header_number(raw, 3)
    if limit is None or not 1 <= limit <= 100:
        raise bad("invalid_limit", "limit must be a whole number from 1 to 100", "limit")
    return limit


def time_param(value: Any, name: str) -> float | None:
    """An ISO-8601 parameter (a time, or a date: its midnight UTC) as unix seconds (None
    when absent); 400 when unreadable, digits too (``2026`` is no unix time here)."""
    if value is None:
        return None
    parsed = read_time(value) if isinstance(value, str) else None
    if parsed is None:
        raise bad("invalid_parameter", f"{name} must be an ISO-8601 time", name)
    return parsed.timestamp()


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); 400 when not an object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise bad("invalid_body", "request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad("invalid_body", "request body must be a JSON object")
    return value


def row_filter(f: dict[str, Any], cutoff: float | None = None) -> Callable[[DeliveryRow], bool]:
    """A predicate keeping delivery rows that match every given filter, created at or after
    ``cutoff`` when given (the history window; not a filter, so cursors are not bound to it).
    ``event_type`` matches as a subscription's list does: the status event's two names are
    one (``message.status`` finds the third shape's ``message.status_updated`` rows)."""

    def keep(row: DeliveryRow) -> bool:
        return (
            row.status != "purged"
            and (cutoff is None or row.created_at >= cutoff)
            and (f["subscription_id"] is None or row.subscription_id == f["subscription_id"])
            and (f["status"] is None or row.status == f["status"])
            and (f["event_type"] is None or same_event_type(row.event_type, f["event_type"]))
            and (f["event_id"] is None or row.event_id == f["event_id"])
            and (f["created_after"] is None or row.created_at >= f["created_after"])
            and (f["created_before"] is None or row.created_at < f["created_before"])
        )

    return keep


def filters_hash(filters: dict[str, Any]) -> str:
    """A short stable hash of the filters; cursors are bound to it."""
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def page(
    api: ApiState, request: Request, items: list[Any], keep: Callable[[Any], bool], fhash: str
) -> dict[str, Any]:
    """Newest first over ``items`` (indexed by seq), resuming below the cursor's seq."""
    limit = query_limit(request)
    cursor = request.query_params.get("cursor")
    start = api.decode_cursor(cursor, fhash) - 1 if cursor else len(items) - 1
    out: list[Any] = []
    index = min(start, len(items) - 1)
    last_seq = -1
    while index >= 0 and len(out) < limit:
        item = items[index]
        if keep(item):
            out.append(item)
            last_seq = index
        index -= 1
    has_more = any(keep(items[i]) for i in range(index, -1, -1)) if out else False
    return {
        "data": [item.to_json() for item in out],
        "has_more": has_more,
        "next_cursor": api.encode_cursor(last_seq, fhash) if has_more else None,
    }


def subscription(api: ApiState, ident: str) -> Subscription:
    """The live subscription ``ident``, or a 404."""
    sub = api.store.subscriptions.get(ident)
    if sub is None or sub.deleted:
        raise not_found("webhook subscription", ident)
    return sub


def check_url(api: ApiState, url: Any) -> str:
    """A valid webhook URL (https, or loopback http when allowed), or a 400."""
    if not isinstance(url, str):
        raise bad("invalid_webhook_url", "url is required", "url")
    try:
        # as the engine's httpx reads it: an unclosed "[" was a 500 (urlsplit raised), and a
        # port no TCP port is, or a host no request can name, a subscription whose every
        # delivery failed; Kirim refuses such a URL when it is given
        parts = httpx.URL(url)
        host = parts.raw_host.decode("ascii", "replace")
        reachable = valid_host(host) and (parts.port is None or 0 < parts.port < 65536)
    except httpx.InvalidURL:
        reachable = False
    if not reachable:
        raise bad("invalid_webhook_url", "the webhook url needs a valid host and port", "url")
    ok = parts.scheme == "https"
    if parts.scheme == "http" and api.allow_http_loopback and parts.host in _LOOPBACK:
        ok = True
    if not ok:
        raise bad("invalid_webhook_url", "the webhook url must be https", "url")
    return url


def check_events(events: Any) -> list[str]:
    """A valid event-name list (names or ``*``), or a 400."""
    if (
        not isinstance(events, list)
        or not events
        or not all(
            isinstance(e, str) and (e == "*" or (len(e) <= 64 and EVENT_TYPE_PATTERN.match(e)))
            for e in events
        )
    ):
        raise bad("invalid_parameter", "events must be a non-empty list of event names", "events")
    return list(events)
