"""Full compaction: every partition rewritten through today's dedup and file schema."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_lake import T0, ev, parquet_files
from test_lake_compact import (
    crashed_at_every_step,
    fill,
    finished_by_a_normal_run,
    on_disk,
    winners,
)
from typer.testing import CliRunner

import kirim_events as ke
from kirim_events.cli import app
from kirim_events.lake.writer import change_marker

MAY1 = "deliveries/date=2026-05-01"


def old_rule_lake(root: Path) -> ke.Lake:
    """A compacted lake whose clean May 1 partition holds two history rows of one delivery
    without an attempt number, as compaction kept them before such rows became snapshots of
    the first attempt: the older version wrote its compacted file with both rows."""
    lake = ke.Lake(root)
    row = {"delivery_id": "wbd_1", "origin": "backfill", "created_at": T0, "event_id": "e1"}
    lake.write_deliveries([{**row, "attempt": None, "outcome": "pending", "received_at": T0}])
    lake.compact()
    (compacted,) = parquet_files(root / MAY1)
    table = pq.read_table(compacted)
    later = table.to_pylist()[0] | {
        "outcome": "failed",
        "received_at": T0 + timedelta(hours=1),
        "ingest_seq": table["ingest_seq"][0].as_py() + 1,
    }
    both = pa.concat_tables([table, pa.Table.from_pylist([later], schema=table.schema)])
    pq.write_table(both, compacted)  # same name: the manifest still lists it, clean
    assert lake.stats()["clean"].all()
    return lake


def plain_count(root: Path, table: str) -> int:
    """Rows a plain DuckDB glob over one table's folder counts, with no help from us."""
    glob = f"{root}/{table}/**/*.parquet"
    result = duckdb.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning=true)")
    return int(result.fetchall()[0][0])


def test_a_full_compaction_applies_the_current_dedup_to_a_clean_partition(tmp_path: Path) -> None:
    lake = old_rule_lake(tmp_path)
    assert lake.deliveries().collect().height == 2  # clean: read as it is
    assert plain_count(tmp_path, "deliveries") == 2
    report = lake.compact(full=True)
    assert report.partitions == 1
    assert report.touched == [("deliveries", None, "2026-05-01")]
    assert (report.rows_in, report.rows_out) == (2, 1)
    rows = lake.deliveries().collect()
    assert rows.select("attempt", "outcome").rows() == [(None, "failed")]  # the last fetched
    assert plain_count(tmp_path, "deliveries") == 1
    assert lake.stats()["clean"].all()
    assert not list((tmp_path / "_state/changes").rglob("*.changed"))


def test_a_normal_compaction_still_reads_no_clean_partition(tmp_path: Path) -> None:
    # the scheduled run stays cheap: it rewrites the partitions written since, and reads no
    # clean one, even one a marker names (left by a run that crashed before clearing it)
    lake = old_rule_lake(tmp_path)
    (compacted,) = parquet_files(tmp_path / MAY1)
    lake.storage.publish(change_marker("deliveries", None, "2026-05-01", compacted.name), b"")
    later = T0 + timedelta(days=5)
    lake.write_deliveries([{"delivery_id": "w9", "attempt": 1, "received_at": later}])
    report = lake.compact()
    assert report.touched == [("deliveries", None, "2026-05-06")]
    assert report.files_in == 1
    assert lake.deliveries().collect().height == 3  # May 1 not read, its two rows left
    assert compacted.exists()
    assert not list((tmp_path / "_state/changes").rglob("*.changed"))  # consumed
    assert lake.compact().partitions == 0


def test_a_full_compaction_drops_the_signature_column_of_old_compacted_files(
    tmp_path: Path,
) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b", occurred=T0 + timedelta(days=3))])
    lake.compact()
    old, new = parquet_files(tmp_path / "events")
    # a compacted file from before the attempt signature stopped being stored
    table = pq.read_table(old)
    pq.write_table(table.append_column("signature", pa.array(["t=1,v1=" + "cd" * 32])), old)
    assert lake.stats()["clean"].all()
    glob = f"{tmp_path}/events/**/*.parquet"
    with pytest.raises(duckdb.InvalidInputException, match="schema mismatch"):
        duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)").fetchall()
    expected = winners(lake)
    assert lake.compact(full=True).partitions == 2
    files = parquet_files(tmp_path / "events")
    assert old not in files  # both rewritten
    assert new not in files
    assert all("signature" not in pq.read_schema(f).names for f in files)
    assert winners(lake) == expected
    rows = duckdb.sql(f"select event_key from read_parquet('{glob}', hive_partitioning=true)")
    assert sorted(r[0] for r in rows.fetchall()) == ["a", "b"]


def test_a_full_compaction_of_a_clean_lake_changes_nothing_it_reads(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    expected = fill(lake)  # copies of events received at different times
    lake.compact()
    before = parquet_files(tmp_path)
    deliveries = lake.deliveries().collect()
    report = lake.compact(full=True)
    assert report.partitions == len(before)  # every partition rewritten, counted as such
    assert (report.rows_in, report.rows_out) == (len(expected) + 1, len(expected) + 1)
    assert not set(before) & set(parquet_files(tmp_path))
    assert winners(lake) == expected  # the first received copy of each event
    assert on_disk(tmp_path) == sorted(expected)
    assert lake.deliveries().collect().equals(deliveries)
    assert lake.stats()["clean"].all()
    assert not list((tmp_path / "_state/changes").rglob("*.changed"))
    assert lake.compact().partitions == 0


def test_a_crash_at_every_step_of_a_full_compaction_is_finished_by_a_normal_run(
    tmp_path: Path,
) -> None:
    # Rewriting a clean single-file partition, which no change marker names: a crash after
    # its new file was written (or published, before the old one was deleted) left a file
    # a plain reader counts twice, and no later scheduled run would visit the partition.
    template = tmp_path / "template"
    lake = ke.Lake(template)
    expected = fill(lake)
    lake.compact()
    copies_left = []
    for step, root, lake in crashed_at_every_step(template, tmp_path, full=True):
        assert winners(lake) == expected, f"after a crash at {step}"
        assert lake.deliveries().collect().height == 1
        if len(on_disk(root)) != len(expected):
            copies_left.append(step)
            assert not lake.stats()["clean"].all(), f"stats call it clean after {step}"
        finished_by_a_normal_run(lake, root, expected, step)  # not a full one
        assert plain_count(root, "deliveries") == 1
    assert "file_written" in copies_left  # the case above did arise


def old_schema_and_rule_lake(root: Path) -> None:
    """old_rule_lake, plus a compacted events file from before the attempt signature stopped
    being stored: deliveries come first in a full run, the events types after."""
    lake = old_rule_lake(root)
    lake.write_events([ev("a"), ev("b", type="message.status", occurred=T0 + timedelta(days=3))])
    lake.compact()
    for old in parquet_files(root / "events"):
        table = pq.read_table(old)
        pq.write_table(table.append_column("signature", pa.array(["t=1,v1=" + "cd" * 32])), old)
    assert lake.stats()["clean"].all()


def current_everywhere(root: Path, step: str) -> None:
    """Every file through today's rule and schema, each row once, nothing left to finish."""
    lake = ke.Lake(root)
    assert lake.deliveries().collect().select("outcome").rows() == [("failed",)], step
    assert plain_count(root, "deliveries") == 1, f"after a crash at {step}"
    files = parquet_files(root / "events")
    assert not [f for f in files if "signature" in pq.read_schema(f).names], step
    glob = f"{root}/events/**/*.parquet"
    rows = duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)")
    assert sorted(r[0] for r in rows.fetchall()) == ["a", "b"], step  # plain SELECT * too
    stats = lake.stats()
    assert stats["clean"].all(), step
    assert stats["leftover_files"].sum() == 0, step
    assert not list((root / "_state/changes").rglob("*.changed")), step
    assert lake.unfinished_full_compaction() is None, step
    assert not (root / "_state/full-compaction.json").exists(), step


@pytest.mark.parametrize("next_run", ["normal", "full"])
def test_a_full_compaction_crashed_at_any_step_is_finished_by_the_next_run_of_either_kind(
    tmp_path: Path, next_run: str
) -> None:
    # The scheduled run after a crashed full one cleared up but rewrote no clean partition:
    # the types the full run had not reached kept the old rule's rows and the dropped
    # column, and only another --full rewrote them. The lake now records the full run as
    # it begins, and the next run of either kind finishes it.
    template = tmp_path / "template"
    old_schema_and_rule_lake(template)
    finished = []
    for step, root, lake in crashed_at_every_step(template, tmp_path, full=True):
        assert lake.unfinished_full_compaction() is not None, step
        report = lake.compact(full=next_run == "full")
        if report.finished_full_run is not None:
            finished.append(step)
        current_everywhere(root, step)
    if next_run == "normal":  # said so at every crash point
        assert len(finished) == len(list((tmp_path).glob("crash*")))
    else:
        assert finished == []  # a full run is no finishing one: it does it all again


def test_a_normal_run_finishing_a_full_one_rewrites_only_the_types_it_did_not_reach(
    tmp_path: Path,
) -> None:
    template = tmp_path / "template"
    old_schema_and_rule_lake(template)
    root = tmp_path / "lake"
    shutil.copytree(template, root)
    lake = ke.Lake(root)

    def stop_after_deliveries(step: str) -> None:
        if step == "markers_cleared":  # the deliveries group's last step
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        lake.compact(full=True, hook=stop_after_deliveries)
    began = lake.unfinished_full_compaction()
    assert began is not None
    report = lake.compact()
    assert report.finished_full_run == began
    assert {t for t, _g, _d in report.touched} == {"events"}  # deliveries were done
    assert report.partitions == 2
    current_everywhere(root, "markers_cleared")
    assert lake.compact().finished_full_run is None


def test_compact_full_on_the_command_line_rewrites_and_counts_clean_partitions(
    tmp_path: Path,
) -> None:
    old_rule_lake(tmp_path)
    result = CliRunner().invoke(app, ["compact", "--full", "--no-flush", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"partitions rewritten\W+1\b", result.output), result.output
    reopened = ke.Lake(tmp_path)
    assert reopened.deliveries().collect().height == 1
    assert reopened.stats()["clean"].all()


def test_an_unreadable_full_run_record_is_replaced_by_a_full_run_and_named_otherwise(
    tmp_path: Path,
) -> None:
    # A damaged _state/full-compaction.json (a bad restore) stopped every compaction, the
    # --full run too, which records itself over it, with "is not valid JSON" and no remedy
    lake = ke.Lake(tmp_path)
    lake.write_events(
        [ev("a", payload="first"), ev("a", payload="copy", received=T0 + timedelta(1))]
    )
    record = tmp_path / "_state/full-compaction.json"
    record.write_text('{"version": 1, "started_at": "2026')
    with pytest.raises(ke.LakeError, match="compact --full"):
        lake.compact()
    report = lake.compact(full=True)
    assert report.partitions == 1
    assert not record.exists()
    assert lake.unfinished_full_compaction() is None
    assert lake.events().collect()["payload"].to_list() == ["first"]


def test_the_readme_says_how_to_read_a_lake_compacted_with_the_signature_column(
    tmp_path: Path,
) -> None:
    """Files compacted before the signature column was dropped keep it beside newer files
    without it. Plain readers fail on such a lake, and the README's open-format section,
    the page outside readers read, did not say so (only compact's --full row did): it now
    names the failure, the --full that ends it, and the reader options meanwhile."""
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b", occurred=T0 + timedelta(days=3))])
    lake.compact()
    old, _new = parquet_files(tmp_path / "events")
    table = pq.read_table(old)
    pq.write_table(table.append_column("signature", pa.array(["t=1,v1=" + "cd" * 32])), old)
    glob = f"{tmp_path}/events/**/*.parquet"
    said = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    open_format = said.split("**Open format.**", 1)[1].split("## ", 1)[0]
    with pytest.raises(duckdb.InvalidInputException, match="schema mismatch"):
        duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)").fetchall()
    assert """(DuckDB's "schema mismatch", Polars' `ColumnNotFoundError`)""" in open_format
    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert "until one `kirim-events compact --full` has rewritten them" in open_format
    assert "`union_by_name = true` (DuckDB)" in open_format
    union = duckdb.sql(
        f"select event_key from read_parquet('{glob}', hive_partitioning=true, union_by_name=true)"
    )
    assert sorted(r[0] for r in union.fetchall()) == ["a", "b"]
    assert "`missing_columns='insert', extra_columns='ignore'` (Polars)" in open_format
    frame = pl.scan_parquet(
        glob, hive_partitioning=True, missing_columns="insert", extra_columns="ignore"
    ).collect()
    assert sorted(frame["event_key"]) == ["a", "b"]
