"""DuckDB views ``events`` and ``deliveries`` over the lake, deduplicated like the Polars reader.

The files are handed to DuckDB as pyarrow datasets with the lake's schema: on S3 because
DuckDB's httpfs extension cannot be assumed to be loadable, and locally too because binding a
view over ``read_parquet([...])`` with ``union_by_name`` reads every file's footer, again for
each view built on ``events`` -- seconds on a lake of a few thousand files (measured in
``benchmarks/bench_lake.py``), where a dataset binds at once. Filters on ``type``/``date`` and
column projections are pushed into the dataset scan. The dedup rule is the one in
:mod:`kirim_events.lake.reader`.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from kirim_events.lake.reader import (
    DELIVERY_DEDUP_COLUMNS,
    EVENT_ORDER,
    GroupPlan,
    Merged,
    arrow_dataset,
    merge,
    output_schema,
)
from kirim_events.lake.storage import Storage

__all__ = ["create_view"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Sources:
    """Turns file lists into DuckDB table names (registered pyarrow datasets)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, storage: Storage, prefix: str) -> None:
        self.con = con
        self.storage = storage
        self.prefix = prefix
        self.n = 0

    def __call__(self, table: str, rels: list[str]) -> str:
        self.n += 1
        name = f"_{self.prefix}_src_{self.n}"
        self.con.register(name, arrow_dataset(self.storage, table, rels))
        return _ident(name)


def _columns(merged: Merged) -> str:
    cols = []
    for name in output_schema(merged.table).names:
        if name == "type" and merged.decode:
            cases = " ".join(
                f"WHEN {_quote(enc)} THEN {_quote(dec)}" for enc, dec in merged.decode.items()
            )
            cols.append(f"CASE type {cases} ELSE type END AS type")
        else:
            cols.append(_ident(name))
    return ", ".join(cols)


def _select(merged: Merged, source: _Sources) -> list[str]:
    parts = []
    cols = _columns(merged)
    if merged.clean:
        parts.append(f"SELECT {cols} FROM {source(merged.table, merged.clean)}")
    if merged.dedup:
        if merged.table == "events":
            key = "event_key"
            order = ", ".join(EVENT_ORDER)
            where = "type || '/' || CAST(\"date\" AS VARCHAR)"
        else:
            key = ", ".join(_ident(c) for c in DELIVERY_DEDUP_COLUMNS)
            order = "ingest_seq"
            where = 'CAST("date" AS VARCHAR)'
        keep = ", ".join(_quote(k) for k in merged.keep)
        parts.append(
            f"SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY {key} "
            f"ORDER BY {order}) AS _rn FROM {source(merged.table, merged.dedup)}) "
            f"WHERE _rn = 1 AND {where} IN ({keep})"
        )
    return parts


def create_view(
    con: duckdb.DuckDBPyConnection,
    storage: Storage,
    table: str,
    plans: list[GroupPlan],
    *,
    as_of: datetime | None = None,
) -> None:
    """Create or replace view ``table`` over the planned files."""
    source = _Sources(con, storage, table)
    parts = _select(merge(table, plans), source)
    if not parts:
        empty = f"_{table}_empty"
        con.register(empty, output_schema(table).empty_table())
        parts = [f"SELECT * FROM {_ident(empty)}"]
    body = "\nUNION ALL\n".join(parts)
    if as_of is not None:
        column = "occurred_at" if table == "events" else "coalesce(created_at, received_at)"
        body = f"SELECT * FROM ({body}) WHERE {column} <= TIMESTAMPTZ {_quote(as_of.isoformat())}"
    con.execute(f"CREATE OR REPLACE VIEW {_ident(table)} AS {body}")
