"""Append batches of events and delivery rows to the lake as new, never-overwritten files.

Each call writes one Parquet file per touched partition (``type`` x event-time UTC ``date``
for events, the UTC date of ``created_at`` -- else ``received_at`` -- for deliveries),
publishes it atomically (see :mod:`kirim_events.lake.storage`) after a change marker under
``_state/changes/`` (named like the file), so compaction visits only the partitions written
since it last ran.
It is durable when it returns.

``ingest_seq`` (int64) is assigned here, per row, at write time::

    ingest_seq = (unix milliseconds << 20) + counter

It strictly increases within one writer (one ``Lake`` object) and follows the wall clock
across writers (to the millisecond, so several collectors interleave roughly in time). It is
not unique across writers. Export code keeps a watermark ``W`` and reads ``ingest_seq > W``
with a safety lag (e.g. re-read the last minute), since another machine's clock or a slow
write may publish slightly smaller numbers later. Compaction keeps each row's number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kirim_events.errors import LakeError
from kirim_events.events import EventRecord
from kirim_events.lake.paths import encode_type, writer_file_name
from kirim_events.lake.state import ensure_version
from kirim_events.lake.storage import Storage
from kirim_events.schema import DELIVERY_SCHEMA, EVENT_SCHEMA, deliveries_table, events_table

__all__ = [
    "PARQUET_OPTIONS",
    "Writer",
    "change_marker",
    "marker_file_name",
    "parquet_bytes",
    "partition_dir",
    "row_groups",
]

# Dictionary-encode only columns with few distinct values: for random ids a dictionary only
# adds a page (measured: 6% smaller files without it; benchmarks/bench_lake.py).
DICTIONARY_COLUMNS = [
    "origin",
    "source_format",
    "time_source",
    "status",
    "phone_number_id",
    "error_code",
    "error_title",
    "user_id",
    "previous_user_id",
    "closed_by_user_id",
    "team_id",
    "attempt",
    "payload_exact",
    "event_type",
    "outcome",
    "reason",
    "subscription_id",
    "response_status_code",
    "n_events",
]
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": True,
}
# Uncompressed bytes per row group, at most (and at most the row count asked for): about
# what 128k rows of ordinary events take.
ROW_GROUP_BYTES = 128 << 20
SEQ_SHIFT = 20


def partition_dir(table: str, group: str | None, date: str) -> str:
    """Relative folder of one partition (``group`` is an already-encoded type)."""
    if group is None:
        return f"{table}/date={date}"
    return f"{table}/type={group}/date={date}"


MARKER_SUFFIX = ".changed"


def change_marker(table: str, group: str | None, date: str, name: str) -> str:
    """Relative path of the change marker left for a newly written file.

    Named like the file with ``.changed`` for ``.parquet``, so a careless
    ``DATA/**/*.parquet`` glob never picks up an empty marker.
    """
    stem = name.removesuffix(".parquet")
    return f"_state/changes/{partition_dir(table, group, date)}/{stem}{MARKER_SUFFIX}"


def marker_file_name(marker_rel: str) -> str:
    """The data file name a change marker stands for."""
    return marker_rel.rsplit("/", 1)[-1].removesuffix(MARKER_SUFFIX) + ".parquet"


def parquet_bytes(table: pa.Table, *, row_group_size: int) -> bytes:
    """Serialise an Arrow table to Parquet bytes (zstd, statistics on), in row groups of at
    most ``row_group_size`` rows and about ``ROW_GROUP_BYTES`` uncompressed.

    Readers hold a row group's column whole in memory: payloads of a megabyte compress well,
    and 3,000 of them had made one 3 GB row group in a 0.3 MB file.
    """
    sink = pa.BufferOutputStream()
    dictionary = [c for c in DICTIONARY_COLUMNS if c in table.column_names]
    with pq.ParquetWriter(
        sink, table.schema, use_dictionary=dictionary, **PARQUET_OPTIONS
    ) as writer:
        for offset, length in row_groups(table, row_group_size):
            writer.write_table(table.slice(offset, length), row_group_size=max(1, length))
    return bytes(sink.getvalue())


def row_groups(table: pa.Table, max_rows: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each row group: a group ends at ``max_rows`` rows or at the
    row whose running size passes ``ROW_GROUP_BYTES``, whichever comes first (sizes may be
    skewed: a few huge payloads among many small ones)."""
    n = table.num_rows
    if n == 0:
        return [(0, 0)]
    texts = [f.name for f in table.schema if pa.types.is_string(f.type)
             or pa.types.is_large_string(f.type)]  # fmt: skip
    if table.nbytes <= ROW_GROUP_BYTES or not texts:
        return [(o, min(max_rows, n - o)) for o in range(0, n, max_rows)]
    frame = pl.from_arrow(table.select(texts))
    assert isinstance(frame, pl.DataFrame)
    lengths = frame.select(
        pl.sum_horizontal(pl.col(texts).str.len_bytes().fill_null(0)).cast(pl.Float64)
    ).to_series()
    rest = max(0.0, (table.nbytes - float(lengths.sum())) / n)  # fixed-width, offsets
    ends = (lengths + rest).cum_sum()  # bytes up to and including each row
    bounds = []
    start = 0
    while start < n:
        before = float(ends[start - 1]) if start else 0.0
        # the first row whose running size (from this group's start) reaches the bound
        by_bytes = int(ends.search_sorted(before + ROW_GROUP_BYTES, side="left")) + 1
        end = max(start + 1, min(n, start + max_rows, by_bytes))
        bounds.append((start, end - start))
        start = end
    return bounds


def _conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Select and cast the columns of ``schema``; missing nullable columns become null."""
    extra = set(table.column_names) - set(schema.names) - {"type", "date"}
    if extra:
        raise LakeError(f"{what} table has unknown columns {sorted(extra)}")
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            column = table.column(f.name)
            try:
                if (
                    pa.types.is_timestamp(f.type)
                    and pa.types.is_timestamp(column.type)
                    and column.type.tz is None
                ):
                    raise LakeError(f"{what} column {f.name!r} must be timezone-aware")
                arrays.append(column.cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LakeError(f"{what} column {f.name!r} cannot be {f.type}: {exc}") from None
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# The instants whose UTC date names a partition readers list (``date=YYYY-MM-DD``, years 1
# to 9999: paths.parse_partition_dir). Arrow holds times far beyond them, and one written
# under date=+10000-01-01 was in no partition that a reader or a compaction looks at.
FIRST_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
LAST_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


def _check_partition_times(frame: pl.DataFrame, column: str, what: str, rows: pl.Expr) -> None:
    """LakeError when a row of ``rows`` has a ``column`` no partition date can name."""
    outside = frame.filter(rows & ~pl.col(column).is_between(FIRST_INSTANT, LAST_INSTANT))
    if outside.height:
        raise LakeError(
            f"{what} need {column} in the years 1 to 9999 (its UTC date names the "
            f"partition): {outside.height} row(s) outside them; nothing was written"
        )


class Writer:
    """Writes new files for one ``Lake``; owns its writer id and ingest sequence."""

    def __init__(
        self,
        storage: Storage,
        *,
        writer_id: str,
        now: Callable[[], float] = time.time,
        row_group_size: int = 128 * 1024,
    ) -> None:
        self.storage = storage
        self.writer_id = writer_id
        self._now = now
        self._row_group_size = row_group_size
        self._lock = threading.Lock()
        self._last_seq = 0
        self._files = 0
        self._version_ok = False

    def _reserve(self, n: int) -> tuple[int, int, int]:
        """Reserve ``n`` sequence numbers; return (first seq, clock ms, file counter)."""
        with self._lock:
            ms = int(self._now() * 1000)
            first = max(self._last_seq + 1, ms << SEQ_SHIFT)
            self._last_seq = first + n - 1
            self._files += 1
            return first, ms, self._files

    def _ensure_version(self) -> None:
        if not self._version_ok:
            ensure_version(self.storage)
            self._version_ok = True

    def write_events(self, data: Sequence[EventRecord] | pa.Table) -> int:
        """Append events; return how many rows were written (see :meth:`Lake.write_events`)."""
        table = data if isinstance(data, pa.Table) else events_table(list(data))
        table = _conform(table, EVENT_SCHEMA, "events")
        if table.num_rows == 0:
            return 0
        for name in ("event_key", "type", "occurred_at", "received_at"):
            if table.column(name).null_count:
                raise LakeError(f"events need a {name} in every row")
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        _check_partition_times(frame, "occurred_at", "events", pl.lit(True))
        frame = frame.with_columns(
            pl.col("occurred_at").dt.convert_time_zone("UTC").dt.date().cast(pl.String).alias("_d")
        )
        file_schema = pa.schema([f for f in EVENT_SCHEMA if f.name != "type"])
        return self._write_groups("events", frame, ["type", "_d"], file_schema)

    def write_deliveries(self, data: Sequence[Mapping[str, Any]] | pa.Table) -> int:
        """Append delivery rows; return how many were written."""
        try:
            table = data if isinstance(data, pa.Table) else deliveries_table(list(data))
        except (ValueError, pa.ArrowException) as exc:
            raise LakeError(f"bad delivery rows: {exc}") from None
        table = _conform(table, DELIVERY_SCHEMA, "deliveries")
        if table.num_rows == 0:
            return 0
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        when = pl.coalesce("created_at", "received_at")
        if frame.select(when.is_null().any()).item():
            raise LakeError("delivery rows need created_at or received_at")
        created = pl.col("created_at").is_not_null()
        _check_partition_times(frame, "created_at", "delivery rows", created)
        _check_partition_times(frame, "received_at", "delivery rows without created_at", ~created)
        frame = frame.with_columns(
            when.dt.convert_time_zone("UTC").dt.date().cast(pl.String).alias("_d")
        )
        return self._write_groups("deliveries", frame, ["_d"], DELIVERY_SCHEMA)

    def _write_groups(
        self, table: str, frame: pl.DataFrame, keys: list[str], schema: pa.Schema
    ) -> int:
        self._ensure_version()
        first, ms, counter = self._reserve(frame.height)
        frame = frame.with_columns(
            pl.int_range(first, first + frame.height, dtype=pl.Int64).alias("ingest_seq")
        )
        name = writer_file_name(ms, counter, self.writer_id)
        markers: list[tuple[str, bytes]] = []
        files: list[tuple[str, bytes]] = []
        for key, part in frame.partition_by(keys, as_dict=True, maintain_order=True).items():
            group = encode_type(str(key[0])) if table == "events" else None
            date = str(key[-1])
            arrow = part.select(schema.names).to_arrow().cast(schema)
            data = parquet_bytes(arrow, row_group_size=self._row_group_size)
            files.append((f"{partition_dir(table, group, date)}/{name}", data))
            markers.append((change_marker(table, group, date, name), b""))
        # Markers first: a file never exists without its marker, so compaction finds it.
        self.storage.publish_many(markers + files, first=len(markers))
        return frame.height
