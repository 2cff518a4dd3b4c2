"""Schema version in _state/, schema evolution, and as_of views of the lake."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_lake import T0, ev

import kirim_events as ke
from kirim_events.errors import LakeError, SchemaVersionError
from kirim_events.schema import EVENT_SCHEMA, events_table


def _write_version(root: Path, **record: object) -> None:
    (root / "_state").mkdir(parents=True, exist_ok=True)
    (root / "_state/lake.json").write_text(json.dumps(record))


def test_a_newer_incompatible_lake_is_refused_clearly(tmp_path: Path) -> None:
    _write_version(tmp_path, format="kirim-events-lake", schema_version=3, min_reader_version=2)
    with pytest.raises(SchemaVersionError, match=r"schema version 3.*Upgrade kirim-events"):
        ke.Lake(tmp_path)


def test_a_newer_additive_lake_is_still_readable(tmp_path: Path) -> None:
    ke.Lake(tmp_path).write_events([ev("a")])
    _write_version(tmp_path, format="kirim-events-lake", schema_version=2, min_reader_version=1)
    assert ke.Lake(tmp_path).events().collect().height == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"format": "something-else", "schema_version": 1}', "not a kirim-events lake"),
        ('{"format": "kirim-events-lake", "schema_version": "one"}', "integer schema_version"),
    ],
)
def test_a_damaged_version_record_is_a_clear_error(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state/lake.json").write_text(content)
    with pytest.raises(LakeError, match=message):
        ke.Lake(tmp_path)


def test_files_with_fewer_or_more_columns_are_read(tmp_path: Path) -> None:
    """An older writer without a column, a newer one with an extra column: both are read."""
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("current")])
    folder = tmp_path / "events/type=message.created/date=2026-05-01"
    file_schema = pa.schema([f for f in EVENT_SCHEMA if f.name != "type"])
    base = events_table([ev("old")], ingest_seq=[1]).select(file_schema.names)
    older = base.drop_columns(["error_title", "team_id"])
    pq.write_table(older, folder / "w-000000000001-000001-older.parquet")
    newer = events_table([ev("new")], ingest_seq=[2]).select(file_schema.names)
    newer = newer.append_column("shiny_new_column", pa.array(["x"]))
    pq.write_table(newer, folder / "w-000000000002-000001-newer.parquet")
    frame = lake.events().sort("event_key").collect()
    assert frame["event_key"].to_list() == ["current", "new", "old"]
    assert frame.filter(pl.col("event_key") == "old")["team_id"].item() is None
    assert lake.sql("select count(*) from events").fetchall() == [(3,)]
    lake.compact(full=True)
    assert sorted(lake.events().collect()["event_key"]) == ["current", "new", "old"]


def test_as_of_restricts_every_reader_to_event_time(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev(f"k{d}", occurred=T0 + timedelta(days=d)) for d in range(5)])
    lake.write_deliveries(
        [{"delivery_id": f"d{d}", "received_at": T0 + timedelta(days=d)} for d in range(5)]
    )
    past = lake.as_of("2026-05-03T12:00:00Z")
    assert past.as_of_ts == T0 + timedelta(days=2)
    assert lake.as_of_ts is None  # the original is untouched
    assert sorted(past.events().collect()["event_key"]) == ["k0", "k1", "k2"]
    assert past.events(until="2026-06-01").collect().height == 3
    assert past.events(since="2026-05-03").collect()["event_key"].to_list() == ["k2"]
    assert past.sql("select count(*) from events").fetchall() == [(3,)]
    assert past.deliveries().collect().height == 3
    assert past.sql("select count(*) from deliveries").fetchall() == [(3,)]
    assert "as_of" in repr(past)
    assert past.message_timelines().collect().height == 0  # analytics follow the view


@pytest.mark.parametrize("writer_id", ["a/b", "../../x", "Host-1", "", "x" * 33, "é"])
def test_a_writer_id_that_cannot_name_a_file_is_refused(tmp_path: Path, writer_id: str) -> None:
    with pytest.raises(ke.ConfigError, match="writer_id"):
        ke.Lake(tmp_path, writer_id=writer_id)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_negative_or_fractional_dedup_window_is_refused(tmp_path: Path) -> None:
    """``dedup_window_days=-1`` planned no partition as dirty: two copies of an event not
    yet compacted were both read (events, views and helpers); 2.5 or "2" failed later with a
    bare TypeError."""
    lake = ke.Lake(tmp_path)
    event = ev("k1", occurred=T0)
    lake.write_events([event])
    lake.write_events([event])  # a second copy, not compacted yet
    assert ke.Lake(tmp_path, dedup_window_days=0).events().collect().height == 1
    for bad in (-1, 2.5, "2", None, True):
        with pytest.raises(ke.ConfigError, match="dedup_window_days must be a whole number"):
            ke.Lake(tmp_path, dedup_window_days=bad)  # type: ignore[arg-type]


def test_bad_time_arguments_are_clear(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    with pytest.raises(ke.ConfigError, match="not a time"):
        lake.as_of("yesterday-ish")
    with pytest.raises(TypeError, match="unexpected"):
        lake.events(kind="x")


def test_the_attempt_signature_is_not_stored_and_older_files_with_it_still_read(
    tmp_path: Path,
) -> None:
    """The signature header belongs to one delivery attempt: parsed, used, not kept."""
    lake = ke.Lake(tmp_path)
    lake.write_events([replace(ev("new"), signature="t=1,v1=" + "ab" * 32)])
    folder = tmp_path / "events/type=message.created/date=2026-05-01"
    (written,) = folder.glob("*.parquet")
    assert "signature" not in pq.read_schema(written).names
    # A file from a lake written before the column was dropped.
    file_schema = pa.schema([f for f in EVENT_SCHEMA if f.name != "type"])
    old = events_table([ev("old")], ingest_seq=[1]).select(file_schema.names)
    old = old.append_column("signature", pa.array(["t=1,v1=" + "cd" * 32]))
    pq.write_table(old, folder / "w-000000000001-000001-old.parquet")
    assert sorted(lake.events().collect()["event_key"]) == ["new", "old"]
    assert "signature" not in lake.events().collect_schema().names()
    lake.compact(full=True)
    files = list(folder.glob("*.parquet"))
    assert files
    assert all("signature" not in pq.read_schema(f).names for f in files)
    assert sorted(lake.events().collect()["event_key"]) == ["new", "old"]
