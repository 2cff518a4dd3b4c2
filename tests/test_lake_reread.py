"""``reader.reread``: a read planned again when a compaction deleted the files it planned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pytest
from racing import compacted_meanwhile
from test_lake import ev

import kirim_events as ke
from kirim_events.lake.reader import READ_ATTEMPTS, reread


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
