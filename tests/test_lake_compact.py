"""Compaction: dedup on disk, interleaving with writes, crash injection at every step."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_lake import T0, ev, parquet_files

import kirim_events as ke
from kirim_events.errors import LakeError
from kirim_events.lake import STEPS
from kirim_events.lake.writer import change_marker, row_groups


class Crash(Exception):
    """Raised from a compaction hook to stop it like a power cut would."""


def winners(lake: ke.Lake) -> dict[str, str]:
    """event_key -> payload as our reader returns it (asserting no duplicate keys)."""
    frame = lake.events().select("event_key", "payload").collect()
    assert frame["event_key"].n_unique() == frame.height
    via_sql = lake.sql("select event_key, payload from events").fetchall()
    assert sorted(via_sql) == sorted(frame.iter_rows())
    return dict(frame.iter_rows())


def on_disk(root: Path) -> list[str]:
    """Event keys in all Parquet files, read by plain DuckDB with no help from us."""
    if not parquet_files(root / "events"):
        return []
    glob = str(root / "events/**/*.parquet")
    rows = duckdb.sql(f"select event_key from read_parquet('{glob}', hive_partitioning=true)")
    return sorted(r[0] for r in rows.fetchall())


def fill(lake: ke.Lake) -> dict[str, str]:
    """Several writes with duplicates in one partition, across files and across midnight."""
    midnight = datetime(2026, 5, 2, tzinfo=UTC)
    lake.write_events([ev(f"k{i}", payload=f"a{i}", received=T0 + timedelta(i)) for i in range(6)])
    lake.write_events([ev(f"k{i}", payload=f"b{i}", received=T0) for i in range(3, 9)])
    lake.write_events(
        [
            ev("x", occurred=midnight - timedelta(minutes=1), received=T0, payload="x-first"),
            ev("s", type="message.status", payload="s1"),
        ]
    )
    lake.write_events(
        [
            ev(
                "x",
                occurred=midnight + timedelta(minutes=5),
                received=T0 + timedelta(1),
                payload="x2",
            )
        ]
    )
    lake.write_deliveries([{"delivery_id": "d1", "attempt": 1, "received_at": T0}] * 2)
    return {
        **{f"k{i}": f"a{i}" for i in range(3)},
        **{f"k{i}": f"b{i}" for i in range(3, 9)},
        "x": "x-first",
        "s": "s1",
    }


def test_compaction_leaves_each_event_key_on_disk_once(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    expected = fill(lake)
    before = len(on_disk(tmp_path))
    assert before > len(expected)  # copies before compaction
    report = lake.compact()
    # rows read: every event row on disk and both delivery rows; written: one of each
    assert (report.rows_in, report.rows_out) == (before + 2, len(expected) + 1)
    assert report.duplicates_removed == before + 2 - len(expected) - 1
    assert winners(lake) == expected
    assert on_disk(tmp_path) == sorted(expected)
    assert all(p.name.startswith("c-") for p in parquet_files(tmp_path))
    assert list((tmp_path / "_state/changes").rglob("*.changed")) == []
    assert lake.deliveries().collect().height == 1
    assert pl.scan_parquet(tmp_path / "deliveries", hive_partitioning=True).collect().height == 1
    assert lake.stats()["clean"].all()
    assert lake.compact().partitions == 0  # nothing changed since


def test_cost_follows_changed_partitions(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev(f"k{d}", occurred=T0 + timedelta(days=10 * d)) for d in range(8)])
    assert lake.compact().partitions == 8
    lake.write_events([ev("new", occurred=T0 + timedelta(days=30))])
    report = lake.compact()
    assert report.partitions == 1
    assert report.touched == [("events", "message.created", "2026-05-31")]
    assert report.files_in == 2
    assert sorted(winners(lake)) == sorted([f"k{d}" for d in range(8)] + ["new"])


def test_a_late_earlier_copy_beats_a_compacted_one(tmp_path: Path) -> None:
    # Another collector flushes late a copy it received earlier, on the next day's partition.
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("k", received=T0 + timedelta(hours=5), payload="late")])
    lake.compact()
    lake.write_events(
        [
            ev(
                "k",
                occurred=T0 + timedelta(days=1),
                received=T0 + timedelta(hours=1),
                payload="early",
            )
        ]
    )
    assert winners(lake) == {"k": "early"}
    report = lake.compact()
    assert report.partitions == 2  # the clean neighbour lost its copy, so it is rewritten
    assert winners(lake) == {"k": "early"}
    assert on_disk(tmp_path) == ["k"]


@pytest.mark.parametrize("seed", range(6))
def test_dedup_holds_under_interleaved_writes_and_compactions(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    writers = [ke.Lake(tmp_path, writer_id=f"w{i}") for i in range(3)]
    best: dict[str, tuple[datetime, str]] = {}
    for step in range(25):
        if rng.random() < 0.25:
            rng.choice(writers).compact()
        else:
            batch = []
            for _ in range(rng.randint(1, 12)):
                key = f"k{rng.randint(0, 30)}"
                day = int(key[1:]) % 5
                occurred = T0 + timedelta(days=day, minutes=rng.choice([0, 0, 0, 700, -700]))
                received = T0 + timedelta(seconds=rng.randint(0, 10**6))
                payload = f"{key}@{step}.{len(batch)}"
                batch.append(ev(key, occurred=occurred, received=received, payload=payload))
                if key not in best or received < best[key][0]:
                    best[key] = (received, payload)
            rng.choice(writers).write_events(batch)
        assert winners(writers[0]) == {k: p for k, (_, p) in best.items()}
    writers[1].compact()
    assert on_disk(tmp_path) == sorted(best)
    assert winners(writers[2]) == {k: p for k, (_, p) in best.items()}


def _template(root: Path) -> dict[str, str]:
    lake = ke.Lake(root, writer_id="tpl")
    expected = fill(lake)
    lake.compact()
    # Second round: new copies in compacted partitions and a neighbour that loses a row.
    lake.write_events([ev("k1", payload="late-copy", received=T0 + timedelta(days=30))])
    lake.write_events(
        [
            ev(
                "s",
                type="message.status",
                occurred=T0 + timedelta(days=1),
                received=T0 - timedelta(1),
                payload="s0",
            )
        ]
    )
    lake.write_events(
        [ev("n1", payload="n1"), ev("n1", payload="n1-dup", received=T0 + timedelta(9))]
    )
    expected.update({"s": "s0", "n1": "n1"})
    return expected


def crashed_at_every_step(
    template: Path, work: Path, *, full: bool = False
) -> Iterator[tuple[str, Path, ke.Lake]]:
    """For each step a compaction of a copy of the lake at ``template`` goes through, in
    order: (the step, the copy's root, its Lake) after a compaction of that copy crashed
    right after that step (the copies are made under ``work``)."""
    calls: list[str] = []
    probe = work / "probe"
    shutil.copytree(template, probe)
    ke.Lake(probe).compact(full=full, hook=calls.append)
    assert set(calls) == set(STEPS)
    for crash_at, step in enumerate(calls):
        root = work / f"crash{crash_at}"
        shutil.copytree(template, root)
        lake = ke.Lake(root)
        seen = 0

        def hook(name: str, crash_at: int = crash_at) -> None:
            nonlocal seen
            if seen == crash_at:
                raise Crash(name)
            seen += 1

        with pytest.raises(Crash, match=rf"^{step}$"):
            lake.compact(full=full, hook=hook)
        yield step, root, lake


def finished_by_a_normal_run(
    lake: ke.Lake, root: Path, expected: dict[str, str], step: str
) -> None:
    """A normal compaction of ``lake`` (at ``root``), crashed after ``step``, finishes the job: the
    ``expected`` winners, each event once on disk, every partition clean, nothing left."""
    lake.compact()
    assert winners(lake) == expected
    assert on_disk(root) == sorted(expected), f"leftovers after a crash at {step}"
    stats = lake.stats()
    assert stats["clean"].all()
    assert stats["leftover_files"].sum() == 0
    assert not list((root / "_state/changes").rglob("*.changed"))


def test_crash_at_every_step_of_compaction_loses_nothing_and_shows_no_copy(tmp_path: Path) -> None:
    template = tmp_path / "template"
    expected = _template(template)
    copies_left: list[str] = []  # the steps after which a plain reader sees copies
    steps: list[str] = []
    for step, root, lake in crashed_at_every_step(template, tmp_path):
        steps.append(step)
        assert winners(lake) == expected, f"after a crash at {step}"
        assert lake.deliveries().collect().height == 1
        keys = on_disk(root)
        if len(keys) != len(set(keys)):  # a plain reader would count some event twice...
            copies_left.append(step)
            assert not lake.stats()["clean"].all(), f"stats call it clean after {step}"
        finished_by_a_normal_run(lake, root, expected, step)
    # the stats check above did run: a crash before anything is rewritten leaves the
    # template's own copies, and one between publishing new files and deleting the files
    # they replace leaves both
    assert copies_left[0] == steps[0] == "planned"
    assert "manifest_published" in copies_left


def test_a_write_during_compaction_is_kept(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("a", payload="dup", received=T0 + timedelta(1))])
    other = ke.Lake(tmp_path, writer_id="other")

    def hook(step: str) -> None:
        if step == "planned":
            other.write_events([ev("b"), ev("a", payload="latest", received=T0 + timedelta(2))])

    lake.compact(hook=hook)
    assert set(winners(lake)) == {"a", "b"}
    assert winners(lake)["a"] != "dup"
    lake.compact()
    assert on_disk(tmp_path) == ["a", "b"]


def test_only_one_compaction_at_a_time(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a")])
    errors: list[Exception] = []

    def hook(step: str) -> None:
        if step == "planned":
            try:
                ke.Lake(tmp_path).compact()
            except LakeError as exc:
                errors.append(exc)

    lake.compact(hook=hook)
    assert len(errors) == 1
    assert "another compaction" in str(errors[0])


def test_large_partitions_split_into_files_of_the_target_size(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    for part in range(4):
        lake.write_events([ev(f"k{part}-{i}", payload="x" * 200 + str(i)) for i in range(500)])
    report = lake.compact(target_file_bytes=8_000)
    assert report.files_out > 1
    assert report.rows_out == 2000
    assert len(winners(lake)) == 2000
    assert len(on_disk(tmp_path)) == 2000


def test_row_groups_are_bounded_in_bytes_as_well_as_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large payloads compress well: 3,000 of a megabyte each had made one 3 GB row group in
    # a 0.3 MB file, which every reader holds whole. Here the bound is 1 MiB, not 128 MiB.
    monkeypatch.setattr("kirim_events.lake.writer.ROW_GROUP_BYTES", 1 << 20)
    lake = ke.Lake(tmp_path)
    events = [ev(f"big{i}", payload=json.dumps({"blob": "x" * 100_000, "i": i})) for i in range(60)]
    # skewed sizes: a few 400 kB payloads together among thousands of small ones, which a
    # cut by the average row size put in one 4 MB group
    events += [ev(f"s{i:05}") for i in range(3000)]
    events += [ev(f"s{i:05}h", payload=json.dumps({"h": "y" * 400_000})) for i in range(10)]
    lake.write_events(events)
    lake.write_events([ev("small")])
    written = {p: pq.read_metadata(p) for p in parquet_files(tmp_path / "events")}
    lake.compact()
    compacted = {p: pq.read_metadata(p) for p in parquet_files(tmp_path / "events")}
    for metas in (written, compacted):
        groups = [m.row_group(i) for m in metas.values() for i in range(m.num_row_groups)]
        assert len(groups) > 5
        assert max(g.total_byte_size for g in groups) < 2 << 20
        assert sum(g.num_rows for g in groups) == 3071
    assert sorted(lake.events().collect()["payload"].to_list()) == sorted(
        [e.payload for e in events] + [ev("small").payload]
    )


def test_row_groups_of_ordinary_rows_are_full_not_a_full_one_and_a_scrap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cutting by bytes first and then by rows made [1000, 40, 1000, 40, ...] when the byte
    # bound held a few more rows than the row bound.
    monkeypatch.setattr("kirim_events.lake.writer.ROW_GROUP_BYTES", 1 << 20)
    table = pa.table({"payload": ["x" * 1000] * 5500})
    assert row_groups(table, 1000) == [(i, 1000) for i in range(0, 5000, 1000)] + [(5000, 500)]
    skewed = pa.table({"payload": ["x" * 10] * 100 + ["y" * (3 << 20)] + ["z" * 10] * 100})
    sizes = [n for _, n in row_groups(skewed, 1000)]
    assert sum(sizes) == 201
    assert len(sizes) == 2  # the huge row ends the first group


def test_full_compaction_without_markers(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("a", payload="dup", received=T0 + timedelta(1))])
    lake.write_events([ev("a", payload="dup2", received=T0 + timedelta(2))])
    shutil.rmtree(tmp_path / "_state/changes")
    assert lake.compact().partitions == 0
    assert lake.compact(full=True).partitions == 1
    assert on_disk(tmp_path) == ["a"]


def test_orphan_markers_and_temp_files_are_cleaned_up_later(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    lake = ke.Lake(tmp_path, now=lambda: clock[0])
    lake.write_events([ev("a")])
    changes = tmp_path / "_state/changes/events/type=message.created/date=2026-05-01"
    # A write that crashed after its marker, before its file: the marker names a file that
    # never arrives. It is kept (the file may still be coming) until it is an hour old.
    orphan = changes / f"w-{int(clock[0] * 1000):012x}-000009-gone.changed"
    orphan.touch()
    stale_tmp = tmp_path / "_tmp" / "deadbeef"
    stale_tmp.write_bytes(b"half a file")
    os.utime(stale_tmp, (clock[0] - 7200, clock[0] - 7200))
    fresh_tmp = tmp_path / "_tmp" / "inflight"
    fresh_tmp.write_bytes(b"being written")
    os.utime(fresh_tmp, (clock[0], clock[0]))

    lake.compact()
    assert [p.name for p in changes.iterdir()] == [orphan.name]
    assert not stale_tmp.exists()
    assert fresh_tmp.exists()
    clock[0] += 2 * 3600
    lake.compact()
    assert not changes.exists()  # emptied of its last marker, the folder is removed too
    assert on_disk(tmp_path) == ["a"]


def test_two_crashed_compactions_in_a_row_strand_no_marker_past_an_hour(tmp_path: Path) -> None:
    # The first run merged and deleted a's file, then died before clearing its marker; the
    # second published a manifest that no longer named that file, then died: the marker
    # named a file no run would see again, and every compaction revisited its partition.
    clock = [1_800_000_000.0]
    lake = ke.Lake(tmp_path, now=lambda: clock[0])
    changes = tmp_path / "_state/changes"

    def crash_at(step: str) -> Callable[[str], None]:
        def hook(name: str) -> None:
            if name == step:
                raise Crash(name)

        return hook

    lake.write_events([ev("a")])
    with pytest.raises(Crash, match=r"^file_deleted$"):
        lake.compact(hook=crash_at("file_deleted"))
    lake.write_events([ev("b")])
    with pytest.raises(Crash, match=r"^manifest_published$"):
        lake.compact(hook=crash_at("manifest_published"))
    lake.compact()
    assert sorted(winners(lake)) == ["a", "b"]
    assert len(list(changes.rglob("*.changed"))) == 1  # within the hour, kept
    clock[0] += 2 * 3600
    lake.compact()
    assert list(changes.rglob("*.changed")) == []
    assert lake.compact().partitions == 0
    assert lake.stats()["clean"].all()


def test_compacted_files_are_clustered_by_the_id_analytics_groups_on(tmp_path: Path) -> None:
    rng = random.Random(3)
    minute = timedelta(minutes=1)
    statuses = [
        dataclasses.replace(
            ev(f"s{m}:{i}", type="message.status", occurred=T0 + rng.randrange(600) * minute),
            message_id=f"wamid.{m:02d}",
            conversation_id=f"cnv_{m % 7:02d}" if m % 4 else None,  # some without one
        )
        for m in range(40)
        for i in range(3)
    ]
    assigned = [
        dataclasses.replace(
            ev(
                f"a{c}:{i}", type="conversation.assigned", occurred=T0 + rng.randrange(600) * minute
            ),
            message_id=None,
            conversation_id=f"cnv_{c:02d}",
        )
        for c in range(15)
        for i in range(3)
    ]
    created = [ev(f"m{i}", occurred=T0 + rng.randrange(600) * minute) for i in range(30)]
    records = statuses + assigned + created
    rng.shuffle(records)
    lake = ke.Lake(tmp_path)
    for start in range(0, len(records), 25):  # several unsorted files per partition
        lake.write_events(records[start : start + 25])
    # every type by conversation, then message, then event time (absent ids sort first)
    kinds = ("message.status", "conversation.assigned", "message.created")
    columns = ["conversation_id", "message_id", "occurred_at", "event_key"]

    def files_in_order() -> dict[str, bool]:
        result = {}
        for kind in kinds:
            files = parquet_files(tmp_path / "events" / f"type={kind}")
            frames = [pl.read_parquet(f, hive_partitioning=False) for f in files]
            result[kind] = all(
                f.select(columns).equals(f.select(columns).sort(columns)) for f in frames
            )
        return result

    assert files_in_order() == dict.fromkeys(kinds, False)  # as written: arrival order
    lake.compact()
    assert files_in_order() == dict.fromkeys(kinds, True)
    got = lake.events().select("event_key").collect()["event_key"].sort().to_list()
    assert got == sorted(r.event_key for r in records)


def test_compaction_that_reads_no_rows_from_full_files_stops_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A safety net: a reader returning nothing (as Polars did for a glob-like lake path)
    must not make compaction replace the files with nothing."""
    from kirim_events.lake import compact as compact_module

    lake = ke.Lake(tmp_path)
    lake.write_events([ev(f"k{i}") for i in range(5)])
    before = on_disk(tmp_path)
    real = pl.scan_parquet

    def reads_nothing(paths: list[str], **kwargs: object) -> pl.LazyFrame:
        return real(paths, **kwargs).head(0)  # type: ignore[arg-type]

    monkeypatch.setattr(compact_module.pl, "scan_parquet", reads_nothing)
    with pytest.raises(LakeError, match="read no rows from 1 files holding 5"):
        lake.compact(full=True)
    monkeypatch.undo()
    assert on_disk(tmp_path) == before
    assert lake.events().collect().height == 5


def test_a_compaction_stops_when_the_manifest_changed_under_it(tmp_path: Path) -> None:
    """The last guard before the commit point: a manifest published by someone else since
    this run planned (on S3 two runs can overlap) stops it before it publishes its own."""
    from kirim_events.lake.paths import encode_type
    from kirim_events.lake.state import Manifest, manifest_path

    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b")])
    lake.write_events([ev("c")])
    rel = manifest_path("events", encode_type("message.created"))

    def meanwhile(step: str) -> None:
        if step == "file_written":
            current = Manifest.load(lake.storage, rel)
            dataclasses.replace(current, generation=current.generation + 1).save(lake.storage, rel)

    with pytest.raises(LakeError, match="changed while this compaction ran"):
        lake.compact(hook=meanwhile)
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b", "c"]
    lake.compact()
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b", "c"]
    assert lake.stats()["clean"].all()


def test_a_reader_planning_while_a_compaction_commits_still_sees_every_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction that publishes and deletes between a reader's manifest read and its
    listing left the reader counting neither the old files nor the new ones."""
    from kirim_events.lake.state import Manifest

    ke.Lake(tmp_path).write_events([ev(f"k{i}") for i in range(20)])
    real_load = Manifest.load
    compacted: list[int] = []

    def load_then_another_process_compacts(storage: object, rel: str) -> Manifest:
        manifest = real_load(storage, rel)  # type: ignore[arg-type]
        if not compacted:
            compacted.append(0)  # once (the compaction reads manifests too)
            compacted[0] = ke.Lake(tmp_path).compact().files_deleted
        return manifest

    monkeypatch.setattr(Manifest, "load", load_then_another_process_compacts)
    assert ke.Lake(tmp_path).events().collect().height == 20
    assert compacted[0] > 0


def test_a_run_with_nothing_to_rewrite_deletes_no_file_a_newer_manifest_counts(
    tmp_path: Path,
) -> None:
    """A run only cleaning leftovers must check the manifest too: files its stale manifest
    does not count may be what another compaction published meanwhile."""
    from kirim_events.lake.paths import encode_type
    from kirim_events.lake.state import Manifest, manifest_path

    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b")])
    lake.compact()
    (counted,) = parquet_files(tmp_path / "events")
    leftover = counted.with_name(counted.name.replace("c-00000001-", "c-00000002-"))
    shutil.copyfile(counted, leftover)  # as an interrupted later run would leave it
    # and its marker, which makes a normal run visit the clean partition, with nothing to
    # rewrite (a full run would rewrite it)
    marker = change_marker("events", "message.created", "2026-05-01", counted.name)
    lake.storage.publish(marker, b"")
    rel = manifest_path("events", encode_type("message.created"))

    def another_run_publishes_the_leftover(step: str) -> None:
        # the only group visited is the events' one (the marker's)
        if step == "planned" and counted.exists():
            current = Manifest.load(lake.storage, rel)
            day = next(iter(current.files))
            newer = dataclasses.replace(
                current,
                generation=current.generation + 1,
                files={**current.files, day: [leftover.name]},
                replaced={**current.replaced, day: [counted.name]},
            )
            newer.save(lake.storage, rel)
            counted.unlink()

    with pytest.raises(LakeError, match="changed while this compaction ran"):
        lake.compact(hook=another_run_publishes_the_leftover)
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b"]


def empty_folders(root: Path) -> list[str]:
    """Folders under ``root`` holding nothing, relative to it."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())
    )


def reads(lake: ke.Lake) -> tuple[object, ...]:
    """What our readers return: events, deliveries (Polars and SQL), stats minus empties."""
    events = lake.events().collect().sort("event_key")
    deliveries = lake.deliveries().collect()
    via_sql = sorted(lake.sql("select event_key, payload, type, date from events").fetchall())
    stats = lake.stats().filter(pl.col("files") > 0)
    return events.rows(), deliveries.rows(), via_sql, stats.rows()


def test_compaction_removes_the_folders_it_emptied(tmp_path: Path) -> None:
    """Each run left an empty folder per type and day under _state/changes (the markers it
    consumed), and the partition folders it emptied: thousands a year, which every later
    compaction and reader lists. Reads are the same with or without them."""
    lake = ke.Lake(tmp_path)
    expected = fill(lake)  # "x" was received first on 05-01: 05-02's only row loses
    late = T0 + timedelta(1)
    lake.write_events([ev("y", occurred=T0 + timedelta(days=3), received=late, payload="y2")])
    lake.write_events([ev("y", occurred=T0 + timedelta(days=4), received=T0, payload="y")])
    lake.write_deliveries([{"delivery_id": "d2", "attempt": 1, "received_at": T0}])
    expected["y"] = "y"
    changes = tmp_path / "_state/changes"
    marker_folders = {p.parent for p in changes.rglob("*.changed")}
    assert len(marker_folders) == 6  # 4 days of message.created, 1 of statuses, 1 deliveries
    emptied = tmp_path / "events/type=message.created/date=2026-05-02"
    assert emptied.is_dir()
    lake.compact()
    assert winners(lake) == expected
    assert not emptied.exists()
    assert not (tmp_path / "events/type=message.created/date=2026-05-04").exists()
    assert not any(folder.exists() for folder in marker_folders)
    assert not [f for f in empty_folders(tmp_path) if "date=" in f]
    # never the lake's own folders, even when nothing is left in them
    assert {"_state", "_state/changes", "events", "deliveries"} <= {
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_dir()
    }
    after = reads(lake)
    for folder in marker_folders | {emptied}:  # the removal is all a reader could tell
        folder.mkdir(parents=True, exist_ok=True)
    assert reads(lake) == after
    assert lake.compact().partitions == 0
    lake.write_events([ev("z", occurred=T0 + timedelta(days=1))])  # into a removed folder
    assert sorted(winners(lake)) == sorted([*expected, "z"])
    assert lake.compact().partitions >= 1
    assert sorted(on_disk(tmp_path)) == sorted([*expected, "z"])


def test_a_write_whose_folder_a_compaction_removes_before_the_rename_succeeds(
    tmp_path: Path,
) -> None:
    """A writer makes (or finds) its partition folder, then moves its file in: a compaction
    that empties and removes that folder in between made the rename fail (ENOENT)."""
    other = ke.Lake(tmp_path / "other")
    other.write_events([ev("b", payload="b")])
    (source,) = parquet_files(tmp_path / "other" / "events")
    root = tmp_path / "lake"
    lake = ke.Lake(root)
    lake.write_events([ev("a", received=T0 + timedelta(hours=1), payload="late")])
    lake.write_events([ev("a", occurred=T0 + timedelta(days=1), received=T0, payload="early")])
    folder = root / "events/type=message.created/date=2026-05-01"  # compaction empties it
    # A writer's batch as Lake.write_events publishes it: the marker, then the file, both
    # staged, their folders made, then renamed in order; a compaction runs between.
    file_rel = f"{folder.relative_to(root).as_posix()}/{source.name}"
    marker_rel = change_marker("events", "message.created", "2026-05-01", source.name)
    storage = lake.storage
    staged = [storage.stage(marker_rel, b""), storage.stage(file_rel, source.read_bytes())]
    removed = []

    def between(rel: str) -> None:
        if rel == marker_rel:
            assert folder.is_dir()  # made (here: found) for the file, which is not in yet
            lake.compact()
            removed.append(not folder.exists())

    storage.commit(staged, after_each=between)
    assert removed == [True]  # the compaction did remove the folder under the writer
    assert (root / file_rel).read_bytes() == source.read_bytes()
    assert winners(lake) == {"a": "early", "b": "b"}
    lake.compact()  # the writer's marker, kept by the run that did not see its file
    assert on_disk(root) == ["a", "b"]
    assert not list((root / "_tmp").iterdir())


def test_removing_empty_folders_spares_the_lake_root_and_its_own_folders(tmp_path: Path) -> None:
    storage = ke.Lake(tmp_path).storage
    for rel in ("events", "_tmp", "_state", "a/b", "a/c/d"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "a/c/d/kept").touch()
    storage.remove_empty_folders(["", "/", "events", "_tmp/", "_state", "a/b/..", "a/b", "a/c"])
    assert empty_folders(tmp_path) == ["_state", "_tmp", "events"]  # a/b is gone, a is not
    assert (tmp_path / "a/c/d/kept").exists()


def test_a_write_still_moving_its_files_in_keeps_the_marker_of_the_file_not_yet_there(
    tmp_path: Path,
) -> None:
    # One write names its file alike in every partition it touches, and moves its markers in
    # first, then its files one by one (on S3, in parallel). A compaction that ran between
    # the file of May 1 and that of May 5 took May 5's marker as consumed (that name was
    # seen, on May 1), so the file landing next had no marker: the partition was never
    # compacted again, and a plain reader kept counting its event twice.
    lake = ke.Lake(tmp_path)
    may5 = T0 + timedelta(days=4)
    lake.write_events([ev("b", occurred=may5, payload="first")])
    lake.compact()
    lake.write_events(
        [ev("a"), ev("b", occurred=may5, received=T0 + timedelta(days=5), payload="again")]
    )
    (landing,) = (tmp_path / "events/type=message.created/date=2026-05-05").glob("w-*.parquet")
    held = tmp_path / "held.parquet"
    landing.rename(held)  # its marker is in place, the file not yet
    lake.compact()
    held.rename(landing)  # and now it is
    lake.compact()
    assert on_disk(tmp_path) == ["a", "b"]
    assert winners(lake) == {"a": json.dumps({"id": "a", "type": "message.created"}), "b": "first"}
    assert lake.stats()["clean"].all()
