"""The lake's writer: what an empty write leaves, naive times, and the order in which a
write's files appear (cases found by mutation testing)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from test_lake import ev

import kirim_events as ke
from kirim_events.errors import LakeError
from kirim_events.schema import events_table


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_an_empty_write_creates_nothing(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    before = _files(tmp_path)
    assert lake.write_events([]) == 0
    assert lake.write_deliveries([]) == 0
    assert _files(tmp_path) == before


def test_times_without_a_zone_are_refused_not_taken_as_utc(tmp_path: Path) -> None:
    table = events_table([ev("a")])
    at = table.schema.get_field_index("occurred_at")
    naive = table.set_column(at, "occurred_at", table.column(at).cast(pa.timestamp("us")))
    with pytest.raises(LakeError, match="'occurred_at' must be timezone-aware"):
        ke.Lake(tmp_path).write_events(naive)
    assert not list(tmp_path.rglob("*.parquet"))


def test_each_change_marker_is_in_place_before_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compaction visits only partitions with markers: a file renamed into place before its
    # marker, and a crash between the two, would never be compacted
    placed: list[str] = []
    real = os.replace

    def replace(src: str, dst: str) -> None:
        placed.append(os.path.basename(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    ke.Lake(tmp_path).write_events([ev("a"), ev("b", type="message.status")])
    data = [n for n in placed if n.endswith(".parquet")]
    assert len(data) == 2
    for name in data:
        marker = name.removesuffix(".parquet") + ".changed"
        assert placed.index(marker) < placed.index(name)
