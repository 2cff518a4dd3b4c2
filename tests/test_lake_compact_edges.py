"""Compaction's file sizing (a case found by mutation testing)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_lake import T0, ev, parquet_files

import kirim_events as ke


def test_merged_files_are_about_the_target_size(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events(
        [ev(f"e{i:04d}", occurred=T0 + timedelta(seconds=i), payload="x" * 200) for i in range(800)]
    )
    (written,) = parquet_files(tmp_path)
    report = lake.compact(full=True, target_file_bytes=written.stat().st_size // 4)
    assert report.files_out == 4  # 200 rows each, not 2 files of 400
    assert lake.events().collect().height == 800


def test_compacting_a_folder_never_written_creates_nothing(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert lake.compact().partitions == 0
    assert sorted(p for p in tmp_path.rglob("*")) == before
