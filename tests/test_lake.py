"""Lake writer and readers: layout, dedup before compaction, plain engines, path tricks."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kirim_events as ke
from kirim_events.errors import LakeError
from kirim_events.events import EventRecord, parse_delivery
from kirim_events.lake import storage as storage_module
from kirim_events.lake.paths import decode_type, encode_type
from kirim_events.schema import events_table

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def ev(
    key: str,
    *,
    type: str = "message.created",
    occurred: datetime = T0,
    received: datetime | None = None,
    payload: str | None = None,
) -> EventRecord:
    """A minimal event record."""
    return EventRecord(
        event_key=key,
        event_id=key,
        type=type,
        occurred_at=occurred,
        received_at=received or occurred + timedelta(seconds=2),
        origin="webhook",
        source_format="kirim",
        time_source="payload",
        delivery_id=None,
        attempt=1,
        signature=None,
        phone_number_id="pn1",
        message_id=key,
        conversation_id=None,
        contact_id=None,
        status=None,
        error_code=None,
        error_title=None,
        recipient_id=None,
        wa_id=None,
        user_id=None,
        previous_user_id=None,
        closed_by_user_id=None,
        team_id=None,
        payload=payload or json.dumps({"id": key, "type": type}),
    )


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def readme_queries(root: Path) -> list[str]:
    """The README's plain queries (events, deliveries) over the lake at ``root``."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```sql\n", 1)[1].split("```", 1)[0]
    return [q for q in block.replace("data/", f"{root}/").split(";") if q.strip()]


def test_layout_is_hive_by_type_and_event_time_date(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    late = ev("late", type="message.status", occurred=T0 - timedelta(days=3), received=T0)
    assert lake.write_events([ev("a"), late]) == 2
    rel = sorted(str(p.relative_to(tmp_path).parent) for p in parquet_files(tmp_path / "events"))
    assert rel == [
        "events/type=message.created/date=2026-05-01",
        "events/type=message.status/date=2026-04-28",
    ]
    (path,) = parquet_files(tmp_path / "events/type=message.created")
    schema = pq.read_schema(path)
    assert "type" not in schema.names
    assert "date" not in schema.names
    assert schema.field("occurred_at").type == pa.timestamp("us", tz="UTC")
    assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
    assert not list((tmp_path / "_tmp").iterdir())  # temp names are gone after rename
    assert all(p.is_relative_to(tmp_path / "events") for p in tmp_path.rglob("*.parquet"))
    state = json.loads((tmp_path / "_state/lake.json").read_text())
    assert state["schema_version"] == 1


def test_ingest_seq_increases_per_writer_and_files_never_collide(tmp_path: Path) -> None:
    clock = iter([1000.0] * 10)
    a = ke.Lake(tmp_path, now=lambda: next(clock))
    b = ke.Lake(tmp_path, now=lambda: 1000.0)
    a.write_events([ev("k1"), ev("k2")])
    a.write_events([ev("k3")])
    b.write_events([ev("k4")])
    frame = a.events().sort("ingest_seq").collect()
    seqs = dict(zip(frame["event_key"], frame["ingest_seq"], strict=True))
    assert seqs["k1"] < seqs["k2"] < seqs["k3"]
    assert seqs["k4"] >> 20 == 1_000_000  # time-based high bits, shared clock
    assert len(parquet_files(tmp_path / "events")) == 3


def test_events_never_duplicate_and_first_received_wins(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("k", received=T0 + timedelta(hours=2), payload='{"copy": "late"}')])
    lake.write_events([ev("k", received=T0 + timedelta(hours=1), payload='{"copy": "early"}')])
    lake.write_events([ev("k", received=T0 + timedelta(hours=3), payload='{"copy": "later"}')])
    frame = lake.events().collect()
    assert frame.height == 1
    assert frame["payload"][0] == '{"copy": "early"}'
    (row,) = lake.sql("select payload from events").fetchall()
    assert row == ('{"copy": "early"}',)
    # Same received_at: the smaller ingest_seq (the earlier write) wins.
    lake.write_events([ev("same", received=T0, payload="first")])
    lake.write_events([ev("same", received=T0, payload="second")])
    assert lake.events().filter(pl.col("event_key") == "same").collect()["payload"][0] == "first"
    assert lake.sql("select count(*) from events where event_key='same'").fetchall() == [(1,)]


def test_dedup_spans_neighbouring_days(tmp_path: Path) -> None:
    # An event without a payload time gets the signature time, which differs per retry.
    lake = ke.Lake(tmp_path)
    first = ev("k", occurred=datetime(2026, 5, 1, 23, 59, tzinfo=UTC))
    retry = ev("k", occurred=datetime(2026, 5, 2, 0, 30, tzinfo=UTC))
    lake.write_events([first])
    lake.write_events([retry])
    assert lake.events().collect().height == 1
    assert lake.events(since="2026-05-02").collect().height == 0  # the winner is on May 1
    assert lake.events(since="2026-05-01", until="2026-05-01").collect().height == 1
    assert lake.sql("select count(*) from events").fetchall() == [(1,)]


def test_partitions_at_the_ends_of_the_calendar_do_not_break_reads(tmp_path: Path) -> None:
    # Older versions took a payload's placeholder time (0001-01-01, 9999-12-31) as the event
    # time: such a partition has no neighbour days on one side, and every read failed with
    # OverflowError (the dedup window looked two days past it)
    lake = ke.Lake(tmp_path)
    ends = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)]
    lake.write_events([ev("a"), ev("b", occurred=ends[0]), ev("c", occurred=ends[1])])
    lake.write_events([ev("b", occurred=ends[0])])  # a copy, so those days need dedup
    assert lake.events().collect().height == 3
    assert lake.sql("select count(*) from events").fetchall() == [(3,)]
    lake.compact()
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b", "c"]


def test_filters_type_and_time(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events(
        [ev(f"c{i}", occurred=T0 + timedelta(days=i)) for i in range(5)]
        + [ev(f"s{i}", type="message.status", occurred=T0 + timedelta(days=i)) for i in range(5)]
    )
    assert lake.events("message.status").collect().height == 5
    assert lake.events(["message.status", "message.created"]).collect().height == 10
    assert lake.events("no.such_type").collect().height == 0
    assert lake.events("message.status_updated").collect().height == 5  # Kirim's other name
    day = lake.events("message.status", since="2026-05-03", until="2026-05-03").collect()
    assert day["event_key"].to_list() == ["s2"]
    assert day["date"].to_list() == [date(2026, 5, 3)]
    since = lake.events(since=T0 + timedelta(days=3, seconds=1)).collect()
    assert sorted(since["event_key"]) == ["c4", "s4"]
    assert list(lake.events().collect_schema())[-1] == "date"
    assert lake.events().collect_schema()["occurred_at"] == pl.Datetime("us", "UTC")


def test_plain_duckdb_and_polars_read_the_lake_without_help(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b", type="message.status", occurred=T0 + timedelta(days=1))])
    lake.write_deliveries([{"delivery_id": "d1", "attempt": 1, "received_at": T0}])
    glob = str(tmp_path / "events/**/*.parquet")
    rows = duckdb.sql(
        f"select event_key, type, date from read_parquet('{glob}', hive_partitioning=true) "
        "order by 1"
    ).fetchall()
    assert rows == [
        ("a", "message.created", date(2026, 5, 1)),
        ("b", "message.status", date(2026, 5, 2)),
    ]
    frame = pl.scan_parquet(tmp_path / "events", hive_partitioning=True).collect().sort("event_key")
    assert frame["type"].to_list() == ["message.created", "message.status"]
    assert frame.columns.count("type") == 1
    assert frame.columns.count("date") == 1
    deliveries = pl.scan_parquet(tmp_path / "deliveries", hive_partitioning=True).collect()
    assert deliveries["delivery_id"].to_list() == ["d1"]
    assert deliveries["date"].to_list() == [date(2026, 5, 1)]


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "a/b",
        "",
        ".",
        "..",
        "../../etc/passwd",
        "A.B",
        "x\x00y",
        "a\\b",
        "é.x",
        "/abs",
        "a.b\n",
    ],
)
def test_path_tricks_in_event_types_stay_inside_the_lake(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "lake"
    lake = ke.Lake(root)
    lake.write_events([ev("k", type=bad)])
    for path in tmp_path.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())
    (folder,) = (root / "events").iterdir()
    assert folder.name == f"type={encode_type(bad)}"
    assert "/" not in folder.name[5:]
    assert folder.name[5:] not in ("", ".", "..")
    assert decode_type(encode_type(bad)) == bad
    assert lake.events().collect()["type"].to_list() == [bad]
    assert lake.events(bad).collect().height == 1
    assert lake.sql("select type from events").fetchall() == [(bad,)]


def test_valid_types_pass_through_and_encoded_names_cannot_clash() -> None:
    assert encode_type("message.status") == "message.status"
    assert encode_type("conversation.closed") == "conversation.closed"
    # An encoded name has no dot, so it is never a valid type itself.
    assert encode_type("_x_61") != "_x_61"
    assert decode_type(encode_type("_x_61")) == "_x_61"
    assert encode_type("y" * 500).startswith("_h_")


def test_unknown_types_and_new_payload_fields_are_lossless(tmp_path: Path) -> None:
    body = json.dumps(
        {
            "id": "evt_new",
            "type": "reaction.added_v_two",
            "created_at": "2026-05-01T10:00:00Z",
            "data": {"emoji": "🎉", "brand_new_field": {"nested": [1, 2, 3]}},
        }
    ).encode()
    lake = ke.Lake(tmp_path)
    lake.write_events(parse_delivery(body, received_at=T0))
    row = lake.events("reaction.added_v_two").collect().row(0, named=True)
    assert row["payload"].encode() == body
    assert json.loads(row["payload"])["data"]["brand_new_field"] == {"nested": [1, 2, 3]}


def test_bad_rows_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)

    good = events_table([ev("a")])
    no_key = good.set_column(0, "event_key", pa.array([None], pa.string()))
    with pytest.raises(LakeError, match="event_key"):
        lake.write_events(no_key)
    with pytest.raises(LakeError, match="unknown columns"):
        lake.write_events(good.append_column("surprise", pa.array([1])))
    with pytest.raises(LakeError, match="created_at or received_at"):
        lake.write_deliveries([{"delivery_id": "d"}])
    with pytest.raises(LakeError, match="bad delivery rows"):
        lake.write_deliveries([{"nope": 1}])
    assert parquet_files(tmp_path) == []
    assert lake.write_events([]) == 0


def test_the_readmes_plain_queries_give_exactly_what_lake_gives(tmp_path: Path) -> None:
    # Copies on disk: two writers with one clock (ties on received_at and ingest_seq), a
    # later copy received first, webhook receipts flushed twice, history rows fetched twice.
    a, b = (ke.Lake(tmp_path, now=lambda: 1000.0) for _ in range(2))
    tie = ev("tie")
    a.write_events([dataclasses.replace(tie, delivery_id="d2", payload='{"w": "a"}'), ev("x")])
    b.write_events([dataclasses.replace(tie, delivery_id="d1", payload='{"w": "b"}')])
    a.write_events([ev("x", received=T0 - timedelta(hours=1), payload='{"early": 1}')])
    receipt = {"delivery_id": "w1", "attempt": 1, "origin": "webhook", "received_at": T0}
    history = {"delivery_id": "h1", "attempt": 1, "origin": "backfill", "created_at": T0}
    for run in range(2):
        a.write_deliveries([receipt, {**history, "received_at": T0 + timedelta(hours=run)}])
    changed = {**history, "outcome": "failed", "received_at": T0 + timedelta(hours=3)}
    b.write_deliveries([changed])
    for table, query in zip(("events", "deliveries"), readme_queries(tmp_path), strict=True):
        mine = getattr(a, table)().collect()
        plain = duckdb.sql(query).pl().select(mine.columns)
        plain = plain.with_columns(pl.col(c).cast(mine.schema[c]) for c in mine.columns)
        raw = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/{table}/**/*.parquet')")
        assert raw.fetchall()[0][0] > mine.height  # there were copies to drop
        assert plain.sort(pl.all(), nulls_last=True).equals(mine.sort(pl.all(), nulls_last=True))
    events = a.events().collect()
    assert dict(zip(events["event_key"], events["payload"], strict=True)) == {
        "tie": '{"w": "b"}',  # delivery_id d1 before d2, in every reader
        "x": '{"early": 1}',
    }
    deliveries = a.deliveries().collect().sort("delivery_id")
    # the receipt, and attempt 1 of h1 as last fetched
    assert deliveries.select("delivery_id", "outcome").rows() == [("h1", "failed"), ("w1", None)]


def test_history_snapshots_of_one_attempt_are_one_row_the_last_fetched(tmp_path: Path) -> None:
    # A backfill fetched attempt 1 under way (pending, no answer) and a later one fetched it
    # with its outcome: both rows were kept, and counting deliveries by outcome counted the
    # attempt twice.
    lake = ke.Lake(tmp_path)
    row = {"delivery_id": "wbd_1", "origin": "backfill", "created_at": T0, "event_id": "e1"}
    other = {**row, "delivery_id": "wbd_2", "event_id": "e2"}
    later = T0 + timedelta(hours=2)
    lake.write_deliveries(
        [{**row, "attempt": 1, "outcome": "succeeded", "response_status_code": 200,
          "received_at": later}]
    )  # fmt: skip
    lake.write_deliveries(  # written after, fetched before
        [
            {**row, "attempt": 1, "outcome": "pending", "received_at": T0 + timedelta(hours=1)},
            {**row, "attempt": 2, "outcome": "pending", "received_at": later},
            # not attempted yet (no attempt number): attempt 1's, fetched before it
            {**row, "attempt": None, "outcome": "pending", "received_at": T0},
            # from a Kirim that sends no attempt (it documents none)
            {**other, "attempt": None, "outcome": "failed", "received_at": later},
            {**other, "attempt": None, "outcome": "pending", "received_at": T0},
            {"delivery_id": "wbd_1", "attempt": 1, "origin": "webhook", "received_at": T0},
        ]
    )
    expected = [
        ("backfill", 1, "succeeded", 200),
        ("backfill", 2, "pending", None),
        # no attempt: one row per delivery, the last fetched; the pending one fetched
        # before was kept too, counted twice by outcome
        ("backfill", None, "failed", None),
        ("webhook", 1, None, None),
    ]
    columns = ["origin", "attempt", "outcome", "response_status_code"]

    def rows() -> list[tuple[object, ...]]:
        mine = lake.deliveries().collect().select(columns).sort(columns, nulls_last=True).rows()
        query = f"SELECT {', '.join(columns)} FROM deliveries ORDER BY ALL NULLS LAST"
        assert lake.sql(query).fetchall() == mine
        return mine

    assert rows() == expected
    lake.compact()
    assert rows() == expected
    raw = pl.scan_parquet(tmp_path / "deliveries" / "**" / "*.parquet").collect()
    assert raw.height == len(expected)


def test_a_copy_without_ingest_seq_loses_to_one_with_it_in_every_reader(tmp_path: Path) -> None:
    # A file from a writer that left ingest_seq out: the Polars reader kept that copy (it
    # sorted nulls first) while the DuckDB view and the README query keep the other.
    lake = ke.Lake(tmp_path)
    row = {"delivery_id": "w1", "attempt": 1, "origin": "webhook", "outcome": "new"}
    lake.write_deliveries([{**row, "received_at": T0}])
    lake.write_deliveries([{**row, "received_at": T0}])
    files = sorted((tmp_path / "deliveries").rglob("*.parquet"))
    assert len(files) == 2
    table = pq.read_table(files[0])
    at = table.schema.get_field_index("ingest_seq")
    pq.write_table(table.set_column(at, "ingest_seq", pa.nulls(1, pa.int64())), files[0])
    kept = pq.read_table(files[1])["ingest_seq"].to_pylist()
    assert lake.deliveries().collect()["ingest_seq"].to_list() == kept
    assert [r[0] for r in lake.sql("SELECT ingest_seq FROM deliveries").fetchall()] == kept


_DELIVERY_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "delivery_id": st.sampled_from(["d1", "d2", None]),
            "attempt": st.sampled_from([1, 2, None]),
            "origin": st.sampled_from(["webhook", "backfill"]),
            "outcome": st.sampled_from(["new", "pending", "succeeded", None]),
            "received_at": st.sampled_from([T0, T0 + timedelta(hours=1), T0 + timedelta(days=1)]),
            "created_at": st.sampled_from([None, T0, T0 + timedelta(seconds=1)]),
        }
    ),
    max_size=8,
)
_EVENT_COPIES = st.lists(
    st.tuples(
        st.sampled_from(["k1", "k2", "k3"]),
        st.sampled_from([T0, T0 + timedelta(hours=1)]),
        st.sampled_from(["d1", "d2", None]),
    ),
    max_size=6,
)


@given(st.lists(st.tuples(_DELIVERY_ROWS, _EVENT_COPIES), min_size=1, max_size=3))
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_copies_read_alike_in_every_reader_before_and_after_compaction(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[list[dict[str, object]], list[tuple[str, datetime, str | None]]]],
) -> None:
    # Random receipts, history fetches and event copies, written in batches (each batch a
    # flush with its own ingest_seq): the Polars reader, the DuckDB view and the README's
    # plain query keep the same rows, and compaction keeps them too.
    root = tmp_path_factory.mktemp("lake")
    lake = ke.Lake(root)
    for deliveries, copies in batches:
        if deliveries:
            lake.write_deliveries(deliveries)
        records = [
            dataclasses.replace(ev(key, received=at), delivery_id=dlv, payload=f'"{i}"')
            for i, (key, at, dlv) in enumerate(copies)
        ]
        if records:
            lake.write_events(records)
    if not parquet_files(root):
        return

    def read() -> dict[str, list[tuple[object, ...]]]:
        seen = {}
        queries = readme_queries(root)
        for table, query in zip(("events", "deliveries"), queries, strict=True):
            if not (root / table).exists():
                continue
            mine = getattr(lake, table)().collect()
            cols = [c for c in mine.columns if c != "date"]
            rows = mine.select(cols).sort(cols, nulls_last=True).rows()
            view = lake.sql(f"SELECT {', '.join(cols)} FROM {table} ORDER BY ALL NULLS LAST")
            assert view.fetchall() == rows, table
            plain = duckdb.sql(query).pl().select(cols)
            plain = plain.with_columns(pl.col(c).cast(mine.schema[c]) for c in cols)
            assert plain.sort(cols, nulls_last=True).rows() == rows, table
            seen[table] = rows
        return seen

    before = read()
    lake.compact()
    assert read() == before


def test_history_rows_without_created_at_read_alike_everywhere(tmp_path: Path) -> None:
    # Kirim left created_at out: each fetch is filed under its own day. The last-fetched
    # rule then took its winner from another day than an as_of read and compaction could
    # see: the view gave 0 rows as of May 2 where Polars gave 1, and a compacted lake 2.
    lake = ke.Lake(tmp_path)
    row = {"delivery_id": "wbd_1", "attempt": 1, "origin": "backfill", "event_id": "e1"}
    may = [T0 + timedelta(days=d) for d in range(3)]  # May 1, 2, 3
    lake.write_deliveries(
        [
            {**row, "outcome": "pending", "received_at": may[0]},
            {**row, "outcome": "succeeded", "received_at": may[2]},
            {**row, "attempt": 2, "outcome": "dead", "received_at": may[0]},
            {**row, "attempt": 2, "outcome": "dead", "received_at": may[2]},  # a copy, a day on
        ]
    )
    plain = readme_queries(tmp_path)[1]
    columns = ["attempt", "outcome", "date"]

    def views(reader: ke.Lake) -> list[tuple[object, ...]]:
        mine = reader.deliveries().collect().select(columns).sort(columns).rows()
        query = f"SELECT {', '.join(columns)} FROM deliveries ORDER BY ALL"
        assert reader.sql(query).fetchall() == mine
        return mine

    everything = [(1, "pending", may[0].date()), (1, "succeeded", may[2].date()),
                  (2, "dead", may[0].date()), (2, "dead", may[2].date())]  # fmt: skip
    for compacted in (False, True):
        assert views(lake) == everything, compacted
        assert duckdb.sql(plain).pl().select(columns).sort(columns).rows() == everything
        assert views(lake.as_of(may[1])) == [everything[0], everything[2]]
        lake.compact()


def test_an_attempt_whose_created_at_moved_a_day_reads_alike_everywhere(tmp_path: Path) -> None:
    # Kirim gave created_at once a millisecond before midnight, once at midnight: the two
    # fetches lie in two partitions. Polars and the README collapsed them, the view and a
    # compacted lake did not.
    lake = ke.Lake(tmp_path)
    row = {"delivery_id": "wbd_1", "attempt": 1, "origin": "backfill", "event_id": "e1"}
    midnight = datetime(2026, 5, 2, tzinfo=UTC)
    lake.write_deliveries(
        [{**row, "outcome": "pending", "created_at": midnight - timedelta(milliseconds=1),
          "received_at": midnight}]
    )  # fmt: skip
    lake.write_deliveries(
        [{**row, "outcome": "succeeded", "created_at": midnight,
          "received_at": midnight + timedelta(days=1)}]
    )  # fmt: skip
    plain = readme_queries(tmp_path)[1]
    for _ in range(2):  # before and after compaction
        mine = sorted(lake.deliveries().collect()["outcome"].to_list())
        assert mine == ["pending", "succeeded"]  # one per partition, as compaction keeps them
        assert sorted(r[0] for r in lake.sql("select outcome from deliveries").fetchall()) == mine
        assert sorted(duckdb.sql(plain).pl()["outcome"].to_list()) == mine
        lake.compact(full=True)


def test_deliveries_partitioned_and_exact_copies_collapse(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    receipt = {"delivery_id": "d1", "attempt": 1, "origin": "webhook", "received_at": T0}
    history = {
        "delivery_id": "d1",
        "attempt": 2,
        "origin": "backfill",
        "received_at": T0 + timedelta(days=9),
        "created_at": T0 - timedelta(days=1),
    }
    lake.write_deliveries([receipt, history])
    lake.write_deliveries([receipt])  # a repeated journal flush
    folders = sorted(p.parent.name for p in parquet_files(tmp_path / "deliveries"))
    assert folders == ["date=2026-04-30", "date=2026-05-01", "date=2026-05-01"]
    frame = lake.deliveries().collect()
    assert sorted(frame["attempt"].to_list()) == [1, 2]
    assert lake.sql("select count(*) from deliveries").fetchall() == [(2,)]
    assert lake.deliveries(until="2026-04-30").collect()["attempt"].to_list() == [2]
    # as of an instant, a history row counts from when Kirim made it (created_at), not
    # from when a backfill fetched it, in the view as in Polars
    then = lake.as_of(T0 - timedelta(hours=1))
    assert then.deliveries().collect()["attempt"].to_list() == [2]
    assert then.sql("select attempt from deliveries").fetchall() == [(2,)]


def test_empty_lake_reads_empty_with_schema(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    assert lake.events().collect().height == 0
    assert lake.deliveries().collect().height == 0
    assert lake.sql("select count(*) from events").fetchall() == [(0,)]
    assert "event_key" in lake.sql("select * from events").columns
    assert list(tmp_path.iterdir()) == []  # reading creates nothing


def test_a_lake_folder_that_does_not_exist_is_an_error_not_an_empty_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook runs in its own folder: ``Lake("data")`` there is another folder, which
    read as an empty lake, every helper answering zero rows."""
    monkeypatch.chdir(tmp_path)
    lake = ke.Lake("data")
    where = str(tmp_path / "data")
    reads = (lake.events, lake.deliveries, lake.connect, lake.message_timelines, lake.stats)
    for read in reads:  # stats() too: it answered an empty frame
        with pytest.raises(ke.LakeError, match=f"no lake at {re.escape(where)}"):
            read()
    assert not (tmp_path / "data").exists()  # reading creates nothing
    lake.write_events([ev("a")])  # the first write makes it
    assert lake.events().collect().height == 1


def test_a_folder_holding_other_things_is_not_read_as_an_empty_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Lake("data/events")`` (one level too deep) or the project folder above the lake
    read as an empty lake: a report of zeros, exit 0."""
    lake = ke.Lake(tmp_path / "data")
    lake.write_events([ev("a")])
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)
    cases = {
        ".": "data",
        "data/events": "type=",
        "notebooks/..": "notebooks",
    }
    kind = next((tmp_path / "data" / "events").iterdir()).name
    cases[f"data/events/{kind}"] = "date="
    for where, holds in cases.items():
        for read in (ke.Lake(where).events, ke.Lake(where).message_timelines):
            with pytest.raises(ke.LakeError, match="is not a kirim-events lake") as err:
                read()
            assert holds in str(err.value)
            assert str(err.value).endswith(f"did you mean {tmp_path / 'data'}?")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ke.LakeError, match=r"holds notes\.txt but no events/") as err:
        ke.Lake("other").events()
    assert "did you mean" not in str(err.value)  # no lake above or below it
    # an empty folder is a new lake (dot files aside: data/.gitkeep); so is a collector's
    # folder before its first flush
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / ".gitkeep").write_text("")
    (tmp_path / "new" / "lost+found").mkdir()  # a new volume mounted there
    assert ke.Lake("new").events().collect().height == 0
    (tmp_path / "new" / "_journal").mkdir()
    (tmp_path / "new" / "stray.txt").write_text("")
    assert ke.Lake("new").message_timelines().collect().height == 0
    assert ke.Lake("data").events().collect().height == 1


def test_repr_names_the_folder_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook runs in its own folder: ``Lake('data')`` showed as ``Lake('data')``, not
    saying which data folder it had opened."""
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    lake = ke.Lake("data")
    assert repr(lake) == f"Lake({str(tmp_path.resolve() / 'notebooks' / 'data')!r})"
    past = lake.as_of("2026-05-01T09:00:00Z")
    assert repr(past).endswith(", as_of='2026-05-01T09:00:00+00:00')")


def test_a_file_is_not_a_lake(tmp_path: Path) -> None:
    """``ke.Lake`` given one of the lake's Parquet files (or any file) raised StorageError
    "lake storage failed to read '_state/lake.json': [Errno 20] Not a directory"."""
    lake = ke.Lake(tmp_path / "data")
    lake.write_events([ev("a")])
    (part,) = (tmp_path / "data" / "events").glob("*/*/*.parquet")
    with pytest.raises(ke.LakeError, match="is a file, not a lake's folder") as err:
        ke.Lake(part)
    assert str(err.value).endswith(f"did you mean {tmp_path / 'data'}?")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ke.LakeError, match=r"notes\.txt is a file, not a lake's folder$"):
        ke.Lake(tmp_path / "notes.txt")


def test_span_says_when_the_events_happened_whatever_as_of(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    assert lake.span() is None  # no events yet
    lake.write_events([ev("a", occurred=T0), ev("b", occurred=T0 + timedelta(days=3))])
    lake.write_events([ev("a", occurred=T0)])  # a copy, not yet compacted
    span = (T0, T0 + timedelta(days=3))
    assert lake.span() == span
    assert lake.as_of(T0 + timedelta(hours=1)).span() == span  # the whole lake's
    (tmp_path / "lost+found").mkdir()  # a volume's root: no one's content
    assert ke.Lake(tmp_path).span() == span
    # A retry of a body without its own time takes it from its signature: a copy may carry
    # a later event time than the copy kept (the first received), and the span is the kept
    # events', not a copy's
    later = T0 + timedelta(days=5)
    lake.write_events([ev("b", occurred=later, received=later)])
    assert lake.events().filter(pl.col("occurred_at") == later).collect().height == 0
    assert lake.span() == span


def test_a_mistyped_event_type_is_an_error_naming_the_near_one(tmp_path: Path) -> None:
    # events(type="message.stauts") read as an empty frame: a typo passed for "none yet"
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a")])
    held = lake.events().collect()["type"][0]
    typo = held[:-2] + held[-1] + held[-2]
    with pytest.raises(ke.LakeError, match=f"did you mean {held!r}"):
        lake.events(type=typo)
    with pytest.raises(ke.LakeError, match="did you mean"):
        lake.events(type=[held, typo])
    assert lake.events(type="contact.updated").collect().height == 0  # none yet: no error
    lake.write_events([dataclasses.replace(ev("c"), type="contact.created")])
    # a known type near one held is no typo; an unknown type near nothing reads as empty
    assert lake.events(type="contact.updated").collect().height == 0
    assert lake.events(type="kirim.added_later").collect().height == 0
    # types Kirim may add, a few letters from known ones: not typos
    for new in ("conversation.opened", "conversation.unassigned", "contact.deleted"):
        assert lake.events(type=new).collect().height == 0
    with pytest.raises(ke.LakeError, match=r"did you mean 'message\.status'"):
        lake.events(type="message.stauts")  # near a known type the lake does not hold
    # the same words but for plurals, case and separators (more than one edit apart)
    for typo in ("message.statuses", "Messages_Statuses", "MESSAGE STATUS"):
        with pytest.raises(ke.LakeError, match=r"did you mean 'message\.status'"):
            lake.events(type=typo)
    assert lake.events(type=held).collect().height == 1
    # not a name: "'int' object is not iterable", "object of type 'NoneType' has no len()"
    for wrong in (123, [held, None], b"message.status"):
        with pytest.raises(TypeError, match=r"^type: expected an event type such as"):
            lake.events(type=wrong)  # type: ignore[arg-type]
    assert lake.events(type=(held,)).collect().height == 1  # any sequence of names


def test_stats_counts_rows_files_and_bytes(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b")])
    lake.write_events([ev("a")])
    stats = lake.stats().filter(pl.col("table") == "events").row(0, named=True)
    assert stats["rows"] == 3
    assert stats["files"] == 2
    assert not stats["clean"]
    on_disk = sum(os.path.getsize(p) for p in parquet_files(tmp_path / "events"))
    assert stats["bytes"] == on_disk


def test_first_received_wins_at_scale_in_both_readers(tmp_path: Path) -> None:
    """Many copies per key, shuffled over files and days: both readers pick the same winner."""
    rng = random.Random(5)
    lake = ke.Lake(tmp_path)
    best: dict[str, tuple[datetime, str]] = {}
    for batch in range(6):
        records = []
        for i in range(3000):
            key = f"k{rng.randint(0, 4000)}"
            received = T0 + timedelta(seconds=rng.randint(0, 10**7))
            day = int(key[1:]) % 7
            payload = f"{key}/{batch}/{i}"
            records.append(
                ev(key, occurred=T0 + timedelta(days=day), received=received, payload=payload)
            )
            if key not in best or received < best[key][0]:
                best[key] = (received, payload)
        lake.write_events(records)
    expected = {k: p for k, (_, p) in best.items()}
    frame = lake.events().select("event_key", "payload").collect()
    assert frame.height == len(expected)
    assert dict(frame.iter_rows()) == expected
    assert dict(lake.sql("select event_key, payload from events").fetchall()) == expected


def test_a_failed_write_is_a_storage_error_and_leaves_no_temp_files(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a")])
    # A file where a partition folder must go: the write cannot complete.
    (tmp_path / "events/type=message.status").write_text("in the way")
    with pytest.raises(ke.StorageError, match="lake storage failed"):
        lake.write_events([ev("b", type="message.status"), ev("c")])
    assert list((tmp_path / "_tmp").iterdir()) == []
    assert lake.events().collect()["event_key"].to_list() == ["a"]  # nothing half-visible


@given(st.text(max_size=80))
def test_any_type_maps_to_one_safe_folder_name(event_type: str) -> None:
    name = encode_type(event_type)
    assert name
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert "\n" not in name
    assert name not in (".", "..")
    assert len(name.encode()) <= 255
    assert name.isascii()
    if not name.startswith("_h_"):
        assert decode_type(name) == event_type


def test_compacting_a_folder_that_is_not_a_lake_creates_nothing(tmp_path: Path) -> None:
    report = ke.Lake(tmp_path / "typo").compact()
    assert report.partitions == 0
    assert not (tmp_path / "typo").exists()


def test_copies_tied_across_writers_resolve_the_same_way_everywhere(tmp_path: Path) -> None:
    """Two writers in the same millisecond give equal ingest_seq; with equal received_at
    too, origin, delivery_id and attempt decide, in both readers and in compaction."""
    clock = 1_780_000_000.0
    first = ke.Lake(tmp_path, now=lambda: clock, writer_id="bbb")
    second = ke.Lake(tmp_path, now=lambda: clock, writer_id="aaa")
    keys = [f"k{i}" for i in range(40)]
    first.write_events([dataclasses.replace(ev(k), delivery_id="wbd_b", attempt=1) for k in keys])
    second.write_events([dataclasses.replace(ev(k), delivery_id="wbd_a", attempt=2) for k in keys])
    raw = pl.read_parquet(parquet_files(tmp_path / "events"), hive_partitioning=False)
    assert raw.group_by("event_key").agg(pl.col("ingest_seq").n_unique()).get_column(
        "ingest_seq"
    ).to_list() == [1] * len(keys)  # a real tie: same received_at, same ingest_seq
    expected = {k: "wbd_a" for k in keys}  # "wbd_a" < "wbd_b"
    assert dict(first.events().select("event_key", "delivery_id").collect().rows()) == expected
    for _ in range(3):  # DuckDB's row_number had picked a different copy on each call
        rows = first.sql("select event_key, delivery_id from events").fetchall()
        assert dict(rows) == expected
    first.compact(full=True)
    assert dict(first.events().select("event_key", "delivery_id").collect().rows()) == expected


def test_the_readme_query_keeps_the_readers_copy_whatever_the_sessions_null_order(
    tmp_path: Path,
) -> None:
    """The README's plain queries are run in the reader's own DuckDB session, whose
    ``default_null_order`` may be NULLS FIRST (Spark's ascending default too): copies tied
    on received_at and ingest_seq (two writers in one millisecond), one without a
    delivery_id, then kept the other copy than Lake does (nulls last). The queries now
    say NULLS LAST themselves."""
    clock = 1_780_000_000.0
    first = ke.Lake(tmp_path, now=lambda: clock, writer_id="bbb")
    second = ke.Lake(tmp_path, now=lambda: clock, writer_id="aaa")
    keys = [f"k{i}" for i in range(10)]
    first.write_events(
        [dataclasses.replace(ev(k), delivery_id=None, payload="no id") for k in keys]
    )
    second.write_events(
        [dataclasses.replace(ev(k), delivery_id="wbd_a", payload="id") for k in keys]
    )
    history = {"delivery_id": "h1", "attempt": 1, "origin": "backfill", "created_at": T0}
    first.write_deliveries([{**history, "outcome": "pending"}])  # fetched at no known time
    second.write_deliveries([{**history, "outcome": "failed", "received_at": T0}])
    kept = {
        "events": dict(first.events().select("event_key", "payload").collect().rows()),
        "deliveries": first.deliveries().select("outcome").collect().rows(),
    }
    assert set(kept["events"].values()) == {"id"}  # nulls last
    assert kept["deliveries"] == [("failed",)]
    for order in ("nulls_first", "nulls_last"):
        session = duckdb.connect()
        session.execute(f"SET default_null_order = '{order}'")
        events, deliveries = (session.sql(q) for q in readme_queries(tmp_path))
        assert dict(events.select("event_key, payload").fetchall()) == kept["events"], order
        assert deliveries.select("outcome").fetchall() == kept["deliveries"], order


def test_a_file_deleted_while_its_folder_is_listed_hides_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A compaction deletes the files it replaced while readers list the folders: one entry
    # gone between reading the folder and its stat() made the whole folder read as empty
    # (a read short by a partition, with no error; stats() showing it empty and clean).
    import kirim_events.lake.storage as storage

    lake = ke.Lake(tmp_path)
    lake.write_events([ev(f"k{i}") for i in range(5)])
    lake.compact()
    folder = next(p for p in (tmp_path / "events").rglob("date=*") if p.is_dir())
    doomed = folder / "w-000000000000-000001-gone.parquet"
    real = os.scandir

    class DeletingScandir:
        def __init__(self, path: str) -> None:
            self.entries = list(real(path))  # the folder is read ...
            if Path(path) == folder and doomed.exists():
                doomed.unlink()  # ... then a compaction deletes a file it replaced

        def __enter__(self) -> DeletingScandir:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            return iter(self.entries)

    monkeypatch.setattr(storage.os, "scandir", DeletingScandir)
    doomed.write_bytes(b"x")
    names = [e.name for e in lake.storage.list_dir(str(folder.relative_to(tmp_path)))]
    assert len(names) == 1
    assert names[0].startswith("c-")
    doomed.write_bytes(b"x")
    assert sorted(lake.events().collect()["event_key"]) == [f"k{i}" for i in range(5)]
    doomed.write_bytes(b"x")
    assert lake.stats()["rows"].sum() == 5


def test_as_of_a_view_never_widens_it(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev(f"e{i}", occurred=T0 + timedelta(hours=i)) for i in range(5)])
    early, late = T0 + timedelta(hours=1), T0 + timedelta(hours=3)
    assert lake.as_of(early).as_of(late).as_of_ts == early
    assert lake.as_of(late).as_of(early).as_of_ts == early
    assert lake.as_of(early).as_of(late).events().collect().height == 2


def test_a_bad_argument_is_also_a_value_error(tmp_path: Path) -> None:
    """An analyst's ``except ValueError`` catches it, as for any bad value in Python."""
    with pytest.raises(ValueError, match="not a time"):
        ke.Lake(tmp_path).as_of("yesterday-ish")


def test_a_written_file_and_its_name_are_durable_when_write_events_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush deletes the journal's rows once write_events returns, so by then each new
    events file must be on disk under its final name: its bytes synced before the rename,
    and the rename synced after it (one syncfs(2) each on Linux >= 5.8, else an fsync of
    the file, then of its folder). Nothing short of a power cut shows a missing sync, so the
    calls are recorded in order."""
    calls: list[tuple[str, ...]] = []
    real_replace, real_fsync = os.replace, os.fsync
    real_syncfs = storage_module._syncfs

    def replace(src: str, dst: str) -> None:
        calls.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def syncfs(path: str) -> None:
        calls.append(("syncfs",))
        real_syncfs(path)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("reads fsync'd paths from /proc/self/fd")
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(storage_module, "_syncfs", syncfs)
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("evt_first")])  # the lake's own folders and state are made
    calls.clear()
    lake.write_events([ev("evt_durable")])
    renames = [
        (i, src, dst)
        for i, (op, *args) in enumerate(calls)
        if op == "rename"
        for src, dst in [args]
        if dst.endswith(".parquet") and "/events/" in dst
    ]
    assert len(renames) == 1
    i, src, dst = renames[0]
    before, after = calls[:i], calls[i + 1 :]
    assert ("syncfs",) in before or ("fsync", src) in before, calls
    assert ("syncfs",) in after or ("fsync", os.path.dirname(dst)) in after, calls


def test_bounds_hold_their_instants_and_as_of_caps_a_later_until(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a", occurred=T0), ev("b", occurred=T0 + timedelta(hours=1))])
    lake.write_deliveries([{"delivery_id": "d1", "received_at": T0}])

    def keys(frame: pl.LazyFrame) -> list[str]:
        return sorted(frame.collect()["event_key"])

    assert keys(lake.events(since=T0)) == ["a", "b"]
    assert keys(lake.events(until=T0)) == ["a"]
    assert lake.deliveries(since=T0, until=T0).collect().height == 1
    # as of an instant, a later until reads no further than the instant
    assert keys(lake.as_of(T0).events(until=T0 + timedelta(days=1))) == ["a"]


def test_a_tied_copy_that_names_its_delivery_wins_over_one_that_does_not(tmp_path: Path) -> None:
    """Nulls last in ``EVENT_ORDER``: of two copies tied on received_at and ingest_seq, the
    one with a delivery id is kept, by the view as by Polars."""
    clock = 1_780_000_000.0
    first = ke.Lake(tmp_path, now=lambda: clock, writer_id="aaa")
    second = ke.Lake(tmp_path, now=lambda: clock, writer_id="bbb")
    keys = [f"k{i}" for i in range(10)]
    first.write_events([dataclasses.replace(ev(k), delivery_id=None) for k in keys])
    second.write_events([dataclasses.replace(ev(k), delivery_id="wbd_z") for k in keys])
    expected = {k: "wbd_z" for k in keys}
    assert dict(first.events().select("event_key", "delivery_id").collect().rows()) == expected
    assert dict(first.sql("select event_key, delivery_id from events").fetchall()) == expected


def test_the_readmes_word_on_reading_the_whole_data_folder_holds(tmp_path: Path) -> None:
    """The README tells outside readers to read one table's folder at a time, and what each
    engine does with all of DATA: DuckDB and Polars refuse it, but a pyarrow dataset of
    DATA returned both tables' rows as one, silently (the README had said only the two
    refused)."""
    import pyarrow.dataset as ds

    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b")])
    lake.write_deliveries([{"delivery_id": "w1", "attempt": 1, "received_at": T0}])
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    said = " ".join(readme.split())
    with pytest.raises(duckdb.BinderException, match="Hive partition mismatch"):
        duckdb.sql(f"select * from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=1)")
    assert '(DuckDB: "Hive partition mismatch"' in said
    with pytest.raises(pl.exceptions.SchemaFieldNotFoundError, match="type"):
        pl.scan_parquet(f"{tmp_path}/**/*.parquet", hive_partitioning=True).collect()
    assert "Polars: `SchemaFieldNotFoundError` on `type`" in said
    mixed = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert mixed.num_rows == 3  # two events and a delivery row, as one table
    assert "a pyarrow dataset of `DATA` does not" in said
    one = ds.dataset(tmp_path / "events", format="parquet", partitioning="hive").to_table()
    assert sorted(one["event_key"].to_pylist()) == ["a", "b"]
    assert one.schema.field("date").type == pa.string()
    assert "(pyarrow as text)" in said
