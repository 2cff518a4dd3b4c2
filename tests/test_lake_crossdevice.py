"""A lake whose folders sit on several filesystems (``DATA/events`` a symlink to another
disk): a rename cannot cross filesystems (EXDEV), so files bound for another one than
``DATA/_tmp``'s are staged beside their final name, and readers never take such a temp file
for data. The tests that need two filesystems use /dev/shm (a tmpfs) against the test's
folder and are skipped where those are one; ``Storage.stage_beside`` runs the same path on
one filesystem."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_journal import records
from test_lake import T0, ev, parquet_files
from test_lake_compact import on_disk, winners

import kirim_events as ke
from kirim_events import testing
from kirim_events.journal import Journal
from kirim_events.lake import storage as storage_module

MAY_1 = "events/type=message.created/date=2026-05-01"


def temp_name(name: str) -> str:
    """The name a file is staged under beside its target (README: ``.<name>.<random>.tmp``)."""
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


def moved(root: Path, name: str, other_disk: Path) -> Path:
    """``root/name`` made a symlink to a folder of ``other_disk`` (returned)."""
    target = other_disk / name
    target.mkdir(parents=True)
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).symlink_to(target, target_is_directory=True)
    return target


def temps(*folders: Path) -> list[Path]:
    """Every file left in ``_tmp`` or named as a temp file, under these folders."""
    return [
        p
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file() and (p.name.startswith(".") or p.parent.name == "_tmp")
    ]


def test_a_lake_whose_events_folder_is_on_another_disk_is_written_and_compacted(
    tmp_path: Path, other_disk: Path
) -> None:
    """Every write failed with "Invalid cross-device link": files were staged in DATA/_tmp
    and renamed into DATA/events, another filesystem."""
    root = tmp_path / "data"
    root.mkdir()
    far = moved(root, "events", other_disk)
    lake = ke.Lake(root)
    lake.write_events([ev("a"), ev("b", occurred=T0 + timedelta(days=1))])
    lake.write_events([ev("a", payload="later copy", received=T0 + timedelta(hours=1))])
    lake.write_deliveries([{"delivery_id": "d1", "received_at": T0, "outcome": "new"}])
    assert len(parquet_files(far)) == 3  # on the other disk, under their final names
    assert set(winners(lake)) == {"a", "b"}
    report = lake.compact()
    assert report.partitions == 3
    assert winners(ke.Lake(root)) == {
        "a": '{"id": "a", "type": "message.created"}',
        "b": ev("b").payload,
    }
    assert on_disk(root) == ["a", "b"]  # plain DuckDB over the folders
    assert lake.deliveries().collect()["delivery_id"].to_list() == ["d1"]
    assert temps(root, far) == []


def test_the_journal_flushes_into_a_lake_on_another_disk(tmp_path: Path, other_disk: Path) -> None:
    """The collector's case: the events stayed in the journal and nothing was ever written."""
    moved(tmp_path, "events", other_disk)
    recs = records(testing.kirim_event())
    lake = ke.Lake(tmp_path)
    with Journal(tmp_path) as j:
        j.append(recs, [{"delivery_id": "wbd_1", "outcome": None}])
        report = j.flush(lake)
        assert (report.events, report.receipts) == (1, 1)
        assert j.backlog == 0
    assert lake.events().collect()["event_key"].to_list() == [recs[0].event_key]


def test_state_and_tmp_on_other_disks_than_the_data(tmp_path: Path, other_disk: Path) -> None:
    """Markers and manifests (``_state``) on one filesystem, ``_tmp`` on another, the data on
    a third place: each file is staged where its rename can land."""
    root = tmp_path / "data"
    root.mkdir()
    state = moved(root, "_state", other_disk)
    moved(root, "_tmp", other_disk / "scratch")
    lake = ke.Lake(root)
    lake.write_events([ev("a"), ev("a", payload="copy", received=T0 + timedelta(1))])
    assert list((state / "changes").rglob("*.changed"))
    assert lake.compact().partitions == 1
    assert (state / "compaction/events/type=message.created.json").is_file()
    assert not (state / "changes/events/type=message.created/date=2026-05-01").exists()
    assert on_disk(root) == ["a"]
    assert temps(root, other_disk) == []


def test_each_filesystem_written_is_synced_before_and_after_the_renames(
    tmp_path: Path, other_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One syncfs(2) per batch synced only the filesystem of the first folder (the change
    markers' in DATA/_state): the events file's rename on the other disk was not durable
    when write_events returned, and the journal deleted its rows."""
    root = tmp_path / "data"
    root.mkdir()
    moved(root, "events", other_disk)
    calls: list[tuple[str, int]] = []
    real_replace, real_fsync = os.replace, os.fsync
    real_syncfs = storage_module._syncfs

    def replace(src: str, dst: str) -> None:
        calls.append(("rename", os.stat(os.path.dirname(dst)).st_dev))
        real_replace(src, dst)

    def fsync(fd: int) -> None:
        calls.append(("sync", os.fstat(fd).st_dev))
        real_fsync(fd)

    def syncfs(path: str) -> None:
        calls.append(("sync", os.stat(path).st_dev))
        real_syncfs(path)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(storage_module, "_syncfs", syncfs)
    lake = ke.Lake(root)
    lake.write_events([ev("first")])  # the lake's own folders and state are made
    calls.clear()
    lake.write_events([ev("durable")])
    far = other_disk.stat().st_dev
    renames = [i for i, call in enumerate(calls) if call == ("rename", far)]
    assert len(renames) == 1, calls
    assert ("sync", far) in calls[: renames[0]], calls  # the file's bytes
    assert ("sync", far) in calls[renames[0] + 1 :], calls  # its name


def test_files_staged_beside_their_targets_on_one_filesystem(tmp_path: Path) -> None:
    """The path a target on another filesystem takes, run where there is only one."""
    lake = ke.Lake(tmp_path)
    lake.storage.stage_beside = True
    lake.write_events([ev("a"), ev("a", payload="copy", received=T0 + timedelta(1))])
    lake.write_events([ev("b", occurred=T0 + timedelta(days=3))])
    assert set(winners(lake)) == {"a", "b"}
    assert lake.compact().partitions == 2
    assert on_disk(tmp_path) == ["a", "b"]
    assert not (tmp_path / "_tmp").exists()  # nothing was staged there
    assert temps(tmp_path) == []


def test_a_temp_file_left_beside_its_target_is_never_read_and_is_removed_later(
    tmp_path: Path,
) -> None:
    """A write killed before its rename leaves ``.<name>.<random>.tmp`` in the partition (and
    beside its change marker): half a Parquet file, which no reader may take for data."""
    clock = [1_800_000_000.0]
    lake = ke.Lake(tmp_path, now=lambda: clock[0])
    lake.write_events([ev("a")])
    partition = tmp_path / MAY_1
    whole = next(partition.glob("*.parquet")).read_bytes()
    half = partition / temp_name("w-0000000000aa-000001-gone.parquet")
    half.write_bytes(whole[: len(whole) // 2])
    complete = partition / temp_name("w-0000000000bb-000002-gone.parquet")
    complete.write_bytes(whole)  # renamed in, it would have been a second copy of "a"
    marker = tmp_path / "_state/changes" / MAY_1 / temp_name("w-0000000000aa-000001-gone.changed")
    marker.touch()
    for path in (half, complete, marker):
        os.utime(path, (clock[0] - 7200, clock[0] - 7200))
    fresh = partition / temp_name("w-0000000000cc-000003-now.parquet")
    fresh.write_bytes(whole[:10])  # a write going on now
    os.utime(fresh, (clock[0], clock[0]))

    assert list(winners(lake)) == ["a"]
    assert lake.events().collect().height == 1
    assert on_disk(tmp_path) == ["a"]
    assert lake.stats()["files"].sum() == 1
    report = lake.compact()  # the partition's first: its writer file is merged
    assert (report.files_in, report.rows_in) == (1, 1)  # not the temp files
    assert not half.exists()
    assert not complete.exists()
    assert fresh.exists()
    # the marker's temp file names its partition, which holds one too young to remove:
    # kept, so that a later run visits the partition again
    assert marker.exists()
    assert list(winners(lake)) == ["a"]
    clock[0] += 7200  # the write going on was killed too
    lake.compact()
    assert not marker.exists()
    assert not fresh.exists()
    assert list(winners(lake)) == ["a"]


def test_a_flush_on_one_filesystem_costs_no_more_calls_than_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector's flush path, on the usual lake (one filesystem): staging a file stats
    its folder and ``_tmp`` (which ``os.makedirs`` of ``_tmp`` did anyway: a stat, a mkdir
    and a stat), and the syncs before and after the renames find each filesystem from the
    staging. The cross-filesystem staging had added a stat of every temp file's folder and
    of every target folder per batch: 42 stats and 6 mkdirs for 6 files, from 18 and 6."""
    lake = ke.Lake(tmp_path)

    def batch(n: int) -> list[ke.EventRecord]:
        return [
            ev(f"a{n}"),
            ev(f"b{n}", type="contact.updated"),
            ev(f"c{n}", occurred=T0 + timedelta(days=1)),
        ]

    lake.write_events(batch(0))  # the folders are made
    calls: dict[str, int] = {"stat": 0, "mkdir": 0}

    def counting(name: str) -> Callable[..., Any]:
        real = getattr(os, name)

        def counted(*args: object, **kwargs: object) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return counted

    for name in calls:
        monkeypatch.setattr(os, name, counting(name))
    lake.write_events(batch(1))  # three files and their three change markers
    monkeypatch.undo()
    assert calls["stat"] <= 18
    assert calls["mkdir"] == 0
    assert set(winners(lake)) == {"a0", "b0", "c0", "a1", "b1", "c1"}


def test_a_temp_file_too_young_to_remove_keeps_its_partition_visited(tmp_path: Path) -> None:
    """A compaction killed between the renames of its merged files leaves the temp files of
    the others beside their targets (on a lake on several filesystems). The run after it,
    within the hour, spared them (a write may still be going on) and consumed the markers
    of their partitions: no later run visited those partitions again, and the temp files
    (merged files, up to the target size each) stayed for good."""
    clock = [1_800_000_000.0]
    lake = ke.Lake(tmp_path, now=lambda: clock[0])
    lake.storage.stage_beside = True
    lake.write_events([ev("a"), ev("a", payload="copy", received=T0 + timedelta(1))])
    partition = tmp_path / MAY_1
    left = partition / temp_name("c-00000001-01a23d89fbb6-5811f707cb9f-0.parquet")
    left.write_bytes(next(partition.glob("*.parquet")).read_bytes())
    os.utime(left, (clock[0] - 60, clock[0] - 60))  # the killed run's, a minute ago
    assert lake.compact().partitions == 1
    assert left.exists()  # it may be a write going on
    assert list((tmp_path / "_state/changes").rglob("*.changed"))  # the partition is revisited
    clock[0] += 2 * 3600
    lake.compact()
    assert not left.exists()
    assert not list((tmp_path / "_state/changes").rglob("*.changed"))
    assert on_disk(tmp_path) == ["a"]
    assert temps(tmp_path) == []


def test_a_write_killed_before_its_first_rename_has_its_temp_files_removed(
    tmp_path: Path,
) -> None:
    """A flush killed after staging its files and before renaming any leaves the temp files
    of its change markers (in ``_state/changes``) and of its data files (beside their
    targets): no marker names that partition, so no run but a full one visited it, and the
    data files' temp files stayed for good. The markers' temp files name the partition."""
    clock = [1_800_000_000.0]
    lake = ke.Lake(tmp_path, now=lambda: clock[0])
    lake.storage.stage_beside = True
    lake.write_events([ev("a")])
    lake.compact()  # the partition is clean: no marker names it
    partition = tmp_path / MAY_1
    name = "w-0000000000aa-000001-gone"
    data = partition / temp_name(f"{name}.parquet")
    data.write_bytes(next(partition.glob("*.parquet")).read_bytes())
    marker = tmp_path / "_state/changes" / MAY_1 / temp_name(f"{name}.changed")
    marker.parent.mkdir(parents=True)
    marker.touch()
    os.utime(marker, (clock[0] - 60, clock[0] - 60))  # staged first
    os.utime(data, (clock[0] - 59, clock[0] - 59))
    clock[0] += 3600 - 59.5  # the marker's is an hour old, the data file's not quite
    lake.compact()
    assert data.exists()
    assert marker.exists()  # kept, so that the partition is visited again
    clock[0] += 3600
    lake.compact()
    assert temps(tmp_path) == []
    assert on_disk(tmp_path) == ["a"]


def test_a_file_staged_beside_a_folder_a_compaction_removes_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer staging beside its target makes the partition folder, then creates its temp
    file there: a compaction that empties and removes that folder in between made the
    write fail (ENOENT), as the rename did before it was retried (``Storage._move_in``)."""
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a", received=T0 + timedelta(hours=1), payload="late")])
    lake.write_events([ev("a", occurred=T0 + timedelta(days=1), received=T0, payload="early")])
    folder = tmp_path / MAY_1  # the compaction empties it
    writer = ke.Lake(tmp_path, writer_id="other")
    writer.storage.stage_beside = True
    real_open = os.open
    removed = []

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if not removed and os.path.basename(path).startswith(".w-"):
            removed.append(True)  # first, between the writer's mkdir and its temp file
            lake.compact()
            removed[0] = not folder.exists()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    writer.write_events([ev("b", payload="b")])
    monkeypatch.undo()
    assert removed == [True]  # the compaction did remove the folder under the writer
    assert winners(lake) == {"a": "early", "b": "b"}
    lake.compact()
    assert on_disk(tmp_path) == ["a", "b"]
    assert temps(tmp_path) == []
