"""Failed S3 requests told apart and worded: denied, unanswered, another failure of S3,
and a conditional write that lost (the compaction lease). One wording for what pyarrow,
DuckDB, Polars and boto3 each say their own way, never quoting a credential."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from kirim_events.errors import KirimEventsError

__all__ = [
    "BOTO_DENIED",
    "ConditionFailed",
    "ConditionsUnsupported",
    "failure_message",
    "quoted",
    "s3_failure",
    "scrub",
]


class ConditionFailed(KirimEventsError):
    """A conditional write or delete found the object changed since it was read (S3 answered
    412 PreconditionFailed or 409 ConditionalRequestConflict, or the object is gone).

    Not a StorageError: trying again cannot help, someone else wrote the object. Only the
    compaction lease sees it, and turns it into a LakeError that says so.
    """


class ConditionsUnsupported(KirimEventsError):
    """The store answered that it does not implement conditional writes (501 NotImplemented)."""


BOTO_DENIED = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "MissingAuthenticationToken",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
"""S3's codes (as boto3 gets them) of a request refused for its credentials or their
rights: the same failures as pyarrow's :data:`_DENIED`."""


_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))? during (\w+) operation")
"""How pyarrow words a failed S3 request, in its OSError and in the errors of DuckDB and
Polars that quote it: ``AWS Error ACCESS_DENIED during HeadObject operation: ...``, ``AWS
Error UNKNOWN (HTTP status 403) during GetObject operation: ...`` (the AWS SDK's name of the
error, the HTTP status where it has no name, then the request)."""

_DENIED = frozenset(
    {
        "ACCESS_DENIED",
        "EXPIRED_TOKEN",
        "INCOMPLETE_SIGNATURE",
        "INVALID_ACCESS_KEY_ID",
        "INVALID_CLIENT_TOKEN_ID",
        "INVALID_SIGNATURE",
        "MISSING_AUTHENTICATION_TOKEN",
        "REQUEST_EXPIRED",
        "SIGNATURE_DOES_NOT_MATCH",
        "UNRECOGNIZED_CLIENT",
    }
)
"""The AWS SDK's names of a request refused for its credentials or their rights (403)."""

_UNREACHABLE = frozenset({"NETWORK_CONNECTION"})
"""... of a request that got no answer: no connection, no such host, a closed port."""


def s3_failure(exc: BaseException) -> tuple[str, str] | None:
    """``(kind, request)`` of a failed S3 request quoted in ``exc`` (pyarrow's OSError, or
    DuckDB's or Polars' error holding its text): ``kind`` is ``"denied"``, ``"unreachable"``
    or the AWS SDK's name of another error (``NO_SUCH_BUCKET``, ``SLOW_DOWN``, ...),
    ``request`` the S3 operation (``HeadObject``, ``GetObject``, ...). None for any other
    failure, and for our own errors (whose message may quote pyarrow's)."""
    if isinstance(exc, KirimEventsError) or not isinstance(exc, Exception):
        return None
    found = _AWS_ERROR.search(str(exc))
    if found is None:
        return None
    code, status, request = found.groups()
    if code in _DENIED or status == "403":
        return "denied", request
    if code in _UNREACHABLE:
        return "unreachable", request
    return code if status is None else f"{code} (HTTP status {status})", request


def quoted(exc: BaseException) -> str:
    """S3's own message in pyarrow's text of a failed request: its first line."""
    return str(exc).partition(" operation: ")[2].strip().split("\n", 1)[0]


def failure_message(
    uri: str, endpoint: Callable[[], str], failure: tuple[str, str], said: str, action: str
) -> str:
    """The one line for a failed S3 request of the lake at ``uri``, met by pyarrow
    (:func:`s3_failure`) or by boto3: ``failure`` is ``(kind, request)``, ``said`` S3's own
    message (its credentials already blanked out: :func:`scrub`), quoted only for a failure
    neither denied nor unanswered; ``endpoint()`` names the endpoint tried, for one that got
    no answer; ``action`` is what the credentials must be allowed to do to the lake."""
    kind, request = failure
    if kind == "denied":
        return (
            f"access denied by S3 to the lake at {uri} ({request} refused): check "
            "the AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_SESSION_TOKEN, or your AWS profile) and that their policy lets them "
            f"{action} {uri}"
        )
    if kind == "unreachable":
        return (
            f"could not reach S3 at {endpoint()} for the lake at {uri} "
            f"({request} got no answer): check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), "
            "AWS_REGION and the network"
        )
    return (
        f"S3 failed a {request} request for the lake at {uri} ({kind}"
        f"{': ' + said if said else ''}): check the bucket, AWS_REGION and "
        "AWS_ENDPOINT_URL"
    )


def scrub(text: str, env: Mapping[str, str]) -> str:
    """``text`` with the values of the AWS credentials in ``env`` blanked out (a store may
    echo a request's headers in its error)."""
    names = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
    for value in sorted({env.get(n, "") for n in names} - {""}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text
