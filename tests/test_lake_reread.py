"""``reader.reread``: a read planned again when a compaction deleted the files it planned."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from racing import compacted_meanwhile
from test_lake import T0, ev

import kirim_events as ke
import kirim_events.lake as lake_module
from kirim_events.lake.reader import READ_ATTEMPTS, reread
from kirim_events.lake.storage import open_storage


def _lake(home: Path) -> None:
    lake = ke.Lake(home)
    for key in ("a", "b", "c"):
        lake.write_events([ev(key)])  # one small file each


@pytest.mark.parametrize(
    ("method", "read"),
    [
        ("events", lambda lake: lake.events().collect()["event_key"].sort().to_list()),
        (
            "sql",
            lambda lake: [
                k for (k,) in lake.sql("select event_key from events order by 1").fetchall()
            ],
        ),
    ],
    ids=["polars", "duckdb"],
)
def test_a_read_whose_files_a_compaction_deleted_is_planned_and_run_again(
    tmp_path: Path, method: str, read: Callable[[ke.Lake], list[str]]
) -> None:
    _lake(tmp_path)
    raced, ran = compacted_meanwhile(method, {1, 2}, ev("a"))
    lake = raced(tmp_path)
    with pytest.raises((FileNotFoundError, duckdb.IOException)):
        read(lake)  # without reread: the race is real
    assert len(ran) == 1
    assert reread(lambda: read(lake)) == ["a", "b", "c"]
    assert len(ran) == 2  # its first run was raced, its second was not


def test_it_gives_up_after_its_attempts_with_the_last_failure(tmp_path: Path) -> None:
    _lake(tmp_path)
    raced, ran = compacted_meanwhile("events", range(1, 100), ev("a"))
    lake = raced(tmp_path)
    with pytest.raises(FileNotFoundError):
        reread(lambda: lake.events().collect())
    assert len(ran) == READ_ATTEMPTS == 3
    with pytest.raises(FileNotFoundError):
        reread(lambda: lake.events().collect(), attempts=1)
    assert len(ran) == 4


def test_a_frame_planned_before_is_not_planned_again(tmp_path: Path) -> None:
    """Only ``read`` plans: a frame made outside it reads the same deleted files each time."""
    _lake(tmp_path)
    raced, ran = compacted_meanwhile("events", {1}, ev("a"))
    frame = raced(tmp_path).events()
    with pytest.raises(FileNotFoundError):
        reread(frame.collect)
    assert len(ran) == 1


def test_other_failures_are_raised_at_once(tmp_path: Path) -> None:
    _lake(tmp_path)
    runs: list[int] = []

    def wrong_column() -> pl.DataFrame:
        runs.append(1)
        return ke.Lake(tmp_path).events().select("no_such_column").collect()

    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        reread(wrong_column)
    assert runs == [1]


@pytest.mark.parametrize("attempts", [0, -1, 1.5, True])
def test_attempts_are_a_whole_number_one_or_more(attempts: object) -> None:
    with pytest.raises(ValueError, match="attempts must be a whole number"):
        reread(lambda: None, attempts=attempts)  # type: ignore[arg-type]


def _compact_with_late_copy(home: Path) -> None:
    """A real compaction of the lake at ``home`` by another Lake object (another process,
    in effect) that deletes the files there: a late copy of ``a`` makes it rewrite."""
    other = ke.Lake(home)
    other.write_events([ev("a", received=ev("a").received_at + timedelta(hours=1))])
    assert other.compact().files_deleted, "the compaction deleted no file: no race"


class _ListedThenCompacted(ke.Lake):
    """A Lake whose first listing of its partitions is followed by a real compaction,
    before the files listed are read (their footers)."""

    races = 0

    def _partitions(self) -> Iterator[Any]:
        listed = list(super()._partitions())
        if type(self).races < 1:
            type(self).races += 1
            _compact_with_late_copy(self.location)
        yield from listed


@pytest.mark.parametrize("method", ["damaged_files", "stats"])
def test_footers_read_of_files_a_compaction_deleted_are_listed_again(
    tmp_path: Path, method: str
) -> None:
    """A file deleted between its listing and its footer's read is gone, not damaged: it
    was reported as damaged (damaged_files) or failed with FileNotFoundError (stats)."""
    _lake(tmp_path)
    raced = type("Raced", (_ListedThenCompacted,), {"races": 0})
    got = getattr(raced(tmp_path), method)()
    assert raced.races == 1
    if method == "damaged_files":
        assert got == []
    else:
        events = got.filter(pl.col("table") == "events")
        # compacted: one file holding a, b and c (the compaction dropped the late copy)
        assert events.select("files", "rows", "clean").rows() == [(1, 3, True)]


def test_span_planned_again_when_a_compaction_deletes_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lake(tmp_path)
    real, races = lake_module.plan_table, []

    def planned_then_compacted(*args: Any, **kwargs: Any) -> Any:
        plans = real(*args, **kwargs)
        if not races:
            races.append(1)
            _compact_with_late_copy(tmp_path)
        return plans

    monkeypatch.setattr(lake_module, "plan_table", planned_then_compacted)
    assert ke.Lake(tmp_path).span() == (T0, T0)
    assert races == [1]


def test_a_local_lake_read_through_pyarrow_in_duckdb_is_planned_and_run_again(
    tmp_path: Path,
) -> None:
    """Under a ``key=value`` folder DuckDB reads the files as a pyarrow dataset
    (``reader.read_in_place``), and a deleted one fails as an InvalidInputException
    ("reading the Arrow source failed: ... [errno 2]"), not DuckDB's own IOException."""
    home = tmp_path / "team=ops" / "lake"
    _lake(home)
    raced, ran = compacted_meanwhile("sql", {1, 2}, ev("a"))
    lake = raced(home)

    def read() -> list[str]:
        return [k for (k,) in lake.sql("select event_key from events order by 1").fetchall()]

    with pytest.raises(duckdb.InvalidInputException, match=r"Arrow source failed.*\[errno 2\]"):
        read()
    assert reread(read) == ["a", "b", "c"]
    assert len(ran) == 2


def test_a_reread_inside_another_runs_once_so_the_attempts_bound_the_runs_in_all() -> None:
    """``build_report`` rereads around ``span()``, which rereads too: the inner one must not
    multiply the outer one's attempts (3 × 3 runs of a lake raced on every plan)."""
    inner_runs: list[int] = []
    outer_runs: list[int] = []

    def vanishing() -> None:
        inner_runs.append(1)
        raise FileNotFoundError("a planned file was compacted away")

    def outer() -> None:
        outer_runs.append(1)
        reread(vanishing)

    with pytest.raises(FileNotFoundError):
        reread(outer)
    assert len(outer_runs) == len(inner_runs) == READ_ATTEMPTS
    # and on its own, outside any other, the inner one still runs its attempts
    inner_runs.clear()
    with pytest.raises(FileNotFoundError):
        reread(vanishing)
    assert len(inner_runs) == READ_ATTEMPTS


def test_a_reread_inside_another_that_succeeds_returns_its_result() -> None:
    assert reread(lambda: reread(lambda: 7) + 1) == 8


def test_a_reread_inside_another_still_says_a_denied_s3_read_in_one_line() -> None:
    """Nested, the inner reread lets a vanished file through to the outer one, but a failure
    of S3 (denied) is still turned into the lake's one-line StorageError."""
    storage = open_storage("s3://bucket/lake")  # no request made
    denied = OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body.")

    def refused() -> None:
        raise denied

    with pytest.raises(ke.StorageError, match="access denied by S3 to the lake at s3://bucket"):
        reread(lambda: reread(refused, storage=storage))
