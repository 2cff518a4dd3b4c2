"""The DuckDB views over the lake: which reader they use, and that both give Polars' rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from localzone import local_zone
from polars.testing import assert_frame_equal
from test_analytics_support import VIEWS, by_key, conversation, in_utc, status
from test_lake import T0, ev

import kirim_events as ke


def plan(lake: ke.Lake, query: str) -> str:
    return "\n".join(row[1] for row in lake.sql(f"EXPLAIN {query}").fetchall())


def fill(lake: ke.Lake) -> None:
    """Two types over two days, an encoded type, compacted files plus newer writer files
    (which go through the dedup path), a duplicate and deliveries."""
    lake.write_events(
        [ev(f"a{i}", occurred=T0 + timedelta(hours=20 * i)) for i in range(4)]
        + [replace(ev(f"s{i}", type="message.status"), status="sent") for i in range(3)]
        + [ev("odd", type="Not A Type/..")]
    )
    lake.compact(full=True)
    lake.write_events([ev("a1", occurred=T0 + timedelta(hours=20)), ev("late")])
    lake.write_deliveries([{"delivery_id": f"d{i}", "received_at": T0} for i in range(3)])


def same_rows(lake: ke.Lake) -> None:
    ours = lake.sql("select * from events").pl().sort("event_key")
    assert_frame_equal(ours, lake.events().collect().sort("event_key"))
    assert ours["event_key"].to_list() == ["a0", "a1", "a2", "a3", "late", "odd", "s0", "s1", "s2"]
    assert lake.sql("select type from events where event_key = 'odd'").fetchall() == [
        ("Not A Type/..",)
    ]
    assert lake.sql("select count(*) from deliveries").fetchall() == [(3,)]
    # the analytics views, created over stand-ins, bind the real events at query time
    timelines = lake.sql("select * from message_timelines").pl().sort("message_id")
    assert_frame_equal(timelines, lake.message_timelines().collect().sort("message_id"))
    assert timelines["message_id"].to_list() == ["s0", "s1", "s2"]


def test_a_local_lake_is_read_by_duckdbs_own_parquet_reader(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    fill(lake)
    same_rows(lake)
    query = "select count(*) from events where type = 'message.status'"
    assert "READ_PARQUET" in plan(lake, query)
    assert "ARROW_SCAN" not in plan(lake, query)
    assert lake.sql(query).fetchall() == [(3,)]


def test_a_lake_under_a_key_value_folder_is_read_through_datasets(tmp_path: Path) -> None:
    """DuckDB would take ``env=prod`` in the lake's own path for a partition column."""
    lake = ke.Lake(tmp_path / "env=prod" / "lake")
    fill(lake)
    same_rows(lake)
    assert "READ_PARQUET" not in plan(lake, "select count(*) from events")


def test_a_file_without_a_column_goes_through_a_dataset(tmp_path: Path) -> None:
    """An older writer's file lacks ``team_id``: DuckDB's reader would fail on it, so the
    files listed with it are read as a pyarrow dataset (the compacted ones still are not)."""
    import pyarrow.parquet as pq

    lake = ke.Lake(tmp_path)
    fill(lake)
    assert "ARROW_SCAN" not in plan(lake, "select count(*) from events")
    folder = next((tmp_path / "events").glob("type=message.status/date=*"))
    table = pq.read_table(next(folder.glob("*.parquet"))).slice(0, 1)
    older = table.drop_columns(["team_id"]).set_column(
        0, "event_key", pl.Series(["older"]).to_arrow()
    )
    pq.write_table(older, folder / "w-000000000001-000001-older.parquet")
    both = plan(lake, "select count(*) from events")
    assert "ARROW_SCAN" in both
    assert "READ_PARQUET" in both
    assert lake.sql("select team_id from events where event_key = 'older'").fetchall() == [(None,)]
    assert lake.sql("select count(*) from events").fetchall() == [(10,)]
    assert lake.events().collect().height == 10


def test_only_files_compaction_did_not_write_have_their_footer_checked(tmp_path: Path) -> None:
    from kirim_events.lake import sqlviews

    lake = ke.Lake(tmp_path)
    fill(lake)
    lake.compact(full=True)
    sqlviews._complete.cache_clear()
    assert lake.sql("select count(*) from events").fetchall() == [(9,)]
    assert sqlviews._complete.cache_info().misses == 0  # every file is a compaction output
    lake.write_events([ev("newer")])
    assert lake.sql("select count(*) from events").fetchall() == [(10,)]
    assert sqlviews._complete.cache_info().misses == 1  # the one writer file


@pytest.fixture
def jakarta() -> Iterator[None]:
    with local_zone("Asia/Jakarta"):
        yield


@pytest.mark.usefixtures("jakarta")
def test_views_give_utc_timestamps_whatever_the_machines_zone(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    fill(lake)
    frame = lake.sql("select event_key, occurred_at from events").pl()
    assert frame.schema["occurred_at"] == pl.Datetime("us", "UTC")
    # so a view joins a helper's frame without a cast
    joined = frame.join(lake.events().select("event_key", "occurred_at").collect(), on="event_key")
    assert (joined["occurred_at"] == joined["occurred_at_right"]).all()
    assert joined.height == 9


@pytest.mark.parametrize("name", ["lake[1]", "lake?", "lake*", "lake{a,b}"])
def test_a_lake_path_with_glob_characters_is_read_as_it_is(tmp_path: Path, name: str) -> None:
    """``[1]`` was a character class to Polars (no rows, and compaction then deleted every
    file) and to DuckDB (which read ``lake1`` instead); siblings that a pattern would match
    must not be read either."""
    for sibling in ("lake1", "lakeX", "lakea"):
        other = ke.Lake(tmp_path / sibling)
        fill(other)
        other.compact(full=True)
    lake = ke.Lake(tmp_path / name)
    fill(lake)
    same_rows(lake)
    assert lake.deliveries().collect().height == 3
    lake.compact(full=True)
    same_rows(lake)
    assert lake.events().collect().height == 9
    assert any((tmp_path / name / "events").rglob("c-*.parquet"))


def test_sql_sees_the_callers_frames_as_duckdb_sql_does(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b")])
    wanted = pl.DataFrame({"event_key": ["b", "zzz"]})  # noqa: F841 (named in the SQL)
    assert lake.sql("select event_key from events join wanted using (event_key)").fetchall() == [
        ("b",)
    ]


def test_sql_takes_params_as_duckdb_sql_does(tmp_path: Path) -> None:
    """A time to filter on is passed, not formatted into the SQL text: ``lake.sql(query,
    params=...)`` refused the keyword that ``duckdb.sql`` takes."""
    from datetime import UTC, timezone

    lake = ke.Lake(tmp_path)
    lake.write_events([ev(f"a{i}", occurred=T0 + timedelta(hours=i)) for i in range(4)])
    since = (T0 + timedelta(hours=2)).astimezone(UTC)
    polars = lake.events().filter(pl.col("occurred_at") >= since).collect().height
    assert polars == 2
    query = "select count(*) from events where occurred_at >= $since"
    zoned = since.astimezone(timezone(timedelta(hours=7)))  # the same instant
    naive = since.replace(tzinfo=None)  # read as UTC, as the library reads it
    for given in (since, zoned, naive):
        assert lake.sql(query, params={"since": given}).fetchall() == [(polars,)]
    positional = "select count(*) from events where occurred_at >= ? and type = ?"
    assert lake.sql(positional, params=[since, "message.created"]).fetchall() == [(polars,)]


@pytest.mark.parametrize("name", ["it's", 'a"b; DROP VIEW events; --', "naïve 日本 \\n"])
def test_a_lake_path_with_quotes_is_read_by_duckdbs_own_reader(tmp_path: Path, name: str) -> None:
    """The file paths are literals in the views' SQL: a quote in the lake's folder name
    must neither break the view nor end the literal early."""
    lake = ke.Lake(tmp_path / name)
    fill(lake)
    lake.write_events([ev("q", type='it\'s; "odd" ü')])  # a type is a literal in the views too
    assert lake.sql("select type from events where event_key = 'q'").fetchall() == [
        ('it\'s; "odd" ü',)
    ]
    assert "READ_PARQUET" in plan(lake, "select count(*) from events")
    assert lake.sql("select count(*) from events").fetchall() == [(10,)]
    assert_frame_equal(
        lake.sql("select * from events").pl().sort("event_key"),
        lake.events().collect().sort("event_key"),
    )


def listed(lake: ke.Lake) -> dict[str, list[str]]:
    """What a user exploring ``lake.sql`` sees in the catalog's three listings."""
    return {
        query: sorted(row[0] for row in lake.sql(query).fetchall())
        for query in (
            "show tables",
            "select table_name from information_schema.tables",
            "select view_name from duckdb_views() where not internal",
        )
    }


@pytest.mark.parametrize("kind", ["empty", "local", "datasets"])
def test_the_catalog_lists_only_the_public_views(tmp_path: Path, kind: str) -> None:
    """``_events_empty`` and ``_deliveries_empty`` (stand-ins) and the registered pyarrow
    datasets (``_events_src_1``, on S3 or under a ``key=value`` folder) were listed beside
    the views, names a user should not use."""
    root = tmp_path / "env=prod" / "lake" if kind == "datasets" else tmp_path
    lake = ke.Lake(root)
    if kind != "empty":
        fill(lake)
        same_rows(lake)
    public = sorted(["events", "deliveries", *lake.analytics_views()])
    assert listed(lake) == dict.fromkeys(listed(lake), public)
    if kind == "empty":
        assert lake.sql("select count(*) from events").fetchall() == [(0,)]
        assert lake.sql("select count(*) from message_timelines").fetchall() == [(0,)]
        assert (
            lake.sql("select * from deliveries").columns
            == lake.deliveries().collect_schema().names()
        )


def test_the_views_do_not_depend_on_the_sessions_default_order(tmp_path: Path) -> None:
    # A session of the caller's (lake.connect()) may set DuckDB's default_order to DESC for
    # its own queries: the views read every ORDER BY under it, and the events view kept the
    # last copy of an event, the deliveries view the first fetch of an attempt, the status
    # history ran backwards, the cycles, the assignee and the lateness quantiles were wrong,
    # with nothing to say so.
    lake = ke.Lake(tmp_path)
    second_failure = replace(
        status("wamid.B", "failed", 9, 9, error=(1006, "y")), event_key="wamid.B:failed#2"
    )
    lake.write_events(
        [
            status("wamid.A", "sent", 0, 1),
            status("wamid.A", "delivered", 5, 8),
            status("wamid.A", "read", 9, 40),
            status("wamid.B", "failed", 7, 10, error=(131047, "x")),
            second_failure,
            conversation("evt_1", "assigned", "cnv_1", 0, 1, user="usr_a"),
            conversation("evt_2", "assigned", "cnv_1", 5, 6, user="usr_b", previous="usr_a"),
            conversation("evt_3", "closed", "cnv_1", 10, 11, closed_by="usr_b"),
            conversation("evt_4", "assigned", "cnv_1", 15, 16, user="usr_c", previous="usr_b"),
            conversation("evt_5", "closed", "cnv_1", 20, 21, closed_by="usr_c"),
        ]
    )
    lake.write_events([status("wamid.A", "sent", 0, 50, attempt=2)])  # a later copy
    fetched = {"delivery_id": "d1", "attempt": 1, "origin": "backfill", "created_at": T0}
    for outcome in ("pending", "succeeded"):  # one attempt fetched twice, at one instant
        lake.write_deliveries([fetched | {"outcome": outcome, "received_at": T0}])
    con = lake.connect()
    con.execute("SET default_order = 'DESC'")
    events = in_utc(con.sql("select * from events").pl()).sort("event_key")
    assert_frame_equal(events, lake.events().collect().sort("event_key"))
    deliveries = in_utc(con.sql("select * from deliveries").pl())
    assert deliveries["outcome"].to_list() == ["succeeded"]  # the last written
    assert_frame_equal(deliveries, lake.deliveries().collect())
    for view in VIEWS:
        ours = getattr(lake, view)().collect()
        assert ours.height > 0
        theirs = in_utc(con.sql(f"select * from {view}").pl())
        if view in ("message_status_history", "conversation_cycles", "delivery_health"):
            assert_frame_equal(theirs, ours)  # in the same order too
        else:
            assert_frame_equal(by_key(theirs, view), by_key(ours, view))
