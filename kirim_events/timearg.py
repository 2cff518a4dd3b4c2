"""Times that people type or pass as arguments (``as_of``, ``since``, ``until``).

One reader for every such argument, so that the library, its core helpers and the CLI
agree on what a text means. Unlike :func:`kirim_events.events.parse_time`, which reads
what Kirim sends, it never takes digits for unix seconds: ``20260501`` typed as a time
is a mistake to report, not 1970-08-23.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING, Any, TypeAlias

from kirim_events.errors import ConfigError
from kirim_events.events import parse_time

__all__ = ["TimeLike", "is_span", "parse_when", "read_time", "to_utc"]

if TYPE_CHECKING:  # numpy is no dependency: only a type checker needs its name
    import numpy as np

    TimeLike: TypeAlias = datetime | date | str | np.datetime64[Any]
    """A time argument; a pandas Timestamp is a datetime. A NumPy ``datetime64`` as well:
    without it in the alias a type checker flagged ``lake.as_of(np.datetime64(...))``, an
    input the docs name."""
else:
    TimeLike = datetime | date | str

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")
_SPAN = re.compile(r"^(\d+)\s*([smhdw])$")
# a date and time without an offset, then " UTC": how Polars prints a UTC timestamp
_SHOWN_UTC = re.compile(r"(\d{4}-\d{2}-\d{2}[T ][\d:.]+)\s+UTC", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_time(
    value: TimeLike, *, end_of_day: bool = False, now: datetime | None = None
) -> datetime | None:
    """``value`` as an aware UTC datetime, or None when it names no time.

    Accepts an aware datetime, a naive one (taken as UTC), a NumPy ``datetime64`` (naive), a
    date (its midnight, or its last microsecond with ``end_of_day``), and ISO 8601 text: a
    date, or a date and time with or without seconds, a fraction and an offset (no offset
    means UTC; so does `` UTC`` after it, as Polars prints a time). Given ``now``, also
    ``now`` and a span before it: ``30m``, ``12h``, ``7d``, ``2w``.

    >>> read_time("2026-05-01T09:00+07:00").isoformat()
    '2026-05-01T02:00:00+00:00'
    >>> read_time("20260501") is None
    True
    """
    if type(value).__module__ == "numpy" and type(value).__name__ == "datetime64":
        instant = _from_numpy(value, end_of_day)  # naive: UTC
        return None if instant is None else instant.replace(tzinfo=UTC)
    if isinstance(value, datetime):
        if value != value:  # pandas' NaT (a datetime that is no time; what .max() of none is)
            return None
        try:
            aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # 0001-01-01 at +01:00 is before the first UTC instant
            return None
        # a plain datetime to the microsecond, the lake's precision: a pandas Timestamp
        # stayed one, nanoseconds and all (as_of_ts, the Lake's repr and the SQL literal)
        return datetime.combine(aware.date(), aware.timetz()).replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, dtime.max if end_of_day else dtime.min, UTC)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or _NUMBER.fullmatch(text):
        return None
    if now is not None:
        span = _SPAN.match(text.lower())
        if text.lower() == "now":
            return read_time(now)
        if span:
            try:
                return now - timedelta(seconds=int(span.group(1)) * _UNITS[span.group(2)])
            except (OverflowError, ValueError):  # before the first instant (ValueError:
                return None  # more digits than int() reads, 4300)
    shown = _SHOWN_UTC.fullmatch(text)
    if shown:  # as Polars shows a UTC time (2026-05-01 09:00:00 UTC): pasted from a table
        return read_time(shown.group(1), end_of_day=end_of_day)
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


def _from_numpy(value: Any, end_of_day: bool) -> datetime | None:
    """A ``numpy.datetime64`` (what pandas' ``.to_numpy()`` and NumPy give) as a naive
    datetime; a day, week, month or year with ``end_of_day`` as its last microsecond, as a
    date is read. None for NaT and for an instant outside Python's datetime (numpy is not
    imported: the value brings it)."""
    unit = value.dtype.str.partition("[")[2].rstrip("]").lstrip("0123456789")  # "D", "us"
    if end_of_day and unit in ("D", "W", "M", "Y"):
        # the next period's first microsecond, less one (datetime64 - int counts in its unit)
        value = (value + 1).astype("datetime64[us]") - 1
    item = value.astype("datetime64[us]").item()
    if not isinstance(item, datetime):  # None for NaT; an int beyond datetime's range
        return None
    if int(value.astype("datetime64[Y]").astype("int64")) + 1970 != item.year:
        return None  # astype wrapped round past datetime64[us]'s range, silently
    return item


def _shown(value: object) -> str:
    """``value`` as an error quotes it: its repr, cut to 60 characters (a mistyped span of
    thousands of digits made an error of thousands of characters)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_span(text: str) -> bool:
    """``text`` (stripped, lower case) is a span ago such as ``12h`` or ``7d``."""
    return _SPAN.match(text) is not None


def to_utc(
    value: TimeLike, *, now: datetime, name: str = "time", end_of_day: bool = False
) -> datetime:
    """Read a time argument as :func:`read_time` does, spans counted back from ``now``.

    Raises ConfigError naming the argument (``name``: ``since``, ``as_of``; the CLI passes
    its flag, ``--since``) when ``value`` names no time.
    """
    when = read_time(value, end_of_day=end_of_day, now=now)
    if when is not None:
        return when
    if isinstance(value, datetime) and value == value:  # not NaT: a real instant UTC can't hold
        raise ConfigError(f"{name} {_shown(value)} is out of range")
    if isinstance(value, str) and is_span(value.strip().lower()):
        raise ConfigError(f"{name} {_shown(value)} reaches back before the year 1")
    raise ConfigError(
        f"{name} {_shown(value)} is not a time: use ISO 8601 (2026-05-01T00:00:00Z), "
        "a date (2026-05-01), 'now' or a span ago (30m, 12h, 7d)"
    )


def parse_when(value: TimeLike, *, now: datetime, name: str = "time") -> datetime:
    """Read a bound of Kirim's history (``since``, ``until``): :func:`to_utc`, and no
    earlier than 1970.

    Raises ConfigError with the argument's ``name`` for anything else, or a time before 1970.
    """
    old = ConfigError(f"{name} {_shown(value)} is before 1970: Kirim keeps no history that old")
    try:
        when = to_utc(value, now=now, name=name)
    except ConfigError:
        if isinstance(value, str) and is_span(value.strip().lower()):
            raise old from None  # a span too long for any instant, 1970 the nearer limit
        raise
    if when < _EPOCH:
        raise old
    return when
