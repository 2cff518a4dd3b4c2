"""The fixed Arrow schemas of the lake's tables, and record -> Arrow conversion.

Timestamps are UTC microseconds everywhere. ``type`` and ``date`` are Hive partition
columns: they live in the folder names, not inside the Parquet files (``FILE`` schemas), so
that every engine reading with Hive partitioning sees each exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from kirim_events.events import EVENT_FIELDS, EventRecord

__all__ = [
    "DELIVERY_FIELDS",
    "DELIVERY_SCHEMA",
    "EVENT_SCHEMA",
    "INT32",
    "LAKE_EVENT_FIELDS",
    "NOT_STORED",
    "SCHEMA_VERSION",
    "TS",
    "deliveries_table",
    "events_table",
]

SCHEMA_VERSION = 1
TS = pa.timestamp("us", tz="UTC")
INT32 = range(-(2**31), 2**31)
"""The values the lake's int32 columns (``attempt``, ``response_status_code``, ``n_events``)
hold."""

_EVENT_TYPES: dict[str, pa.DataType] = {
    "occurred_at": TS,
    "received_at": TS,
    "attempt": pa.int32(),
    "payload": pa.large_string(),
    "payload_exact": pa.bool_(),
}

NOT_STORED: frozenset[str] = frozenset({"signature"})
"""EventRecord fields the lake does not keep.

``signature`` is the header of one delivery attempt, not part of the event: every retry
carries another one, it is 32 random bytes that cannot be compressed (about a quarter of a
compacted lake when it was kept), and it proves nothing without the secret, which rotates.
It is used once, at parse time, as the event's time when the body has none. Lakes written
before it was dropped still read: readers ignore the extra column and compaction drops it
(from files already compacted, a full compaction: ``compact(full=True)``).
"""

LAKE_EVENT_FIELDS: tuple[str, ...] = tuple(f for f in EVENT_FIELDS if f not in NOT_STORED)

EVENT_SCHEMA = pa.schema(
    [pa.field(name, _EVENT_TYPES.get(name, pa.string())) for name in LAKE_EVENT_FIELDS]
    + [pa.field("ingest_seq", pa.int64())]
)
"""Full events row: EventRecord's stored fields, then ``ingest_seq`` (given by the writer)."""

DELIVERY_SCHEMA = pa.schema(
    [
        pa.field("delivery_id", pa.string()),
        pa.field("attempt", pa.int32()),
        pa.field("event_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("origin", pa.string()),  # webhook (our receipt) or backfill (Kirim's history)
        pa.field("outcome", pa.string()),  # new|duplicate|rejected|quarantined|<Kirim status>
        pa.field("reason", pa.string()),  # why rejected / quarantined; Kirim's error text
        pa.field("received_at", TS),  # when we saw this row
        pa.field("created_at", TS),  # Kirim's created_at (history rows); null on receipts
        pa.field("subscription_id", pa.string()),
        pa.field("replayed_from", pa.string()),
        pa.field("response_status_code", pa.int32()),
        pa.field("n_events", pa.int32()),
        pa.field("ingest_seq", pa.int64()),
    ]
)
DELIVERY_FIELDS: tuple[str, ...] = tuple(DELIVERY_SCHEMA.names)


def events_table(
    records: Sequence[EventRecord], ingest_seq: Iterable[int] | None = None
) -> pa.Table:
    """Build an Arrow table in EVENT_SCHEMA from records (``ingest_seq`` null unless given)."""
    columns: dict[str, list[Any]] = {name: [] for name in LAKE_EVENT_FIELDS}
    for record in records:
        for name in LAKE_EVENT_FIELDS:
            columns[name].append(getattr(record, name))
    seqs = list(ingest_seq) if ingest_seq is not None else [None] * len(records)
    if len(seqs) != len(records):
        raise ValueError("ingest_seq must have one value per record")
    arrays = [pa.array(columns[f.name], type=f.type) for f in EVENT_SCHEMA if f.name in columns]
    arrays.append(pa.array(seqs, type=pa.int64()))
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def deliveries_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build an Arrow table in DELIVERY_SCHEMA from dict rows; missing keys become null."""
    unknown = {key for row in rows for key in row} - set(DELIVERY_FIELDS)
    if unknown:
        raise ValueError(f"unknown delivery columns: {sorted(unknown)}")
    return pa.Table.from_pylist([dict(row) for row in rows], schema=DELIVERY_SCHEMA)
