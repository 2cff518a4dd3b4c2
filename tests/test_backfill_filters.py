"""backfill() against an emulator that ignores a filter: only the rows asked for are stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_backfill_kit import (
    FakeTime,
    Killed,
    StripPayload,
    SyncASGI,
    World,
    lake_frames,
)

from kirim_events.backfill import TIME_FILTER_IGNORED, BackfillProgress, backfill
from kirim_events.emulator import FaultConfig
from kirim_events.history_filter import TIME_FILTER

IGNORES_TIME = FaultConfig(ignored_filters=("created_after", "created_before"))
"""The emulator as a Kirim that ignores the time range (it pages the whole history)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("collector"), seed=21, events=400)
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _portals() -> Iterator[None]:
    yield
    SyncASGI.shutdown_all()


def stored_ids(home: Path) -> list[str]:
    return sorted(lake_frames(home)[1]["delivery_id"].to_list())


def ids_where(world: World, **want: Any) -> list[str]:
    return sorted(
        r.id for r in world.emu.store.deliveries if all(getattr(r, k) == v for k, v in want.items())
    )


@pytest.mark.parametrize(
    ("flag", "value", "param"),
    [
        ("status", "dead", "status"),
        ("event_type", "contact.created", "event_type"),
        ("subscription_id", "wbs_00000000000000000000000000", "subscription_id"),
    ],
)
def test_rows_outside_a_filter_kirim_ignored_are_skipped_counted_and_said_once(
    world: World, tmp_path: Path, flag: str, value: str, param: str
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t, faults=FaultConfig(ignored_filters=(param,)))
    report = backfill(tmp_path, client=client, since=since, until=until, slices=2, **{flag: value})
    wanted = ids_where(world, **{flag: value})
    assert stored_ids(tmp_path) == wanted
    skipped = len(world.emu.store.deliveries) - len(wanted)
    assert skipped > 0
    assert dict(report.filtered.outside) == {param: skipped}
    assert report.rows == len(wanted)
    flag_text = "--" + param.replace("_", "-")
    assert report.notes == [
        f"Kirim returned {skipped} row(s) outside {flag_text} {value} (it may ignore that"
        " filter or know it by another name): skipped, not stored"
    ]
    # events of skipped rows are not imported either
    events = lake_frames(tmp_path)[0]
    kept = {k for r in world.emu.store.deliveries if r.id in wanted for k in r.event_keys}
    assert set(events["event_key"].to_list()) == kept


def test_a_kirim_applying_the_filters_leaves_nothing_to_say(world: World, tmp_path: Path) -> None:
    since, until = world.window
    _, client = world.api(FakeTime(until.timestamp() + 3600))
    report = backfill(tmp_path, client=client, since=since, until=until, status="dead")
    assert stored_ids(tmp_path) == ids_where(world, status="dead")
    assert not report.filtered
    assert report.notes == []


@pytest.mark.parametrize("side", ["before", "after"])
def test_rows_outside_a_time_range_kirim_ignored_are_skipped_and_counted_once(
    world: World, tmp_path: Path, side: str
) -> None:
    lo, hi = world.window
    # a range of five minutes next to the history (which spans about a second): Kirim
    # sends all of it to every one of the five slices, and the first or last counts it
    if side == "before":
        since, until = lo - timedelta(minutes=5), lo
    else:
        since, until = hi, hi + timedelta(minutes=5)
    t = FakeTime(hi.timestamp() + 3600)
    _, client = world.api(t, faults=IGNORES_TIME)
    report = backfill(tmp_path, client=client, since=since, until=until, slices=2, now=t.clock)
    assert report.slices == 5
    assert stored_ids(tmp_path) == []
    every = len(world.emu.store.deliveries)
    assert dict(report.filtered.outside) == {TIME_FILTER: every}
    assert report.notes == [
        TIME_FILTER_IGNORED,  # found on a first page: the history was walked once
        f"Kirim returned {every} row(s) outside {TIME_FILTER} (it may ignore that filter or"
        " know it by another name): skipped, not stored",
    ]


def test_the_rows_a_kirim_ignoring_the_range_sends_inside_it_are_stored_once(
    world: World, tmp_path: Path
) -> None:
    since, until = world.window
    _, client = world.api(FakeTime(until.timestamp() + 3600), faults=IGNORES_TIME)
    report = backfill(tmp_path, client=client, since=since, until=until, slices=2)
    assert stored_ids(tmp_path) == ids_where(world)
    assert not report.filtered  # all inside the range: each stored by the slice owning it


def test_rows_without_the_filtered_field_are_kept_and_said(world: World, tmp_path: Path) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)

    ignores = FaultConfig(ignored_filters=("status",))
    wrap = lambda app: StripPayload(app, "status")  # noqa: E731
    _, client = world.api(t, faults=ignores, transport_wrapper=wrap)
    report = backfill(tmp_path, client=client, since=since, until=until, status="dead")
    every = len(world.emu.store.deliveries)
    assert len(stored_ids(tmp_path)) == every  # none can be shown to be outside: all kept
    assert not report.filtered.outside
    assert dict(report.filtered.unchecked) == {"status": every}
    assert report.notes == [
        f"{every} row(s) from Kirim carry no status, so nothing shows them outside"
        " --status dead: stored all the same"
    ]


def test_a_killed_run_against_a_kirim_ignoring_a_filter_resumes_exactly(
    world: World, tmp_path: Path
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    transport, client = world.api(t, faults=FaultConfig(ignored_filters=("status",)))

    def die_after_page_6(p: BackfillProgress) -> None:
        if p.pages == 6:
            raise Killed

    args: dict[str, Any] = dict(since=since, until=until, slices=1, page_size=10, status="failed")
    with pytest.raises(Killed):
        backfill(tmp_path, client=client, progress=die_after_page_6, **args)
    state = json.loads(next((tmp_path / "_state" / "backfill").glob("*.json")).read_text())
    read = sum(s["pages"] for s in state["slices"])
    assert read == 6
    # what a restarted chain skips: the rows read, skipped or not (newest first, 60 of them)
    oldest = datetime.fromisoformat(state["slices"][0]["oldest"]).timestamp()
    assert sum(r.created_at >= oldest - 1e-6 for r in world.emu.store.deliveries) >= 60
    # every page read counts as read, though most of its rows were skipped
    before = transport.paths["GET /v1/webhook_deliveries"]
    report = backfill(tmp_path, client=client, **args)
    assert report.resumed
    assert stored_ids(tmp_path) == ids_where(world, status="failed")
    pages = -(-len(world.emu.store.deliveries) // 10)
    assert transport.paths["GET /v1/webhook_deliveries"] - before == report.pages
    assert read + report.pages == pages


def wide_range(world: World) -> tuple[datetime, datetime, FakeTime]:
    """Two hours around the history (which spans about a second): 16 slices at slices=4,
    all but one of them empty on a Kirim that applies the range."""
    lo, hi = world.window
    return lo - timedelta(hours=1), hi + timedelta(hours=1), FakeTime(hi.timestamp() + 7200)


def test_a_kirim_ignoring_the_time_range_is_found_at_once_and_walked_once(
    world: World, tmp_path: Path
) -> None:
    since, until, t = wide_range(world)
    args: dict[str, Any] = dict(since=since, until=until, slices=4, page_size=50, now=t.clock)
    _, client = world.api(t)
    asked = backfill(tmp_path / "filtering", client=client, **args)
    assert asked.slices == 16
    assert asked.notes == []
    ignoring, client = world.api(t, faults=IGNORES_TIME)
    said: list[tuple[int, str]] = []

    def note(p: BackfillProgress) -> None:
        if p.note is not None:
            said.append((p.pages, p.note))

    report = backfill(tmp_path / "ignoring", client=client, progress=note, **args)
    # the same rows and events stored as from a Kirim that applies the range
    assert (
        stored_ids(tmp_path / "ignoring") == stored_ids(tmp_path / "filtering") == ids_where(world)
    )
    keys = {
        p: set(lake_frames(tmp_path / p)[0]["event_key"].to_list())
        for p in ("filtering", "ignoring")
    }
    assert keys["ignoring"] == keys["filtering"] == world.history_keys
    # said at once (with the first pages, not at the end), once, and in the report once
    assert [text for _, text in said] == [TIME_FILTER_IGNORED]
    assert said[0][0] <= 4  # the fetchers' first pages
    assert report.notes == [TIME_FILTER_IGNORED]
    assert not report.filtered  # every row is inside the range
    # one walk of the history, plus at most the first page of each of the 4 fetchers: not
    # one walk per slice (16 x the pages)
    pages = -(-len(world.emu.store.deliveries) // 50)
    assert pages >= 5
    requests = ignoring.paths["GET /v1/webhook_deliveries"]
    assert requests == report.requests
    assert pages < requests <= pages + 4
    assert not list((tmp_path / "ignoring" / "_state" / "backfill").glob("*.json"))  # done


@pytest.mark.parametrize("kill_at", [1, 6])
def test_a_run_killed_after_it_found_the_time_range_ignored_resumes_the_one_walk(
    world: World, tmp_path: Path, kill_at: int
) -> None:
    since, until, t = wide_range(world)
    args: dict[str, Any] = dict(since=since, until=until, slices=4, page_size=50, now=t.clock)
    ignoring, client = world.api(t, faults=IGNORES_TIME)
    said: list[str] = []
    seen = 0

    def die(p: BackfillProgress) -> None:
        nonlocal seen
        if p.note is not None:
            said.append(p.note)
        seen += said != []  # pages stored since (and with) the one that found it
        if seen == kill_at:
            raise Killed

    with pytest.raises(Killed):
        backfill(tmp_path, client=client, progress=die, **args)
    assert said == [TIME_FILTER_IGNORED]
    (path,) = (tmp_path / "_state" / "backfill").glob("*.json")
    state = json.loads(path.read_text())
    assert state["time_filter_ignored"] is True
    assert [(s["after"], s["before"]) for s in state["slices"]] == [
        (state["since"], state["until"])
    ]
    walked = state["slices"][0]["pages"]  # of the one walk, before the kill
    assert walked >= kill_at - 4  # pages stored after the switch: the one walk's, or the
    # first pages of the other fetchers, already asked for
    before = ignoring.paths["GET /v1/webhook_deliveries"]
    again: list[str] = []
    report = backfill(
        tmp_path, client=client, progress=lambda p: again.extend([p.note] if p.note else []), **args
    )
    assert report.resumed
    assert again == [TIME_FILTER_IGNORED]  # the resumed run says it too, once
    assert report.notes == [TIME_FILTER_IGNORED]
    assert stored_ids(tmp_path) == ids_where(world)
    assert set(lake_frames(tmp_path)[0]["event_key"].to_list()) == world.history_keys
    # the resumed run walks the one slice from its checkpointed cursor, not the 16
    pages = -(-len(world.emu.store.deliveries) // 50)
    assert ignoring.paths["GET /v1/webhook_deliveries"] - before == report.pages
    assert report.pages == pages - walked  # from where the one walk was cut


def test_a_resumed_run_with_nothing_left_to_read_still_says_the_range_was_ignored(
    world: World, tmp_path: Path
) -> None:
    # the killed run's other fetchers may finish the one walk before the kill lands; the
    # resumed run then reads no page, and the note rode only on a page's progress
    since, until, t = wide_range(world)
    args: dict[str, Any] = dict(since=since, until=until, slices=4, page_size=50, now=t.clock)
    _, client = world.api(t, faults=IGNORES_TIME)

    def die(p: BackfillProgress) -> None:
        if p.note is not None:
            raise Killed

    with pytest.raises(Killed):
        backfill(tmp_path, client=client, progress=die, **args)
    (path,) = (tmp_path / "_state" / "backfill").glob("*.json")
    state = json.loads(path.read_text())
    state["slices"][0]["done"] = True  # as if the other fetchers had read it to its end
    path.write_text(json.dumps(state))
    again: list[BackfillProgress] = []
    report = backfill(tmp_path, client=client, progress=again.append, **args)
    assert report.resumed
    assert report.pages == 0
    assert [p.note for p in again if p.note] == [TIME_FILTER_IGNORED]
    assert report.notes == [TIME_FILTER_IGNORED]


def test_the_progress_never_steps_back_when_the_run_turns_to_the_one_walk(
    world: World, tmp_path: Path
) -> None:
    # One fetcher takes the 4 slices in turn, and the history (about a second) lies in the
    # first: it is read to its end (a quarter of the range) before the second slice's first
    # page shows Kirim ignoring the range. The one walk then started at 0 % of the range
    # and 0 of 1 slices done: the bar stepped back from 25 % to 0.
    lo, hi = world.window
    t = FakeTime(hi.timestamp() + 7200)
    args: dict[str, Any] = dict(since=lo, until=hi + timedelta(hours=2), slices=1, page_size=50)
    _, client = world.api(t, faults=IGNORES_TIME)
    seen: list[BackfillProgress] = []
    report = backfill(tmp_path, client=client, progress=seen.append, now=t.clock, **args)
    assert report.notes == [TIME_FILTER_IGNORED]
    assert stored_ids(tmp_path) == ids_where(world)
    switched = next(i for i, p in enumerate(seen) if p.note == TIME_FILTER_IGNORED)
    before, after = seen[switched - 1], seen[switched]
    assert (before.slices_done, before.slices) == (1, 4)  # the first slice read to its end
    assert before.fraction == pytest.approx(0.25)
    # the total changes (the slice done and the one walk), what was done stays counted
    assert (after.slices_done, after.slices) == (1, 2)
    assert after.fraction == pytest.approx(0.25)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions)
    done = [p.slices_done for p in seen]
    assert done == sorted(done)
    assert all(p.slices_done <= p.slices for p in seen)
    assert seen[-1].fraction == 1.0
    assert seen[-1].slices_done == seen[-1].slices
