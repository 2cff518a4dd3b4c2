"""DuckDB views ``events`` and ``deliveries`` over the lake, deduplicated like the Polars reader.

Local files are read with ``read_parquet`` (no extension needed); S3 files are handed to
DuckDB as pyarrow datasets, since DuckDB's httpfs extension cannot be assumed to be loadable.
The dedup rule is the one in :mod:`kirim_events.lake.reader`.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from kirim_events.lake.reader import (
    DELIVERY_DEDUP_COLUMNS,
    EVENT_ORDER,
    GroupPlan,
    arrow_dataset,
    output_schema,
)
from kirim_events.lake.storage import Storage

__all__ = ["create_view"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Sources:
    """Turns file lists into DuckDB table expressions (registering datasets for S3)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, storage: Storage, prefix: str) -> None:
        self.con = con
        self.storage = storage
        self.prefix = prefix
        self.n = 0

    def __call__(self, table: str, rels: list[str]) -> str:
        if self.storage.local:
            files = ", ".join(_quote(self.storage.full(r)) for r in rels)
            hive = (
                "{'type': 'VARCHAR', 'date': 'DATE'}" if table == "events" else "{'date': 'DATE'}"
            )
            return (
                f"read_parquet([{files}], hive_partitioning = true, union_by_name = true, "
                f"hive_types = {hive})"
            )
        self.n += 1
        name = f"_{self.prefix}_src_{self.n}"
        self.con.register(name, arrow_dataset(self.storage, table, rels))
        return _ident(name)


def _columns(plan: GroupPlan) -> str:
    cols = []
    for name in output_schema(plan.table).names:
        if name == "type" and plan.group != plan.type_value:
            cols.append(f"{_quote(plan.type_value or '')} AS type")
        else:
            cols.append(_ident(name))
    return ", ".join(cols)


def _select(plan: GroupPlan, source: _Sources) -> list[str]:
    parts = []
    cols = _columns(plan)
    if plan.clean:
        parts.append(f"SELECT {cols} FROM {source(plan.table, plan.clean)}")
    if plan.dedup:
        if plan.table == "events":
            key = "event_key"
            order = ", ".join(EVENT_ORDER)
        else:
            key = ", ".join(_ident(c) for c in DELIVERY_DEDUP_COLUMNS)
            order = "ingest_seq"
        dates = ", ".join(f"DATE {_quote(d)}" for d in plan.keep_dates)
        parts.append(
            f"SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY {key} "
            f"ORDER BY {order}) AS _rn FROM {source(plan.table, plan.dedup)}) "
            f'WHERE _rn = 1 AND "date" IN ({dates})'
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
    parts = [p for plan in plans for p in _select(plan, source)]
    if not parts:
        empty = f"_{table}_empty"
        con.register(empty, output_schema(table).empty_table())
        parts = [f"SELECT * FROM {_ident(empty)}"]
    body = "\nUNION ALL\n".join(parts)
    if as_of is not None:
        column = "occurred_at" if table == "events" else "coalesce(created_at, received_at)"
        body = f"SELECT * FROM ({body}) WHERE {column} <= TIMESTAMPTZ {_quote(as_of.isoformat())}"
    con.execute(f"CREATE OR REPLACE VIEW {_ident(table)} AS {body}")
