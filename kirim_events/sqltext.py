"""Values written into DuckDB SQL text: string literals, identifiers and instants, quoted.

The lake's views are SQL text built from file paths (a lake folder may be named anything),
type names and times; every such value goes through here, so none can end a literal or an
identifier early. DuckDB reads standard SQL strings: a backslash is an ordinary character,
and the only escape is a doubled quote.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["quote_identifier", "quote_literal", "timestamp_literal"]


def quote_literal(text: str) -> str:
    """``text`` as a SQL string literal.

    >>> quote_literal("it's")
    "'it''s'"
    """
    return "'" + text.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (a table, view or column name).

    Raises ValueError for the empty name, which SQL cannot quote.

    >>> print(quote_identifier("date"))
    "date"
    """
    if not name:
        raise ValueError("an SQL identifier cannot be empty")
    return '"' + name.replace('"', '""') + '"'


def timestamp_literal(when: datetime) -> str:
    """``when`` as a ``TIMESTAMPTZ`` literal, to the microsecond.

    Raises ValueError for a naive datetime: DuckDB would read it in the session's time zone.

    >>> from datetime import UTC
    >>> timestamp_literal(datetime(2026, 5, 1, 9, tzinfo=UTC))
    "TIMESTAMPTZ '2026-05-01T09:00:00+00:00'"
    """
    if when.utcoffset() is None:
        raise ValueError(f"a timestamp literal needs an aware datetime, got {when!r}")
    return "TIMESTAMPTZ " + quote_literal(when.isoformat())
