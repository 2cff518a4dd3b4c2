"""Times and numbers as Kirim and Meta write them: payload times, header numbers, signature t."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["EVENT_TIME_RANGE", "header_number", "parse_time", "signature_time"]

EVENT_TIME_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
"""Payload times outside ``[start, end)`` are placeholders, not event times (Go's zero
time, unix 0, 9999-12-31; WhatsApp's business API began in 2018): the event takes the
signature's time instead."""

_UNIX = re.compile(r"\d{1,19}(\.\d+)?")
_UNIX_SCALED = 1e11
"""Unix times from this on are read as milliseconds (then micro-, nanoseconds): in seconds
they would be past the year 5000, and APIs that the docs say send seconds send these."""
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"([Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_time(value: Any) -> datetime | None:
    """Parse Kirim/Meta time values into an aware UTC datetime with microsecond precision.

    Accepts ISO-8601 (``Z`` or an offset, 0-9 fraction digits, seconds optional, either case
    of ``T`` and ``Z``; no offset means UTC) and unix seconds as a number or a decimal string
    (Meta's ``timestamp``); a number of 1e11 or more is read as milliseconds (1e14:
    microseconds, 1e17: nanoseconds). Returns None when the value is absent or unreadable.

    >>> parse_time("2026-05-23T10:00:00.123456789Z").isoformat()
    '2026-05-23T10:00:00.123456+00:00'
    >>> parse_time("1779531402").isoformat()
    '2026-05-23T10:16:42+00:00'
    >>> parse_time(1779531402250).isoformat()
    '2026-05-23T10:16:42.250000+00:00'
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
        for _ in range(3):
            if abs(seconds) < _UNIX_SCALED:
                break
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _UNIX.fullmatch(text):
        return parse_time(float(text))
    m = _ISO.fullmatch(text)
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro
        )
        if zone in (None, "Z", "z"):
            return dt.replace(tzinfo=UTC)
        zone = zone.replace(":", "")
        hours, minutes = int(zone[1:3]), int(zone[3:5])
        if hours > 23 or minutes > 59:
            return None  # no such offset (+99:99)
        offset = timedelta(hours=hours, minutes=minutes) * (1 if zone[0] == "+" else -1)
        return (dt - offset).replace(tzinfo=UTC)  # exact: no float seconds
    except (ValueError, OverflowError):
        return None


def header_number(text: str | None, digits: int = 9) -> int | None:
    """A header's whole number (ASCII digits, at most ``digits`` of them), else None.

    ``str.isdigit`` alone accepts "²" and "١", which ``int`` refuses or reads as another
    number, and ``int`` of thousands of digits raises.
    """
    value = (text or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= digits else None


def signature_time(header: str | None) -> datetime | None:
    """The ``t=`` of an X-Kirim-Signature header as a time, or None."""
    if not header:
        return None
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key.strip() == "t" and (seconds := header_number(value, 12)) is not None:
            return parse_time(seconds)
    return None
