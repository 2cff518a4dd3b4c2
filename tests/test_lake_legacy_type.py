"""Lakes written before 01d6abb: Kirim's ``message.status_updated`` in a
``type=message.status_updated`` folder, read and compacted as ``message.status``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from test_lake import T0, ev, parquet_files
from test_lake_compact import crashed_at_every_step, finished_by_a_normal_run, on_disk, winners

import kirim_events as ke

LEGACY = "type=message.status_updated"


def old_lake(root: Path, *, compacted: bool = False) -> dict[str, str]:
    """A lake as kirim-events wrote it before 01d6abb, then written to by today's: returns the
    winners (event_key -> payload) a careful reader expects, all of type message.status.
    ``compacted``: the legacy folder holds only compacted files, none written since."""
    lake = ke.Lake(root, writer_id="old")
    status = "message.status"
    lake.write_events(
        [ev("s1", type=status, payload="s1-old"), ev("s2", type=status, payload="s2")]
    )
    lake.compact()  # compacted there too: a manifest and c- files for the legacy folder
    lake.write_events([ev("s3", type=status, payload="s3-old", occurred=T0 + timedelta(days=1))])
    if compacted:
        lake.compact()
    # what the older parser did with a Kirim-native message.status_updated: the folder,
    # its compaction manifest and the change marker of the file written since, by hand
    for where in ("events", "_state/changes/events"):
        (root / where / "type=message.status").rename(root / where / LEGACY)
    manifests = root / "_state/compaction/events"
    (manifests / "type=message.status.json").rename(manifests / f"{LEGACY}.json")
    assert any(f.name.startswith("c-") for f in parquet_files(root / "events" / LEGACY))
    # today's code stores the same events under message.status: a later copy of s1 (a
    # Kirim retry), an earlier-received copy of s3 a day apart (no time of its own), s4 new
    lake.write_events(
        [
            ev("s1", type="message.status", payload="s1-new", received=T0 + timedelta(hours=5)),
            ev("s3", type="message.status", payload="s3-new", received=T0 - timedelta(hours=1)),
            ev("s4", type="message.status", payload="s4"),
            ev("m1", type="message.received", payload="m1"),
        ]
    )
    return {"s1": "s1-old", "s2": "s2", "s3": "s3-new", "s4": "s4", "m1": "m1"}


def types_on_disk(root: Path) -> list[tuple[str, str]]:
    """(type, event_key) of every row, read by plain DuckDB over the Hive folders."""
    glob = f"{root}/events/**/*.parquet"
    sql = f"select type, event_key from read_parquet('{glob}', hive_partitioning=true)"
    return sorted(duckdb.sql(sql).fetchall())


def by_type(lake: ke.Lake) -> list[tuple[str, str]]:
    """(event_key, type) of every event our reader returns."""
    return sorted(lake.events().select("event_key", "type").collect().rows())


def expected_types(expected: dict[str, str]) -> list[tuple[str, str]]:
    return sorted((k, "message.received" if k == "m1" else "message.status") for k in expected)


@pytest.mark.parametrize("compacted", [False, True])
def test_readers_read_a_legacy_folder_as_message_status_once(
    tmp_path: Path, compacted: bool
) -> None:
    expected = old_lake(tmp_path, compacted=compacted)
    lake = ke.Lake(tmp_path)
    statuses = {k: v for k, v in expected.items() if k.startswith("s")}
    for name in ("message.status", "message.status_updated", ["message.status"]):
        frame = lake.events(type=name).select("event_key", "type", "payload").collect()
        assert sorted(frame.rows()) == sorted(
            (k, "message.status", v) for k, v in statuses.items()
        ), name
    assert winners(lake) == expected  # every type: no key twice, the first received copy
    assert by_type(lake) == expected_types(expected)
    assert lake.sql("select distinct type from events order by 1").fetchall() == [
        ("message.received",),
        ("message.status",),
    ]
    assert lake.sql("select count(*) from events where type = 'message.status'").fetchall() == [
        (4,)
    ]


def test_compaction_moves_a_legacy_folder_into_message_status(tmp_path: Path) -> None:
    expected = old_lake(tmp_path)
    lake = ke.Lake(tmp_path)
    lake.compact()
    assert not (tmp_path / "events" / LEGACY).exists()
    assert not (tmp_path / f"_state/compaction/events/{LEGACY}.json").exists()
    assert not (tmp_path / "_state/changes/events" / LEGACY).exists()
    assert winners(lake) == expected
    # plain DuckDB over the folders: one row per event, under today's name
    assert types_on_disk(tmp_path) == sorted(
        ("message.received" if k == "m1" else "message.status", k) for k in expected
    )
    assert lake.stats()["clean"].all()
    assert lake.compact().partitions == 0


def test_a_crash_at_every_step_of_the_move_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    template = tmp_path / "template"
    expected = old_lake(template)
    steps = []
    for step, root, lake in crashed_at_every_step(template, tmp_path):
        steps.append(step)
        assert winners(lake) == expected, f"after a crash at {step}"
        assert by_type(lake) == expected_types(expected), step
        assert len(lake.events(type="message.status").collect()) == 4, step
        finished_by_a_normal_run(lake, root, expected, step)
        assert not (root / "events" / LEGACY).exists(), step
        assert not (root / f"_state/compaction/events/{LEGACY}.json").exists(), step
        assert {t for t, _k in types_on_disk(root)} == {"message.status", "message.received"}
    # the move's own steps were crashed at: its copies, then its deletes, before compaction
    assert steps[:2] == ["file_written", "file_written"]
    assert steps.index("markers_cleared") < steps.index("file_deleted") < steps.index("planned")


def test_a_legacy_file_written_after_the_move_is_moved_by_the_next_run(tmp_path: Path) -> None:
    # an older collector still running writes there again: nothing of it is lost
    expected = old_lake(tmp_path)
    lake = ke.Lake(tmp_path)
    lake.compact()
    lake.write_events([ev("s5", type="message.status_updated", payload="s5")])
    expected["s5"] = "s5"
    assert winners(lake) == expected
    lake.compact()
    assert winners(lake) == expected
    assert on_disk(tmp_path) == sorted(expected)
    assert not parquet_files(tmp_path / "events" / LEGACY)
