"""The emulated world and its ground truth: realism, invariants, determinism, streaming."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from localzone import local_zone

from kirim_events.emulator import (
    Emulator,
    EngineConfig,
    Truth,
    World,
    WorldConfig,
    emitted_conversation_id,
    render,
)
from kirim_events.emulator.world import META_ERRORS
from kirim_events.events import EventRecord, parse_delivery

SECRET = "whsec_world_test"


def _bundles(n: int, seed: int = 1, **cfg: Any) -> list[Any]:
    return list(World(WorldConfig(**cfg), seed=seed).bundles(n))


# ------------------------------------------------------------------ realism


def test_the_world_has_everything_kirim_sends() -> None:
    bundles = _bundles(20_000)
    events = [e for b in bundles for e in b.events]
    assert len(events) == 20_000
    kinds = Counter(e.type for e in events)
    assert set(kinds) == {
        "contact.created",
        "contact.updated",
        "message.received",
        "message.status",
        "conversation.assigned",
        "conversation.closed",
    }
    statuses = Counter(e.status for e in events if e.type == "message.status")
    assert set(statuses) == {"sent", "delivered", "read", "failed"}
    codes = {e.error[0] for e in events if e.error}
    assert codes <= {code for code, _, _ in META_ERRORS}
    assert len(codes) >= 5
    assert any(e.previous_user_id for e in events)  # reassignments
    assert any(e.type == "conversation.closed" and e.closed_by_user_id is None for e in events)
    assert any(len(b.events) == 2 for b in bundles)  # batched Meta statuses
    times = [b.at for b in bundles]
    assert times == sorted(times)


def test_message_statuses_move_forward_and_some_never_arrive() -> None:
    per_message: dict[str, list[Any]] = defaultdict(list)
    for b in _bundles(20_000, seed=2):
        for e in b.events:
            if e.type == "message.status":
                per_message[e.message_id].append(e)
    shapes = Counter()
    for events in per_message.values():
        order = [e.status for e in sorted(events, key=lambda e: e.at)]
        times = [e.at for e in sorted(events, key=lambda e: e.at)]
        assert order in (
            ["sent"],
            ["sent", "delivered"],
            ["sent", "delivered", "read"],
            ["failed"],
            ["sent", "failed"],
        ), order
        assert len(set(times)) == len(times)
        shapes[tuple(order)] += 1
    assert shapes[("sent", "delivered")] > 0  # delivered, never read
    assert shapes[("sent",)] > 0  # never delivered
    assert shapes[("failed",)] + shapes[("sent", "failed")] > 0


def test_conversation_invariants_hold() -> None:
    per_conv: dict[str, list[Any]] = defaultdict(list)
    for b in _bundles(30_000, seed=3):
        for e in b.events:
            if e.conversation_id:
                per_conv[e.conversation_id].append(e)
    reopened = 0
    for events in per_conv.values():
        events.sort(key=lambda e: e.at)
        seconds = Counter(e.at for e in events)
        for e in events:
            if e.type == "conversation.closed":
                assert seconds[e.at] == 1, "a close shares its second"
        assign_seconds = Counter(e.at for e in events if e.type == "conversation.assigned")
        assert all(n == 1 for n in assign_seconds.values())
        closes = [e.at for e in events if e.type == "conversation.closed"]
        reopened += any(e.at > closes[0] for e in events) if closes else 0
    assert reopened > 10


def test_contacts_are_created_before_their_messages_and_updated_later() -> None:
    first_seen: dict[str, tuple[int, str]] = {}
    for b in _bundles(10_000, seed=4):
        for e in b.events:
            if e.contact and e.contact.id not in first_seen:
                first_seen[e.contact.id] = (e.at, e.type)
    assert {kind for _, kind in first_seen.values()} == {"contact.created"}


def test_bad_world_config_is_rejected() -> None:
    from kirim_events.errors import ConfigError

    for bad, says in (
        ({"read_rate": -0.1}, "read_rate must be between 0 and 1, got -0.1"),
        ({"agents": 1}, "the world needs >= 1 phone number, >= 2 agents"),
        ({"session_interval": 0}, "session_interval must be positive"),
    ):
        with pytest.raises(ConfigError, match=says):
            World(WorldConfig(**bad))


def test_a_world_streams_once() -> None:
    world = World(seed=1)
    list(world.bundles(5))
    with pytest.raises(RuntimeError, match=r"World\.bundles\(\) can run only once"):
        list(world.bundles(5))
    assert list(World(seed=1).bundles(0)) == []


# ------------------------------------------------------------------ determinism and streaming


def test_same_seed_same_bodies() -> None:
    def bodies(seed: int) -> list[bytes]:
        return [render(b).body for b in World(seed=seed).bundles(3000)]

    assert bodies(5) == bodies(5)
    assert bodies(5) != bodies(6)


def test_another_start_makes_other_ids_for_the_same_traffic() -> None:
    # `emulate` twice without --start (the same seed 0, the world starting relative to now):
    # the wamids came from the seed alone, so the second run's messages and statuses had the
    # first run's ids and a collector answered them "duplicate", keeping none of them
    def events(start: int) -> list[Any]:
        return list(World(seed=3, start=start).events(max_events=600))

    first, again, later = events(1_780_000_000), events(1_780_000_000), events(1_780_086_400)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert any(e.event_id.startswith("wamid.") for e in first)
    assert not {e.event_id for e in first} & {e.event_id for e in later}
    # the same traffic, a day later: only the ids and times differ
    assert [(e.type, e.status) for e in first] == [(e.type, e.status) for e in later]


def test_a_long_stream_keeps_bounded_state() -> None:
    world = World(WorldConfig(max_contacts=300), seed=9)
    peak = 0
    for i, _ in enumerate(world.bundles(150_000)):
        if i % 500 == 0:
            peak = max(peak, len(world._heap))
    assert world.emitted == 150_000
    assert len(world.contacts) <= 300
    assert peak < 2_000  # pending statuses and open sessions, not the event history


def test_truth_can_stream_to_parquet(tmp_path: Path) -> None:
    on_disk = Truth(path=tmp_path / "log.parquet")
    in_memory = Truth()
    for bundle in World(seed=7).bundles(70_000):  # more than one 65 536-row chunk
        on_disk.record(bundle)
        in_memory.record(bundle)
    assert len(on_disk) == len(in_memory) == 70_000
    assert on_disk.log().collect().equals(in_memory.log().collect())
    assert on_disk.conversation_lifecycles().equals(in_memory.conversation_lifecycles())
    written = in_memory.write_parquet(tmp_path / "truth")
    assert pl.read_parquet(written["message_timelines"]).equals(in_memory.message_timelines())
    assert set(written) == {
        "events",
        "message_timelines",
        "conversation_lifecycles",
        "conversation_cycles",
    }


def test_a_truth_file_cut_by_a_stop_leaves_the_one_before_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # emulate --truth writes the files as it ends; a stop (Ctrl+C) while one was written
    # left it cut, no Parquet file, in place of a whole one written before
    truth = Truth()
    for bundle in World(seed=7).bundles(300):
        truth.record(bundle)
    before = truth.write_parquet(tmp_path)
    whole = pl.read_parquet(before["message_timelines"])
    real = pl.DataFrame.write_parquet

    def cut(frame: pl.DataFrame, file: Any, *args: Any, **kwargs: Any) -> None:
        if "message_timelines" in str(file):
            Path(file).write_bytes(b"PAR1 half a file")
            raise KeyboardInterrupt
        real(frame, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", cut)
    with pytest.raises(KeyboardInterrupt):
        truth.write_parquet(tmp_path)
    monkeypatch.undo()
    assert pl.read_parquet(before["message_timelines"]).equals(whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before.values())


def test_a_truth_streamed_to_parquet_keeps_what_it_held_when_read_midway(tmp_path: Path) -> None:
    # a read closes the Parquet file (it is readable only once closed); the writer opened
    # for the next chunk started it anew, and the events recorded before the read were lost
    on_disk = Truth(path=tmp_path / "log.parquet")
    in_memory = Truth()
    bundles = iter(World(seed=7).bundles(3_000))
    for n, bundle in enumerate(bundles):
        on_disk.record(bundle)
        in_memory.record(bundle)
        if n in (500, 1_500):
            assert on_disk.log().collect().height == len(on_disk)
    assert on_disk.as_of("2026-05-01T06:00:00Z").message_timelines().height > 0  # read midway
    for bundle in bundles:
        on_disk.record(bundle)
        in_memory.record(bundle)
    assert len(on_disk) == 3_000
    assert on_disk.log().collect().equals(in_memory.log().collect())
    assert on_disk.message_timelines().equals(in_memory.message_timelines())
    assert [p.name for p in tmp_path.iterdir()] == ["log.parquet"]


def test_a_truth_whose_copy_of_its_log_failed_keeps_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a read, the next chunk's writer copies the log (moved aside) into a new file: a
    # copy that failed (a full disk) left the events in log.parquet.earlier, and the next
    # attempt moved the new, unfinished log.parquet over it: every event before the read
    # was lost, and the chunk being written too (the log of 600 events held 186)
    on_disk = Truth(path=tmp_path / "log.parquet")
    in_memory = Truth()
    bundles = World(seed=7).bundles(600)
    for bundle in itertools.islice(bundles, 200):
        on_disk.record(bundle)
        in_memory.record(bundle)
    assert on_disk.log().collect().height == len(on_disk)
    for bundle in itertools.islice(bundles, 200):
        on_disk.record(bundle)
        in_memory.record(bundle)

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(pq.ParquetWriter, "write_batch", disk_full)
        with pytest.raises(OSError, match="No space"):
            on_disk.log()
    assert [p.name for p in tmp_path.iterdir()] == ["log.parquet"]
    for bundle in bundles:
        on_disk.record(bundle)
        in_memory.record(bundle)
    assert len(on_disk) == 600
    assert on_disk.log().collect().equals(in_memory.log().collect())
    assert [p.name for p in tmp_path.iterdir()] == ["log.parquet"]


# ------------------------------------------------------------------ truth = what the webhooks say


def _reduce(records: list[EventRecord], upto: datetime | None = None) -> dict[str, Any]:
    """An independent, plain-Python reading of the truth definitions from parsed webhooks."""
    unique: dict[str, EventRecord] = {}
    for r in records:
        unique.setdefault(r.event_key, r)
    events = [r for r in unique.values() if upto is None or r.occurred_at <= upto]
    messages: dict[str, dict[str, Any]] = {}
    for r in events:
        if r.type != "message.status":
            continue
        m = messages.setdefault(str(r.message_id), {"conversation_id": None, "n_events": 0})
        m[f"{r.status}_at"] = r.occurred_at
        m["n_events"] += 1
        m["conversation_id"] = m["conversation_id"] or r.conversation_id
        if r.status == "failed":
            m["error_code"] = r.error_code
    for m in messages.values():
        for name in ("read", "delivered", "failed", "sent"):
            if m.get(f"{name}_at"):
                m["status"] = name
                break
    convs: dict[str, list[EventRecord]] = defaultdict(list)
    for r in events:
        if r.conversation_id:
            convs[r.conversation_id].append(r)
    lifecycles = {}
    for cid, evs in convs.items():
        evs.sort(key=lambda r: (r.occurred_at, r.type == "conversation.closed"))
        cycles, closed = 1, False
        for r in evs:
            if closed:
                cycles += 1
            closed = r.type == "conversation.closed"
        assigns = [r for r in evs if r.type == "conversation.assigned"]
        closes = [r for r in evs if r.type == "conversation.closed"]
        lifecycles[cid] = {
            "opened_at": evs[0].occurred_at,
            "first_assigned_at": assigns[0].occurred_at if assigns else None,
            "n_assignments": len(assigns),
            "n_assignees": len({r.user_id for r in assigns if r.user_id}),
            "assignee_id": assigns[-1].user_id if assigns else None,
            "n_closes": len(closes),
            "n_reopens": cycles - 1,
            "closed_at": closes[-1].occurred_at if closes else None,
            "closed_by_user_id": closes[-1].closed_by_user_id if closes else None,
            "is_open": evs[-1].type != "conversation.closed",
        }
    return {"messages": messages, "lifecycles": lifecycles}


def _truth_rows(frame: pl.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in frame.to_dicts()}


@pytest.mark.parametrize(
    "world",
    [WorldConfig(kirim_block=True), WorldConfig(kirim_block=False, third_shape_rate=0.2)],
    ids=["enriched", "plain+third-shape"],
)
def test_truth_is_what_the_emitted_webhooks_say(world: WorldConfig) -> None:
    emu = Emulator(
        seed=13,
        world=world,
        secrets=SECRET,
        engine=EngineConfig(duplicate_rate=0.2, disorder=0.3, disorder_delay=600),
    )
    emu.subscribe("https://example.test/hook", now=0)
    records = [r for d in emu.iter_deliveries(12_000) for r in parse_delivery(d.body, d.headers)]
    cut = datetime.fromtimestamp(emu.world.start + 40_000, UTC)
    for upto, truth in ((None, emu.truth), (cut, emu.truth.as_of(cut))):
        got = _reduce(records, upto)
        timelines = _truth_rows(truth.message_timelines(), "message_id")
        assert set(timelines) == set(got["messages"])
        for message_id, want in got["messages"].items():
            row = timelines[message_id]
            for name in ("sent_at", "delivered_at", "read_at", "failed_at"):
                assert row[name] == want.get(name), (message_id, name)
            assert row["status"] == want["status"]
            assert row["error_code"] == want.get("error_code")
            assert row["conversation_id"] == want["conversation_id"]
            assert row["n_events"] == want["n_events"]
        lifecycles = _truth_rows(truth.conversation_lifecycles(), "conversation_id")
        assert set(lifecycles) == set(got["lifecycles"])
        for cid, want in got["lifecycles"].items():
            row = lifecycles[cid]
            assert {k: row[k] for k in want} == want, cid
    lifecycles = emu.truth.conversation_lifecycles()
    assert lifecycles["n_reopens"].sum() > 0
    assert lifecycles["is_open"].any()
    assert not lifecycles["is_open"].all()
    if world.kirim_block:
        assert emu.truth.message_timelines()["conversation_id"].null_count() == 0
    else:
        shapes = set(emu.truth.log().collect()["shape"])
        assert shapes == {"meta", "kirim", "legacy"}


_LOG_COLUMNS = (
    "type", "event_id", "phone_number_id", "conversation_id", "contact_id", "message_id",
    "status", "recipient_id", "user_id", "previous_user_id", "closed_by_user_id", "error_code",
)  # fmt: skip


@pytest.mark.parametrize(
    "world",
    [
        WorldConfig(kirim_block=True),
        WorldConfig(kirim_block=False),
        WorldConfig(kirim_block=True, third_shape_rate=0.5),
        WorldConfig(kirim_block=False, third_shape_rate=1.0),
    ],
    ids=["enriched", "plain", "half-third-shape", "third-shape"],
)
def test_the_truth_log_holds_what_the_bodies_carry(world: WorldConfig) -> None:
    # The truth's event log is "only what the emitted events themselves carry": it named
    # a phone number id for Kirim-native events (their bodies carry none), a contact id for
    # third-shape bodies (none there either) and no status for conversation events (their
    # bodies carry the conversation's, which the lake keeps as the event's status)
    emu = Emulator(seed=13, world=world, secrets=SECRET)
    emu.subscribe("https://example.test/hook", now=0)
    got = {r.event_key: r for d in emu.iter_deliveries(4000) for r in parse_delivery(d.body)}
    log = emu.truth.log().collect()
    assert set(log["event_key"]) == set(got)
    for row in log.iter_rows(named=True):
        record = got[row["event_key"]]
        assert record.occurred_at == row["at"]
        for name in _LOG_COLUMNS:
            assert row[name] == getattr(record, name), (name, row["type"], row["shape"])


def test_cycles_add_up_to_lifecycles() -> None:
    # enriched: Meta messages join their conversations, so cycles open with them
    truth = Truth(kirim_block=True)
    for bundle in World(WorldConfig(kirim_block=True), seed=17).bundles(15_000):
        truth.record(bundle)
    cycles = truth.conversation_cycles()
    lifecycles = truth.conversation_lifecycles()
    per_conv = cycles.group_by("conversation_id").agg(
        pl.len().alias("n"),
        pl.col("n_assignments").sum().alias("assignments"),
        pl.col("closed_at").is_not_null().sum().alias("closes"),
        pl.col("opened_at").min().alias("opened"),
    )
    joined = lifecycles.join(per_conv, on="conversation_id")
    assert len(joined) == len(lifecycles)
    assert (joined["n"] == joined["n_cycles"]).all()
    assert (joined["n_cycles"] - 1 == joined["n_reopens"]).all()
    assert (joined["assignments"] == joined["n_assignments"]).all()
    assert (joined["closes"] == joined["n_closes"]).all()
    assert (joined["opened"] == joined["opened_at"]).all()
    for _, group in itertools.islice(cycles.group_by("conversation_id"), 200):
        rows = group.sort("cycle").to_dicts()
        for prev, cur in itertools.pairwise(rows):
            assert prev["closed_at"] is not None
            assert cur["opened_at"] > prev["closed_at"]


def test_as_of_before_the_start_is_empty_and_accepts_strings() -> None:
    truth = Truth()
    world = World(seed=1)
    for bundle in world.bundles(500):
        truth.record(bundle)
    assert truth.as_of(world.start - 1).message_timelines().height == 0
    iso = datetime.fromtimestamp(world.now, UTC).isoformat().replace("+00:00", "Z")
    assert truth.as_of(iso).conversation_lifecycles().equals(truth.conversation_lifecycles())
    with pytest.raises(ValueError, match="as_of needs a timezone-aware datetime"):
        truth.as_of(datetime(2026, 5, 1))  # naive


def test_as_of_reads_a_time_without_an_offset_as_utc_as_the_lake_does() -> None:
    # it took "2026-05-01T06:00:00" (and a date) in the machine's time zone: in Jakarta the
    # truth cut 7 hours before the instant lake.as_of reads from the same text
    truth = Truth()
    for bundle in World(seed=1).bundles(300):
        truth.record(bundle)
    with local_zone("Asia/Jakarta"):
        six = datetime(2026, 5, 1, 6, tzinfo=UTC)
        assert truth.as_of("2026-05-01T06:00:00").as_of_ts == six
        assert truth.as_of("2026-05-01T06:00:00Z").as_of_ts == six
        assert truth.as_of("2026-05-01").as_of_ts == datetime(2026, 5, 1, tzinfo=UTC)
        assert (
            truth.as_of("2026-05-01T06:00:00")
            .message_timelines()
            .equals(truth.as_of(six).message_timelines())
        )
        with pytest.raises(ValueError, match="as_of needs an ISO-8601 time"):
            truth.as_of("yesterday")


def test_emitted_conversation_ids_follow_the_switch() -> None:
    bundles = _bundles(2000, kirim_block=False)
    for b in bundles:
        for e in b.events:
            expected = emitted_conversation_id(e, b.shape, False)
            records = parse_delivery(render(b, kirim_block=False).body)
            assert all(r.conversation_id == expected for r in records)
            if b.shape == "meta":
                assert expected is None


def test_meta_bodies_carry_the_kirim_block_only_when_asked() -> None:
    # kirim-api.md §4.2: "The emulator adds it only when asked"; it added it by default
    def meta_bodies(world: WorldConfig | None) -> list[dict[str, Any]]:
        emu = Emulator(seed=2, world=world, secrets=SECRET)
        emu.subscribe("https://example.test/hook", now=0)
        sent = emu.iter_deliveries(600)
        return [json.loads(d.body) for d in sent if d.headers["X-Kirim-Source"] == "meta"]

    for plain in (meta_bodies(None), meta_bodies(WorldConfig())):
        assert plain
        assert not any("kirim" in body for body in plain)
    asked = meta_bodies(WorldConfig(kirim_block=True))
    assert asked
    assert all(body["kirim"]["contact_id"].startswith("ctc_") for body in asked)
    assert all(body["kirim"]["conversation_id"].startswith("cnv_") for body in asked)
