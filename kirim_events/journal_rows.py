"""The journal's table layout and row codecs: records and receipts <-> SQLite rows <-> Arrow.

Events and receipts are stored one column per field (times as UTC microseconds), so that an
append is a few ``executemany`` calls. A flush asks SQLite for one NDJSON text per batch
(``json_object`` per row, ``group_concat``) and parses it with Arrow's JSON reader: both run
in C without the GIL, so a flush of tens of thousands of rows does not stall the event loop
that acknowledges webhooks (one Python tuple and string per cell, as a ``fetchall`` builds,
held the GIL for ~15 us per event).
"""

from __future__ import annotations

import io
import operator
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from kirim_events.events import EventRecord
from kirim_events.schema import DELIVERY_FIELDS, INT32, LAKE_EVENT_FIELDS

__all__ = [
    "EVENT_COLUMNS",
    "OUTCOME",
    "RECEIPT_COLUMNS",
    "RECEIVED",
    "conform",
    "ddl",
    "event_row",
    "micros",
    "ndjson_select",
    "receipt_row",
    "table_from_ndjson",
]

EVENT_COLUMNS: tuple[str, ...] = tuple(f for f in LAKE_EVENT_FIELDS if f != "payload")
"""Inbox columns: what the lake keeps of a record (the raw body lives once per delivery in
``bodies``). A journal made when it also kept ``signature`` still has that column; inserts
name their columns, so it stays null there."""
RECEIPT_COLUMNS: tuple[str, ...] = tuple(n for n in DELIVERY_FIELDS if n != "ingest_seq")
OUTCOME = RECEIPT_COLUMNS.index("outcome")
RECEIVED = RECEIPT_COLUMNS.index("received_at")
_TIMES = frozenset({"occurred_at", "received_at", "created_at"})
_INTS = frozenset({"attempt", "response_status_code", "n_events", "payload_exact"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (UTC)."""
    return (value - _EPOCH) // _US


def _sql_type(name: str) -> str:
    return "INTEGER" if name in _TIMES or name in _INTS else "TEXT"


def ddl() -> str:
    """The journal's schema (idempotent ``CREATE ... IF NOT EXISTS``)."""
    inbox = ", ".join(f"{c} {_sql_type(c)}" for c in EVENT_COLUMNS)
    receipts = ", ".join(f"{c} {_sql_type(c)}" for c in RECEIPT_COLUMNS)
    return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (event_key TEXT PRIMARY KEY, seen_at INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_seen_at ON keys (seen_at);
CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY, body_id INTEGER NOT NULL, {inbox});
DROP INDEX IF EXISTS inbox_body;
CREATE TABLE IF NOT EXISTS receipts (seq INTEGER PRIMARY KEY, {receipts});
"""


_GET_EVENT = operator.attrgetter(*EVENT_COLUMNS)
_EVENT_TIMES = tuple(i for i, n in enumerate(EVENT_COLUMNS) if n in _TIMES)
_EXACT = EVENT_COLUMNS.index("payload_exact")
_RECEIPT_SET = frozenset(RECEIPT_COLUMNS)
_RECEIPT_TIMES = tuple(i for i, n in enumerate(RECEIPT_COLUMNS) if n in _TIMES)
_EVENT_INT32 = EVENT_COLUMNS.index("attempt")
_RECEIPT_INT32 = tuple(i for i, n in enumerate(RECEIPT_COLUMNS) if n in _INTS)


def _check_int32(row: Sequence[Any], at: int, columns: Sequence[str]) -> None:
    """ValueError when ``row[at]`` is a whole number beyond the lake's int32 column:
    SQLite would take it, and every flush after would fail on it (the row stays, so would
    the next flush's), with events or receipts left in the journal."""
    value = row[at]
    if isinstance(value, int) and value not in INT32:  # (an int: O(1), not a scan)
        raise ValueError(f"{columns[at]} must be a whole number in int32 range, got {value!r}")


def event_row(record: EventRecord) -> list[Any]:
    """An EventRecord as inbox column values (raises on anything that is not a record)."""
    if not isinstance(record, EventRecord):
        raise TypeError(f"expected EventRecord, got {type(record).__name__}")
    out = list(_GET_EVENT(record))
    for i in _EVENT_TIMES:
        out[i] = micros(out[i])
    out[_EXACT] = int(out[_EXACT])
    _check_int32(out, _EVENT_INT32, EVENT_COLUMNS)
    return out


def receipt_row(receipt: Mapping[str, Any]) -> list[Any]:
    """A receipt mapping (DELIVERY_SCHEMA names) as receipt column values."""
    if not _RECEIPT_SET.issuperset(receipt):
        raise ValueError(f"unknown receipt columns: {sorted(receipt.keys() - _RECEIPT_SET)}")
    out = [receipt.get(name) for name in RECEIPT_COLUMNS]
    for i in _RECEIPT_TIMES:
        value = out[i]
        if value is not None:
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError(f"receipt {RECEIPT_COLUMNS[i]} must be an aware datetime")
            out[i] = micros(value)
    for i in _RECEIPT_INT32:
        _check_int32(out, i, RECEIPT_COLUMNS)
    return out


def _json_name(name: str) -> str:
    if not name.replace("_", "").isalnum():  # names come from our own schemas; never user text
        raise ValueError(f"bad column name {name!r}")
    return name


def ndjson_select(source: str, columns: Sequence[tuple[str, str]], order: str) -> str:
    """SQL returning one BLOB: rows of ``source`` with ``order <= ?`` as NDJSON, ``LIMIT ?``.

    ``columns`` are ``(json name, SQL expression)`` pairs; rows come in ``order``. NULL when
    there are no rows. The blob (not text) spares decoding the whole batch into a Python str.
    """
    pairs = ", ".join(f"'{_json_name(name)}', {expr}" for name, expr in columns)
    return (
        f"SELECT CAST(group_concat(line, char(10)) AS BLOB) FROM (SELECT json_object({pairs}) "
        f"AS line FROM {source} WHERE {order} <= ? ORDER BY {order} LIMIT ?)"
    )


def _json_type(name: str) -> pa.DataType:
    integer = name in _TIMES or name in _INTS or name in ("seq", "body_id")
    return pa.int64() if integer else pa.string()


def table_from_ndjson(data: bytes, names: Sequence[str]) -> pa.Table:
    """Parse :func:`ndjson_select` output whose objects have exactly ``names`` (ints/strings).

    One block for the whole text (a row may be megabytes: a 4 MiB body), no extra threads:
    the collector shares its cores with the event loop.
    """
    schema = pa.schema([(name, _json_type(name)) for name in names])
    return pa_json.read_json(
        io.BytesIO(data),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1),
        parse_options=pa_json.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="error"
        ),
    )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast :func:`table_from_ndjson` columns to ``schema``; absent fields become nulls."""
    n = table.num_rows
    arrays = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
