"""Times that people type or pass as arguments (``as_of``, ``since``, ``until``).

One reader for every such argument, so that the library, its core helpers and the CLI
agree on what a text means. Unlike :func:`kirim_events.events.parse_time`, which reads
what Kirim sends, it never takes digits for unix seconds: ``20260501`` typed as a time
is a mistake to report, not 1970-08-23.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from datetime import time as dtime

from kirim_events.events import parse_time

__all__ = ["TimeLike", "read_time"]

TimeLike = datetime | date | str

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


def read_time(value: TimeLike, *, end_of_day: bool = False) -> datetime | None:
    """``value`` as an aware UTC datetime, or None when it names no time.

    Accepts an aware datetime, a naive one (taken as UTC), a date (its midnight, or its
    last microsecond with ``end_of_day``), and ISO 8601 text: a date, or a date and time
    with or without seconds, a fraction and an offset (no offset means UTC).

    >>> read_time("2026-05-01T09:00+07:00").isoformat()
    '2026-05-01T02:00:00+00:00'
    >>> read_time("20260501") is None
    True
    """
    if isinstance(value, datetime):
        if value != value:  # pandas' NaT (a datetime that is no time; what .max() of none is)
            return None
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # 0001-01-01 at +01:00 is before the first UTC instant
            return None
    if isinstance(value, date):
        return datetime.combine(value, dtime.max if end_of_day else dtime.min, UTC)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or _NUMBER.fullmatch(text):
        return None
    if _DATE.fullmatch(text):
        try:
            return read_time(date.fromisoformat(text), end_of_day=end_of_day)
        except ValueError:
            return None
    parsed = parse_time(text)
    if parsed is not None:
        return parsed
    try:  # what parse_time leaves to Python: no seconds (09:00), a space for the T
        return read_time(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None
