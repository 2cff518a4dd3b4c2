"""The lake's writer: what an empty write leaves, naive times, and the order in which a
write's files appear (cases found by mutation testing)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from test_lake import T0, ev

import kirim_events as ke
from kirim_events.errors import LakeError
from kirim_events.schema import deliveries_table, events_table


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


def _at_micros(table: pa.Table, column: str, micros: list[int]) -> pa.Table:
    """``table`` with ``column`` set to these instants (microseconds since 1970, UTC)."""
    at = table.schema.get_field_index(column)
    values = pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return table.set_column(at, column, values)


YEAR_10000 = 253_402_300_800 * 10**6  # 10000-01-01T00:00:00Z, as Arrow (not Python) holds it
BEFORE_YEAR_1 = -62_135_596_800 * 10**6 - 1  # 0000-12-31T23:59:59.999999Z


@pytest.mark.parametrize("micros", [YEAR_10000, BEFORE_YEAR_1])
def test_an_event_time_no_partition_date_can_name_is_refused(tmp_path: Path, micros: int) -> None:
    # written under date=+10000-01-01 (or date=-0001-...), a folder no reader and no
    # compaction lists: write_events said 2 rows were written and lake.events() had none;
    # plain DuckDB typed every partition's date as text because of that one folder
    lake = ke.Lake(tmp_path)
    table = _at_micros(events_table([ev("a"), ev("b")]), "occurred_at", [0, micros])
    with pytest.raises(LakeError, match="occurred_at"):
        lake.write_events(table)
    assert not list(tmp_path.rglob("*.parquet"))
    assert lake.events().collect().height == 0


@pytest.mark.parametrize("column", ["created_at", "received_at"])
def test_a_delivery_time_no_partition_date_can_name_is_refused(tmp_path: Path, column: str) -> None:
    lake = ke.Lake(tmp_path)
    # created_at names the partition; without it, received_at does
    row = {
        "delivery_id": "d1",
        "received_at": T0,
        **({"created_at": T0} if column == "created_at" else {}),
    }
    rows = deliveries_table([row, row])
    rows = _at_micros(rows, column, [0, YEAR_10000])
    with pytest.raises(LakeError, match=column):
        lake.write_deliveries(rows)
    assert not list(tmp_path.rglob("*.parquet"))
