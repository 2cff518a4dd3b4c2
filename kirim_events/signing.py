"""Sign and verify X-Kirim-Signature headers: pure functions, no I/O, injectable clock.

Header: ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` (hex read in either case). The signed
message is the ASCII ``t``, a ``.``, then the raw body bytes; the MAC is HMAC-SHA256 keyed
with the UTF-8 bytes of the whole secret string (``whsec_`` prefix included, no base64
decoding), as Kirim's official plugin does (kirim-api.md §2.1).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Iterable
from datetime import datetime

from kirim_events.config import Secret, SecretLike, as_secrets
from kirim_events.errors import (
    SignatureExpired,
    SignatureMalformed,
    SignatureMismatch,
    SignatureMissing,
)

__all__ = ["check_header", "check_tolerance", "parse_header", "sign", "verify"]

DEFAULT_TOLERANCE = 300


def check_tolerance(tolerance: int | None) -> int | None:
    """``tolerance`` if it is None or a finite number of seconds >= 0, else ValueError;
    0 (which turns the freshness check off, as in Kirim's SDK) comes back as None, so a
    caller sees the check is off in one place.

    NaN would pass every signature time (no comparison with it is true) and a negative
    value would refuse every delivery, so both are refused here rather than met per request.
    """
    if tolerance is not None and (
        isinstance(tolerance, bool) or not math.isfinite(tolerance) or tolerance < 0
    ):
        raise ValueError(
            f"tolerance must be None or a finite number of seconds >= 0, got {tolerance!r}"
        )
    return tolerance or None


_MAX_T_DIGITS = 12  # unix seconds; longer is no time at all (and int() of 5000 digits raises)


def _mac(secret: Secret, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.reveal().encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(
    body: bytes,
    secrets: SecretLike | Iterable[SecretLike],
    timestamp: int | None = None,
) -> str:
    """Build an ``X-Kirim-Signature`` value with one ``v1`` per secret.

    Parameters
    ----------
    body
        The exact bytes that will be sent.
    secrets
        One secret, a comma-separated string, or several (rotation: every active secret signs).
    timestamp
        Unix seconds; the current time when omitted.

    Examples
    --------
    >>> sign(b"{}", "whsec_x", timestamp=1)
    't=1,v1=36ee2f7498f0c1777d1312b2a7361947fe5ad31223be30d0c62421f4ca753401'
    """
    keys = as_secrets(secrets)
    if not keys:
        raise ValueError("sign() needs at least one secret")
    t = int(time.time()) if timestamp is None else int(timestamp)
    return ",".join([f"t={t}", *(f"v1={_mac(k, t, body)}" for k in keys)])


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """Split a signature header into ``(t, [v1, ...])``.

    Splits on ``,`` then on each part's first ``=``, trims blanks, ignores unknown keys
    (``v0``, a future ``v2``). Raises SignatureMissing or SignatureMalformed.
    """
    if header is None or not header.strip():
        raise SignatureMissing("missing X-Kirim-Signature header")
    stamps: list[str] = []
    v1s: list[str] = []
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "t":
            stamps.append(value)
        elif key == "v1" and value:
            v1s.append(value)
    if len(stamps) != 1:
        raise SignatureMalformed("signature header needs exactly one t= value")
    if not stamps[0].isascii() or not stamps[0].isdigit() or len(stamps[0]) > _MAX_T_DIGITS:
        raise SignatureMalformed("signature timestamp t= is not a whole number of seconds")
    if not v1s:
        raise SignatureMalformed("signature header has no v1= value")
    return int(stamps[0]), v1s


def _now_seconds(now: float | datetime | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        # a naive datetime would be read in the host's zone: datetime.utcnow() (naive UTC)
        # on a machine at UTC+7 put every signature 7 h in the past, each one "stale"
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime (or unix seconds)")
        return now.timestamp()
    return float(now)


def check_header(
    header: str | None,
    tolerance: int | None = DEFAULT_TOLERANCE,
    now: float | datetime | None = None,
) -> tuple[int, list[str]]:
    """What :func:`verify` checks before the body: the header parses and its ``t`` is
    within ``tolerance`` of ``now``. Returns ``(t, [v1, ...])``.

    A receiver can refuse a request that fails this without reading its body.

    Raises
    ------
    SignatureMissing, SignatureMalformed, SignatureExpired
    """
    t, candidates = parse_header(header)
    check_tolerance(tolerance)
    if tolerance:
        skew = _now_seconds(now) - t
        if abs(skew) > tolerance:
            raise SignatureExpired(
                f"signature timestamp is {abs(skew):.1f}s in the "
                f"{'past' if skew > 0 else 'future'}; tolerance is {tolerance}s"
            )
    return t, candidates


def verify(
    body: bytes,
    header: str | None,
    secrets: SecretLike | Iterable[SecretLike],
    tolerance: int | None = DEFAULT_TOLERANCE,
    now: float | datetime | None = None,
) -> int:
    """Check that ``body`` was signed by one of ``secrets``; return the signing time ``t``.

    Parameters
    ----------
    body
        The raw request body, exactly as received.
    header
        The ``X-Kirim-Signature`` value (None when the request had none).
    secrets
        Every secret currently accepted; a match on any one is enough (rotation).
    tolerance
        Maximum distance in seconds between ``t`` and ``now``, in the past or the future.
        ``None`` (or 0, as in Kirim's TypeScript SDK) skips only this freshness check, for
        stored events; the HMAC is always checked.
    now
        The current time (unix seconds or an aware datetime; ValueError for a naive one);
        the system clock when omitted.

    Raises
    ------
    SignatureMissing, SignatureMalformed, SignatureExpired, SignatureMismatch
        All subclasses of :class:`kirim_events.errors.SignatureError`. Messages never
        contain a secret.
    """
    keys = as_secrets(secrets)
    if not keys:
        parse_header(header)  # a missing or malformed header is named first
        raise SignatureMismatch("no secret configured to verify against")
    t, candidates = check_header(header, tolerance, now)
    # Hex is read in either case: kirim-api.md §2.1 says lower case, but an upper-cased
    # digest is the same MAC, and a 401 is final for Kirim (the event would be lost for a
    # spelling). bytes.lower() folds ASCII A-Z only, so no other character becomes hex.
    wanted = [candidate.encode("utf-8").lower() for candidate in candidates]
    matched = False
    for key in keys:
        expected = _mac(key, t, body).encode()
        for candidate in wanted:
            # Compare every pair (no early exit) so timing does not reveal which matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureMismatch(
            f"no v1 signature matches any of the {len(keys)} configured secret(s)"
        )
    return t
