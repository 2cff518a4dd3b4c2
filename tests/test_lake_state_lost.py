"""A lake whose compaction manifests were lost, or restored from an older copy than its data:
the ``c-`` files no manifest vouches for are read and merged, never ignored or deleted."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from test_lake import T0, ev, parquet_files
from test_lake_compact import (
    _template,
    crashed_at_every_step,
    finished_by_a_normal_run,
    on_disk,
    winners,
)

import kirim_events as ke
from kirim_events.lake.storage import Storage


def lost_manifests(root: Path) -> dict[str, str]:
    """A compacted lake, written to since, whose ``_state/compaction`` is gone (lake.json and
    the change markers kept); returns the winners it holds."""
    expected = _template(root)
    ke.Lake(root).compact()  # every partition compacted: most events are in c- files only
    assert all(f.name.startswith("c-") for f in parquet_files(root / "events"))
    shutil.rmtree(root / "_state/compaction")
    assert (root / "_state/lake.json").exists()
    return expected


def test_readers_count_the_compacted_files_of_a_lake_that_lost_its_manifests(
    tmp_path: Path,
) -> None:
    expected = lost_manifests(tmp_path)
    lake = ke.Lake(tmp_path)
    assert winners(lake) == expected  # read as empty before: every c- file ignored
    assert lake.deliveries().collect().height == 1
    stats = lake.stats()
    assert not stats["clean"].any()  # nothing vouches that each event is there once
    assert stats["leftover_files"].sum() == 0


@pytest.mark.parametrize("full", [False, True])
def test_compaction_of_a_lake_that_lost_its_manifests_keeps_every_event(
    tmp_path: Path, full: bool
) -> None:
    expected = lost_manifests(tmp_path)
    before = parquet_files(tmp_path)
    lake = ke.Lake(tmp_path)
    report = lake.compact(full=full)  # --full deleted every c- file as a leftover
    assert any("_state/compaction" in said for said in report.warnings)
    assert report.partitions == len({f.parent for f in before})  # every one rewritten
    assert winners(lake) == expected
    assert on_disk(tmp_path) == sorted(expected)
    assert lake.deliveries().collect().height == 1
    stats = lake.stats()
    assert stats["clean"].all()
    assert stats["leftover_files"].sum() == 0
    assert (tmp_path / "_state/compaction/deliveries.json").exists()
    again = lake.compact()
    assert (again.partitions, again.warnings) == (0, [])


def test_a_crash_at_every_step_of_the_rebuilding_compaction_loses_nothing(
    tmp_path: Path,
) -> None:
    template = tmp_path / "template"
    expected = lost_manifests(template)
    for step, root, lake in crashed_at_every_step(template, tmp_path):
        assert winners(lake) == expected, f"after a crash at {step}"
        assert lake.deliveries().collect().height == 1, step
        finished_by_a_normal_run(lake, root, expected, step)


def test_manifests_restored_from_an_older_copy_than_the_data_lose_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lake"  # the older copy beside it, not beside every test's folder
    lake = ke.Lake(root)
    expected = _template(root)
    lake.compact()
    old = tmp_path / "old-state"
    shutil.copytree(root / "_state/compaction", old)
    lake.write_events([ev("late", payload="late", occurred=T0 + timedelta(hours=1))])
    expected["late"] = "late"
    lake.compact()  # May 1's c- files replaced by newer ones, which the old manifest lacks
    shutil.rmtree(root / "_state/compaction")
    shutil.copytree(old, root / "_state/compaction")
    reopened = ke.Lake(root)
    assert winners(reopened) == expected  # May 1 read as empty before
    reopened.compact(full=True)  # which deleted May 1's c- files before
    assert winners(reopened) == expected
    assert on_disk(root) == sorted(expected)
    assert reopened.stats()["clean"].all()


def test_manifests_restored_from_before_a_partition_was_first_compacted_lose_nothing(
    tmp_path: Path,
) -> None:
    """The older manifest has no entry at all for a partition compacted since (far from the
    others, so that run rewrote nothing else): its c- files are the only copy of its events."""
    root = tmp_path / "lake"
    lake = ke.Lake(root)
    expected = _template(root)
    lake.compact()
    old = tmp_path / "old-state"
    shutil.copytree(root / "_state/compaction", old)
    lake.write_events([ev("june", payload="june", occurred=T0 + timedelta(days=40))])
    expected["june"] = "june"
    lake.compact()  # June's only file is a c- file now, which the old manifest does not know
    june = root / "events/type=message.created/date=2026-06-10"
    assert [f.name[:2] for f in june.iterdir()] == ["c-"]
    shutil.rmtree(root / "_state/compaction")
    shutil.copytree(old, root / "_state/compaction")
    reopened = ke.Lake(root)
    assert winners(reopened) == expected  # June read as empty
    reopened.compact(full=True)  # which deleted June's c- file as a leftover
    assert winners(reopened) == expected
    assert on_disk(root) == sorted(expected)
    assert reopened.stats()["clean"].all()


def test_a_healthy_lake_s_compaction_reads_no_manifest_of_a_type_it_does_not_compact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking for types that lost their manifest must not cost every run a read of every
    type's manifest (on S3 a HEAD and a GET each), however few partitions it compacts."""
    lake = ke.Lake(tmp_path)
    types = ["message.created", "message.status", "conversation.closed", "contact.updated"]
    lake.write_events(
        [ev(f"{t}-{d}", type=t, occurred=T0 + timedelta(days=d)) for t in types for d in range(3)]
    )
    lake.compact()
    read: list[str] = []
    real = Storage.read_bytes

    def spy(self: Storage, rel: str) -> bytes | None:
        read.append(rel)
        return real(self, rel)

    monkeypatch.setattr(Storage, "read_bytes", spy)
    assert lake.compact().partitions == 0
    assert [r for r in read if r.startswith("_state/compaction/")] == []
    lake.write_events([ev("new", type="message.status", occurred=T0)])
    read.clear()
    assert lake.compact().partitions == 1
    assert {r for r in read if r.startswith("_state/compaction/")} == {
        "_state/compaction/events/type=message.status.json"
    }


def test_a_first_compaction_stopped_before_its_manifest_is_not_called_lost_state(
    tmp_path: Path,
) -> None:
    """The commonest way to a type with c- files and no manifest is a first compaction
    stopped (a cron timeout) after writing and before publishing: the warning said only
    "was _state/compaction lost?", sending the user to look for a lost folder."""
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("a", payload="copy", received=T0 + timedelta(1))])

    def stop(step: str) -> None:
        if step == "file_written":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lake.compact(hook=stop)
    assert not (tmp_path / "_state/compaction").exists()
    report = lake.compact()
    assert len(report.warnings) == 1
    assert "first compaction of this type stopped before it published" in report.warnings[0]
    assert set(winners(lake)) == {"a"}
    assert on_disk(tmp_path) == ["a"]
