"""Support for the analytics tests (no tests here): hand-built deliveries, DuckDB views."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from kirim_events.analytics.sql import analytics_views
from kirim_events.events import EventRecord, parse_delivery
from kirim_events.schema import deliveries_table, events_table

T0 = datetime(2026, 5, 23, 10, 0, tzinfo=UTC)
VIEWS = (
    "message_timelines",
    "message_status_history",
    "conversation_lifecycles",
    "conversation_cycles",
    "delivery_health",
)  # every analytics helper that is also a DuckDB view
PHONE = "106540352242922"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def status(
    wamid: str,
    value: str,
    occurred: float,
    received: float,
    *,
    error: tuple[int, str] | None = None,
    attempt: int = 1,
    recipient: str = "628111111111",
    conversation_id: str | None = None,
) -> EventRecord:
    item: dict[str, Any] = {
        "id": wamid,
        "status": value,
        "timestamp": str(int(at(occurred).timestamp())),
        "recipient_id": recipient,
    }
    if error is not None:
        item["errors"] = [{"code": error[0], "title": error[1]}]
    body: dict[str, Any] = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": PHONE},
                            "statuses": [item],
                        },
                    }
                ],
            }
        ],
    }
    if conversation_id is not None:
        body["kirim"] = {"conversation_id": conversation_id}
    headers = {"X-Kirim-Event-Id": wamid, "X-Kirim-Attempt": str(attempt)}
    (record,) = parse_delivery(json.dumps(body).encode(), headers, received_at=at(received))
    return record


def conversation(
    event_id: str,
    kind: str,
    cnv: str,
    occurred: float,
    received: float,
    *,
    user: str | None = None,
    previous: str | None = None,
    closed_by: str | None = None,
    attempt: int = 1,
) -> EventRecord:
    data: dict[str, Any]
    if kind == "assigned":
        data = {
            "conversation": {"id": cnv, "object": "conversation", "status": "open"},
            "assignee": {"user_id": user, "team_id": "team", "previous_user_id": previous},
        }
    elif kind == "closed":
        data = {
            "conversation": {
                "id": cnv,
                "object": "conversation",
                "status": "resolved",
                "closed_by_user_id": closed_by,
            }
        }
    else:
        data = {"conversation_id": cnv, "contact": {"id": "ctc_1", "phone_number": "+62811"}}
    body = {
        "id": event_id,
        "type": f"conversation.{kind}" if kind in ("assigned", "closed") else kind,
        "created_at": at(occurred).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    headers = {"X-Kirim-Attempt": str(attempt)}
    (record,) = parse_delivery(json.dumps(body).encode(), headers, received_at=at(received))
    return record


def dedup(records: Sequence[EventRecord]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(events with the first received copy of each key, copies per key)."""
    raw = pl.from_arrow(events_table(list(records)))
    assert isinstance(raw, pl.DataFrame)
    events = raw.sort("received_at").unique("event_key", keep="first", maintain_order=True)
    copies = raw.group_by("event_key").agg(pl.len().alias("n_copies"))
    return events.lazy(), copies.lazy()


def duck(
    events: pl.LazyFrame,
    copies: pl.LazyFrame | None,
    deliveries: Sequence[Mapping[str, Any]] = (),
    *,
    as_of: datetime | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with ``events``, ``deliveries``, ``event_copies`` and the views."""
    con = duckdb.connect()
    # views must depend neither on the session's zone nor on its default order
    con.execute("SET TimeZone = 'Asia/Jakarta'")
    con.execute("SET default_order = 'DESC'")
    events_arrow: pa.Table = events.collect().to_arrow()
    con.register("events_arrow", events_arrow)
    con.execute("CREATE VIEW events AS SELECT * FROM events_arrow")
    con.register("deliveries_arrow", deliveries_table(list(deliveries)))
    con.execute("CREATE VIEW deliveries AS SELECT * FROM deliveries_arrow")
    source = None
    if copies is not None:
        con.register("copies_arrow", copies.collect().to_arrow())
        con.execute("CREATE VIEW event_copies AS SELECT * FROM copies_arrow")
        source = "SELECT event_key, n_copies FROM event_copies"
    for name, select in analytics_views(as_of=as_of, copies=source).items():
        con.execute(f"CREATE VIEW {name} AS {select}")
    return con


# Timelines and lifecycles come in no particular order (history, cycles and health are
# sorted); tests compare them in key order.
KEYS: dict[str, tuple[str, ...]] = {
    "message_timelines": ("message_id",),
    "message_status_history": ("message_id", "seq"),
    "conversation_lifecycles": ("conversation_id",),
    "conversation_cycles": ("conversation_id", "cycle"),
    "delivery_health": ("day", "event_type"),
}


def by_key(frame: pl.DataFrame, view: str) -> pl.DataFrame:
    """``frame`` sorted by the key of ``view`` (one row per key)."""
    keys = list(KEYS[view])
    assert frame.select(keys).is_unique().all(), f"{view}: key {keys} is not unique"
    return frame.sort(keys)


def in_utc(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every zoned timestamp in UTC (DuckDB exports TIMESTAMPTZ in the
    session's zone; compare instants)."""
    return frame.with_columns(
        pl.col(c).dt.convert_time_zone("UTC")
        for c, t in frame.schema.items()
        if isinstance(t, pl.Datetime) and t.time_zone is not None
    )


def from_duck(con: duckdb.DuckDBPyConnection, view: str) -> pl.DataFrame:
    return in_utc(con.sql(f"SELECT * FROM {view}").pl())


def both(
    view: str,
    records: Sequence[EventRecord],
    *,
    deliveries: Sequence[Mapping[str, Any]] = (),
    as_of: datetime | None = None,
) -> pl.DataFrame:
    """Run one helper in Polars and as the DuckDB view; assert equal rows; return them.

    The rows are returned in key order (``KEYS``).
    """
    from polars.testing import assert_frame_equal

    from kirim_events.analytics import conversations, health, timelines

    events, copies = dedup(records)
    if view == "delivery_health":
        frame = health.delivery_health(
            events, pl.from_arrow(deliveries_table(list(deliveries))).lazy(), as_of=as_of
        )
    else:
        module = timelines if view.startswith("message") else conversations
        frame = getattr(module, view)(events, copies=copies, as_of=as_of)
    result = by_key(frame.collect(), view)
    duck_rows = by_key(from_duck(duck(events, copies, deliveries, as_of=as_of), view), view)
    assert_frame_equal(result, duck_rows, check_exact=True)  # the same floats, to the bit
    return result


def row(frame: pl.DataFrame, **match: Any) -> dict[str, Any]:
    """The single row of ``frame`` matching ``match`` (column == value)."""
    rows = frame.filter(**match).to_dicts()
    assert len(rows) == 1, rows
    return rows[0]
