"""Quoted values come back from DuckDB exactly as they went in, whatever they hold."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import duckdb
import pytest

from kirim_events.sqltext import quote_identifier, quote_literal, timestamp_literal

HOSTILE = [
    "it's",
    "'; DROP TABLE t; --",
    'say "hi"',
    '"; DROP TABLE t; --',
    "''",
    "back\\slash\\n and \\'",
    "naïve 日本語 😀 \u200b",
    "line\nbreak\ttab",
    "semi;colon",
    "$$dollar$$",
]


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    yield con
    con.close()


@pytest.mark.parametrize("text", [*HOSTILE, ""])
def test_a_literal_reads_back_as_the_same_text(con: duckdb.DuckDBPyConnection, text: str) -> None:
    row = con.execute(f"SELECT {quote_literal(text)}, 1").fetchall()
    assert row == [(text, 1)]  # the second column proves nothing after the literal was eaten


@pytest.mark.parametrize("name", HOSTILE)
def test_an_identifier_names_exactly_that_table_and_column(
    con: duckdb.DuckDBPyConnection, name: str
) -> None:
    table, column = quote_identifier(name), quote_identifier(name + " col")
    con.execute(f"CREATE TABLE {table} ({column} VARCHAR)")
    con.execute(f"INSERT INTO {table} VALUES ({quote_literal(name)})")
    result = con.execute(f"SELECT {column} FROM {table}")
    assert result.fetchall() == [(name,)]
    assert [d[0] for d in result.description] == [name + " col"]
    assert con.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [(name,)]


def test_an_empty_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be empty"):
        quote_identifier("")


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 5, 1, 9, 30, 15, 123456, UTC),
        datetime(2026, 5, 1, 9, tzinfo=timezone(timedelta(hours=7))),
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_a_timestamp_reads_back_as_the_same_instant(
    con: duckdb.DuckDBPyConnection, when: datetime
) -> None:
    con.execute("SET TimeZone = 'America/New_York'")  # not the zone of the value
    (back,) = con.execute(f"SELECT {timestamp_literal(when)}").fetchone() or (None,)
    assert back == when
    assert back.utcoffset() is not None


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an aware datetime"):
        timestamp_literal(datetime(2026, 5, 1, 9))
