"""One exception tree for kirim-events, split by what the caller should do.

    KirimEventsError
    ├── ConfigError                    bad settings or arguments (permanent)
    ├── SignatureError                 the webhook is not provably Kirim's (answer 401)
    │   ├── SignatureMissing             no X-Kirim-Signature header
    │   ├── SignatureMalformed           header present but unreadable (no t=, no v1=, bad t)
    │   ├── SignatureExpired             t is more than `tolerance` seconds from now
    │   └── SignatureMismatch            no v1 matches any configured secret
    ├── PayloadError                   signed body we cannot turn into events (quarantine it)
    │   ├── InvalidJSON                  not UTF-8 JSON
    │   ├── NotAnObject                  JSON, but not an object
    │   ├── UnknownShape                 an object in none of the three body shapes
    │   ├── InvalidEventType             an event type that is not ``a.b`` lowercase, <= 64 chars
    │   └── ParseFailure                 the parser failed on it (logged: our bug, or odd JSON)
    ├── StorageError                   our own storage failed (retryable: answer 503)
    ├── LakeError                      the lake on disk is unusable
    │   ├── NotALakeError                no lake there: missing, a file, or others' files
    │   └── SchemaVersionError           written by a newer, incompatible kirim-events
    ├── Interrupted                    a client's wait (Retry-After, backoff) cut short on stop
    └── ApiError                       an error from Kirim's REST API
        ├── RetryableApiError            408, 429, 5xx, transport errors: try again later
        │   └── RateLimited                429, carries retry_after
        └── PermanentApiError            other 4xx: do not retry
            ├── AuthenticationError        401 / 403
            ├── NotFoundError              404
            ├── InvalidResponse            a 2xx answer that is not the JSON Kirim documents
            ├── RateLimitTooLong           429 asking to wait over an hour: stop, run later
            └── CursorRefused              history cursors refused again and again: stop

Retry code asks ``err.retryable``, not which class it is.
"""

from __future__ import annotations


class KirimEventsError(Exception):
    """Base of every error raised by kirim-events."""

    retryable: bool = False


class ConfigError(KirimEventsError, ValueError):
    """Settings or arguments are invalid; raised before any work starts (also a
    ValueError, as Python raises for a bad value)."""


class SignatureError(KirimEventsError):
    """The request's signature does not prove it came from Kirim unaltered.

    ``reason`` is a short machine-readable word used in receipts and metrics.
    The message never contains a secret.
    """

    reason: str = "signature"


class SignatureMissing(SignatureError):
    """Raised when the request carries no signature header."""

    reason = "missing"


class SignatureMalformed(SignatureError):
    """Raised when the header has no ``t=``, a non-integer ``t``, or no ``v1=``."""

    reason = "malformed"


class SignatureExpired(SignatureError):
    """Raised when ``t`` is further than the tolerance from the current time."""

    reason = "stale"


class SignatureMismatch(SignatureError):
    """Raised when no ``v1`` value matches any configured secret."""

    reason = "mismatch"


class PayloadError(KirimEventsError):
    """A (signed) body cannot be parsed into events; keep it in quarantine."""

    reason: str = "payload"


class InvalidJSON(PayloadError):
    """Raised when the body is not valid UTF-8 JSON."""

    reason = "invalid_json"


class NotAnObject(PayloadError):
    """Raised when the body is valid JSON but not an object."""

    reason = "not_an_object"


class UnknownShape(PayloadError):
    """Raised when a JSON object matches none of the known body shapes."""

    reason = "unknown_shape"


class InvalidEventType(PayloadError):
    """Raised when the event type does not match ``^[a-z_]+(\\.[a-z_]+)+$`` (<= 64 chars)."""

    reason = "invalid_type"


class ParseFailure(PayloadError):
    """Raised when the parser fails on a body of a known shape: a bug in kirim-events or a
    form of valid JSON nobody foresaw. The body is quarantined all the same; the failure
    is logged as an error, so that it is looked into."""

    reason = "parse_error"


class StorageError(KirimEventsError):
    """Our own storage (journal, lake, state files) failed. Retryable."""

    retryable = True


class LakeError(KirimEventsError):
    """The lake cannot be used as asked."""


class NotALakeError(LakeError):
    """Raised when the location given for a lake holds none: a folder or bucket that does
    not exist, a file, or a folder holding other things and none of a lake's. The location
    is wrong (a setting to change, as a ConfigError), not the lake."""


class SchemaVersionError(LakeError):
    """The lake was written by a newer, incompatible version of kirim-events."""


class Interrupted(KirimEventsError):
    """:meth:`KirimClient.interrupt` was called while the client waited to retry or pace."""


class ApiError(KirimEventsError):
    """An error answer (or no answer) from Kirim's REST API.

    Carries the fields of Kirim's error envelope so that logs can quote ``request_id``.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.status_code is not None:
            parts.append(f"status={self.status_code}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class RetryableApiError(ApiError):
    """408, 429, 5xx or a transport error: the same request may succeed later."""

    retryable = True


class RateLimited(RetryableApiError):
    """429 from Kirim; ``retry_after`` is the server's advice in seconds (or None)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class PermanentApiError(ApiError):
    """A 4xx other than 408/429: retrying the same request will not help."""


class AuthenticationError(PermanentApiError):
    """401 or 403: the API key is missing, wrong or expired."""


class NotFoundError(PermanentApiError):
    """404: the resource does not exist (or was purged after 30 days)."""


class InvalidResponse(PermanentApiError):
    """A 2xx answer we cannot read (not JSON, no ``data``, a broken page): do not retry."""


class RateLimitTooLong(PermanentApiError):
    """429 asking to wait longer than a run should sit silently; ``retry_after`` seconds.

    The client then refuses further requests of that class (reads or writes) until the
    wait is over, without sending them: every one would be refused the same way.
    """

    def __init__(self, message: str, *, retry_after: float, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class CursorRefused(PermanentApiError):
    """Kirim kept refusing the history's cursors and no new chain of pages could get past
    the refusals without skipping rows: the walk stops rather than loop. Carries the last
    refusal's ``status_code``, ``code`` and ``request_id``; ``refusals`` counts them."""

    def __init__(self, message: str, *, refusals: int, cause: ApiError) -> None:
        super().__init__(
            message,
            status_code=cause.status_code,
            type=cause.type,
            code=cause.code,
            request_id=cause.request_id,
        )
        self.refusals = refusals
