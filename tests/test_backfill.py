"""backfill() against the emulator's REST app: faults, 429s, a kill, resume, exactness."""

from __future__ import annotations

import contextlib
import importlib
import json
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from localzone import local_zone
from test_backfill_kit import (
    DropKey,
    FakeTime,
    Killed,
    RewriteAnswers,
    StripPayload,
    SyncASGI,
    World,
    lake_frames,
)

from kirim_events.backfill import TIME_FILTER_IGNORED, BackfillProgress, BackfillReport, backfill
from kirim_events.client import KirimClient, format_time
from kirim_events.emulator import FaultConfig
from kirim_events.errors import (
    AuthenticationError,
    ConfigError,
    CursorRefused,
    Interrupted,
    PermanentApiError,
    RetryableApiError,
    StorageError,
)
from kirim_events.events import parse_time
from kirim_events.journal import Journal
from kirim_events.lake import Lake


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("collector"), seed=21, events=400)
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _portals() -> Iterator[None]:
    yield
    SyncASGI.shutdown_all()


def dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def assert_lake_is_exactly_the_history(home: Path, world: World) -> None:
    events, deliveries = lake_frames(home)
    keys = events["event_key"].to_list()
    assert len(keys) == len(set(keys)), "duplicate events"
    assert set(keys) == world.history_keys, "gap or extra events"
    ids = deliveries["delivery_id"].to_list()
    store_ids = [row.id for row in world.emu.store.deliveries]
    assert sorted(ids) == sorted(store_ids), "delivery rows missing or duplicated"
    assert set(deliveries["origin"]) == {"backfill"}
    by_id = {row.id: row.status for row in world.emu.store.deliveries}
    for did, outcome in zip(ids, deliveries["outcome"], strict=True):
        assert outcome == by_id[did]
    assert set(events["origin"]) == {"backfill"}


def test_backfill_with_429_5xx_latency_drops_and_a_kill_resumes_exactly(
    world: World, tmp_path: Path
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    faults = FaultConfig(error_rate=0.15, latency=0.5, latency_rate=0.3, drop_rate=0.03)
    transport, client = world.api(t, faults=faults, read_limit=20)
    # Another user of the same key has just spent the read budget: the first pages get 429s.
    with httpx.Client(transport=transport, base_url="http://kirim.test") as other:
        auth = {"Authorization": f"Bearer {world.emu.api_keys[0].reveal()}"}
        for _ in range(25):
            with contextlib.suppress(httpx.TransportError):
                other.get("/v1/me", headers=auth)

    seen: list[BackfillProgress] = []

    def die_after_page_9(p: BackfillProgress) -> None:
        seen.append(p)
        if p.pages == 9:
            raise Killed

    with pytest.raises(Killed):
        backfill(
            tmp_path,
            client=client,
            since=since,
            until=until,
            slices=3,
            page_size=10,
            progress=die_after_page_9,
        )
    checkpoint = next((tmp_path / "_state" / "backfill").glob("*.json"))
    state = json.loads(checkpoint.read_text())
    assert sum(s["pages"] for s in state["slices"]) >= 9
    events, _ = lake_frames(tmp_path)
    assert events.height == 0  # killed before the final flush: everything is in the journal

    # A new process: new client, same arguments -> resumes from the checkpoint.
    _, client2 = world.api(t, faults=faults, read_limit=20)
    second: list[BackfillProgress] = []
    report = backfill(
        tmp_path,
        client=client2,
        since=since,
        until=until,
        slices=3,
        page_size=10,
        progress=second.append,
    )
    assert report.resumed
    assert_lake_is_exactly_the_history(tmp_path, world)
    # The faults really happened, and the resumed run did not start over.
    assert transport.statuses[429] >= 1
    assert transport.statuses[503] >= 1
    assert transport.transport_errors >= 1
    assert client.retries + client2.retries >= 3
    # The resumed run fetched only the pages the checkpoint did not hold: with those, as
    # many as one whole run of the same range takes (a restart from scratch fetches them
    # all again). "report.pages < checkpointed + report.pages" held whatever it did.
    _, whole_client = world.api(FakeTime(until.timestamp() + 3600))
    whole = backfill(
        tmp_path / "whole", client=whole_client, since=since, until=until, slices=3, page_size=10
    )
    assert not whole.resumed
    assert sum(s["pages"] for s in state["slices"]) + report.pages == whole.pages
    assert second[-1].fraction == 1.0
    assert [p.pages for p in second] == sorted(p.pages for p in second)
    assert not checkpoint.exists()  # retired once complete
    assert (tmp_path / "_state" / "backfill" / "done").is_dir()


def test_a_data_folder_starting_with_a_tilde_keeps_its_checkpoint_beside_its_journal(
    world: World, tmp_path: Path, away_from_home: Path
) -> None:
    # Journal and Lake expand "~" (a3f34c8); backfill kept its checkpoint and run lock under
    # the words given, in a folder named "~" where it ran: a run from another folder did
    # not resume, nor see the lock of one running
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t)
    backfill("~/kirim", client=client, since=since, until=until, now=t.clock)
    assert list(away_from_home.iterdir()) == []
    assert (tmp_path / "kirim" / "_state" / "backfill").is_dir()  # the finished run's
    assert_lake_is_exactly_the_history(tmp_path / "kirim", world)


def test_a_run_asked_for_a_span_ago_resumes_with_the_same_arguments(
    world: World, tmp_path: Path
) -> None:
    # "--since 2h" names a different instant each time it is read; the run it started must
    # still resume (it started over and left its checkpoint behind).
    since, until = world.window
    t = FakeTime(until.timestamp() + 60)
    ago = f"{int(t.clock() - since.timestamp()) + 60}s"

    def die_after_page_3(p: BackfillProgress) -> None:
        if p.pages == 3:
            raise Killed

    _, client = world.api(t)
    with pytest.raises(Killed):
        backfill(tmp_path, client=client, since=ago, page_size=10, progress=die_after_page_3,
                 now=t.clock)  # fmt: skip
    first = json.loads(next((tmp_path / "_state" / "backfill").glob("*.json")).read_text())
    t.sleep(30)
    _, client2 = world.api(t)
    typed = f" {ago[:-1]} S "  # the same span typed otherwise is the same run
    report = backfill(tmp_path, client=client2, since=typed, page_size=10, now=t.clock)
    assert report.resumed
    # the range fixed when the run first started, then on to the end asked now
    assert report.since == parse_time(first["since"])
    assert report.until == dt(t.clock())
    assert list((tmp_path / "_state" / "backfill").glob("*.json")) == []  # none left behind
    assert_lake_is_exactly_the_history(tmp_path, world)


@pytest.mark.parametrize("bound", ["since", "until"])
def test_a_span_run_killed_more_than_a_day_ago_starts_afresh(
    world: World, tmp_path: Path, bound: str
) -> None:
    # "--since 7d" means the days before now: a killed run weeks old must not be resumed (it
    # walked the old range, perhaps purged by Kirim, and skipped the days asked for). The
    # same for a span as --until.
    since, until = world.window
    t = FakeTime(until.timestamp() + 60)
    ago = f"{int(t.clock() - since.timestamp()) + 60}s"
    asked = {"since": ago} if bound == "since" else {"since": since, "until": "1s"}

    def die(p: BackfillProgress) -> None:
        raise Killed

    _, client = world.api(t)
    with pytest.raises(Killed):
        backfill(tmp_path, client=client, page_size=10, progress=die, now=t.clock, **asked)
    t.sleep(25 * 3600)
    report = backfill(tmp_path, client=client, page_size=10, now=t.clock, **asked)
    assert not report.resumed
    end = t.clock() - (0 if bound == "since" else 1)
    assert report.until == datetime.fromtimestamp(end, UTC)


@pytest.mark.parametrize("until", [None, "now"])
def test_an_until_of_now_stays_fixed_when_resumed_even_days_later(
    world: World, tmp_path: Path, until: str | None
) -> None:
    # Omitted and "now" mean the same: the end fixed when the run first started.
    since, _ = world.window
    t = FakeTime(world.window[1].timestamp() + 60)
    first_end = datetime.fromtimestamp(t.clock(), UTC)

    def die(p: BackfillProgress) -> None:
        raise Killed

    _, client = world.api(t)
    with pytest.raises(Killed):
        backfill(tmp_path, client=client, since=since, until=until, progress=die, now=t.clock)
    t.sleep(25 * 3600)
    report = backfill(tmp_path, client=client, since=since, until=until, now=t.clock)
    assert (report.resumed, report.until) == (True, first_end)


@pytest.fixture(scope="module")
def hours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, float]]:
    """A history spread evenly over three hours from a whole hour (the emulator makes it in
    under a second): the world, and that hour (unix seconds)."""
    w = World(tmp_path_factory.mktemp("hours"), seed=5, events=150)
    base = float(int(w.span[1]) // 3600 * 3600 + 3600)
    rows = w.emu.store.deliveries  # in the order made: Kirim's newest-first order stays
    for i, row in enumerate(rows):
        row.created_at = base + i * (3 * 3600 // len(rows))
    yield w, base
    w.close()


def assert_lake_holds_the_history_of(home: Path, world: World, since: float, until: float) -> None:
    """The lake holds each history row created in ``[since, until)`` once, and its events
    once, and nothing else."""
    rows = [r for r in world.emu.store.deliveries if since <= r.created_at < until]
    events, deliveries = lake_frames(home)
    assert sorted(deliveries["delivery_id"]) == sorted(r.id for r in rows)
    keys = events["event_key"].to_list()
    assert len(keys) == len(set(keys)), "duplicate events"
    assert set(keys) == {k for r in rows for k in r.event_keys}


def _hourly(world: World, home: Path, t: FakeTime, stop: Any = None, **kw: Any) -> BackfillReport:
    """``kirim-events backfill --since 1h`` at ``t`` (``stop``: the progress callback). One
    fetcher and short pages: a run killed leaves every time slice unfinished (the fetcher
    goes on to the next slice until the kill is seen, and is killed again after one page)."""
    _, client = world.api(t)
    return backfill(home, client=client, since="1h", slices=1, page_size=2, progress=stop,
                    now=t.clock, **kw)  # fmt: skip


def _die_after(pages: int) -> Any:
    def stop(p: BackfillProgress) -> None:
        if p.pages >= pages:
            raise Killed

    return stop


def _killed_hour(world: World, home: Path, base: float) -> FakeTime:
    """Run k, an hourly ``--since 1h`` at the end of the hour from ``base``, killed after two
    pages: its clock, at that moment."""
    t = FakeTime(base + 3600)
    with pytest.raises(Killed):
        _hourly(world, home, t, _die_after(2))
    return t


def test_an_hourly_span_run_resuming_a_killed_one_reads_its_own_hour_too(
    hours: tuple[World, float], tmp_path: Path
) -> None:
    # An hourly "--since 1h": run k was killed; run k+1 resumed run k's hour, finished it and
    # ended, and its own hour was never read (run k+2 reads the next one): a silent gap.
    world, base = hours
    per_hour = Counter(int((r.created_at - base) // 3600) for r in world.emu.store.deliveries)
    assert sorted(per_hour) == [0, 1, 2]  # each hour has rows to lose, many pages' worth
    assert min(per_hour.values()) > 40
    t = _killed_hour(world, tmp_path, base)
    t.sleep(3600)
    told: list[BackfillProgress] = []
    report = _hourly(world, tmp_path, t, told.append)
    assert report.resumed
    assert_lake_holds_the_history_of(tmp_path, world, base, base + 2 * 3600)
    assert (report.since, report.until) == (dt(base), dt(base + 2 * 3600))
    assert not list((tmp_path / "_state" / "backfill").glob("*.json"))  # both walks done
    # one progress over both walks, never stepping back
    for field in ("pages", "rows", "fraction", "elapsed", "slices_done"):
        values = [getattr(p, field) for p in told]
        assert values == sorted(values), field
    assert told[-1].fraction == 1.0
    assert told[-1].slices_done == told[-1].slices == report.slices
    assert told[0].fraction < 0.5  # the old hour is half the range walked, not all done


def test_a_span_run_killed_in_the_hour_it_adds_is_resumed_with_it(
    hours: tuple[World, float], tmp_path: Path
) -> None:
    world, base = hours
    t = _killed_hour(world, tmp_path, base)
    checkpoint = next((tmp_path / "_state" / "backfill").glob("*.json"))

    def die_in_the_new_hour(p: BackfillProgress) -> None:
        state = json.loads(checkpoint.read_text())
        if state["since"] == format_time(dt(base + 3600)) and any(
            s["pages"] for s in state["slices"]
        ):
            raise Killed

    t.sleep(3600)
    with pytest.raises(Killed):
        _hourly(world, tmp_path, t, die_in_the_new_hour)
    t.sleep(1800)  # the next run, half an hour on: the new hour, then up to its own end
    report = _hourly(world, tmp_path, t)
    assert report.resumed
    assert_lake_holds_the_history_of(tmp_path, world, base, base + 2.5 * 3600)
    assert (report.since, report.until) == (dt(base + 3600), dt(base + 2.5 * 3600))
    assert not list(checkpoint.parent.glob("*.json"))


def test_hours_of_span_runs_killed_before_they_got_past_the_one_resumed_are_read(
    hours: tuple[World, float], tmp_path: Path
) -> None:
    # Run k+1 resumed run k's hour and was killed in it too: run k+2 resumes that hour, and
    # reads from its end, run k+1's hour as well as its own.
    world, base = hours
    t = _killed_hour(world, tmp_path, base)
    t.sleep(3600)
    with pytest.raises(Killed):
        _hourly(world, tmp_path, t, _die_after(1))
    state = json.loads(next((tmp_path / "_state" / "backfill").glob("*.json")).read_text())
    assert state["since"] == format_time(dt(base))  # killed in run k's hour, not past it
    t.sleep(3600)
    report = _hourly(world, tmp_path, t)
    assert_lake_holds_the_history_of(tmp_path, world, base, base + 3 * 3600)
    assert (report.resumed, report.since, report.until) == (True, dt(base), dt(base + 3 * 3600))


def test_a_span_run_killed_as_it_turns_to_the_hour_it_adds_loses_no_hour(
    hours: tuple[World, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed after the old hour's checkpoint was retired, before the new hour's was saved:
    # with neither, the next run started afresh on its own hour, and the one between was lost.
    world, base = hours
    t = _killed_hour(world, tmp_path, base)
    module = importlib.import_module("kirim_events.backfill")  # not the function it exports
    save = module.replace_file

    def die_saving_the_new_hour(path: Path, data: bytes | str) -> None:
        if json.loads(data).get("since") == format_time(dt(base + 3600)):
            raise Killed
        save(path, data)

    t.sleep(3600)
    with monkeypatch.context() as patched:
        patched.setattr(module, "replace_file", die_saving_the_new_hour)
        with pytest.raises(Killed):
            _hourly(world, tmp_path, t)
    t.sleep(3600)
    report = _hourly(world, tmp_path, t)
    assert_lake_holds_the_history_of(tmp_path, world, base, base + 3 * 3600)
    assert report.resumed


def test_a_resumed_span_run_counts_as_outside_only_rows_outside_the_range_it_reports(
    hours: tuple[World, float], tmp_path: Path
) -> None:
    # Kirim ignoring the time range sends each walk the whole history: the old hour's walk
    # counted the added hour's rows as outside the range, and the added hour's walk the old
    # hour's, though the report's range is both hours and they were stored, not skipped.
    world, base = hours
    t = _killed_hour(world, tmp_path, base)
    t.sleep(3600)
    _, client = world.api(
        t, faults=FaultConfig(ignored_filters=("created_after", "created_before"))
    )
    report = backfill(tmp_path, client=client, since="1h", slices=1, now=t.clock)
    assert (report.resumed, report.since, report.until) == (True, dt(base), dt(base + 7200))
    assert_lake_holds_the_history_of(tmp_path, world, base, base + 7200)
    # each walk read the whole history once: rows past the reported range (beyond the
    # slack of HISTORY_OVERLAP) counted once by each, and none inside it
    beyond = [r for r in world.emu.store.deliveries if r.created_at >= base + 7200 + 2]
    assert beyond
    assert dict(report.filtered.outside) == {"--since/--until": 2 * len(beyond)}


def test_a_backfill_failing_in_one_slice_stops_the_others_at_once(tmp_path: Path) -> None:
    # One slice got a 401 while the others waited out Retry-After: 8 three times: the error
    # came 32 s late (the client was interrupted only on Ctrl-C).
    answers = iter([httpx.Response(401, json={"error": {"type": "authentication_error"}})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or httpx.Response(
            429, json={"error": {"type": "rate_limit_error"}}, headers={"Retry-After": "8"}
        )

    client = KirimClient("http://kirim.test", "kdv_live_" + "A" * 24,
                         transport=httpx.MockTransport(handler), max_attempts=3)  # fmt: skip
    with pytest.raises(AuthenticationError):
        backfill(tmp_path, client=client, since="2026-05-01", until="2026-05-02", slices=3)
    # the 401, and at most one 429 for each other slice: their Retry-After waits were cut
    # short (without that, each of them tried three times: 7 requests)
    assert client.requests_sent <= 3


def test_a_client_works_again_after_a_backfill_that_failed(world: World, tmp_path: Path) -> None:
    # A stopping backfill cut the client's waits short for good: every later retry raised.
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t, faults=FaultConfig(error_rate=0.3))

    def fail(p: BackfillProgress) -> None:
        raise RuntimeError("a bug in a progress callback")

    for stop in (fail, lambda p: (_ for _ in ()).throw(KeyboardInterrupt)):
        with pytest.raises((RuntimeError, KeyboardInterrupt)):
            backfill(tmp_path, client=client, since=since, until=until, progress=stop)
    report = backfill(tmp_path, client=client, since=since, until=until, page_size=10)
    assert report.resumed
    assert client.retries > 0  # the faults made it wait, and the waits were waited out
    assert_lake_is_exactly_the_history(tmp_path, world)


class CountingJournal:
    """The run's journal, counting the pages committed to it (a page is committed before
    the progress after it is taken)."""

    def __init__(self, inner: Journal) -> None:
        self.inner, self.pages = inner, 0
        self.changed = threading.Condition()

    def append(self, records: Any, receipts: Any = ()) -> list[bool]:
        flags = self.inner.append(records, receipts)
        with self.changed:
            self.pages += 1
            self.changed.notify_all()
        return flags

    def wait_for(self, pages: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.pages >= pages, timeout=60)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_fetcher_slow_to_tell_its_progress_never_makes_it_step_back(
    world: World, tmp_path: Path
) -> None:
    # Two fetchers, 8 slices (most of them one empty page). The first page's progress is
    # held up (a slow terminal, a thread switch) until the other fetcher has stored two more
    # pages: the progress of page 2 was told first, then that of page 1 (pages 2, 1, ...:
    # the bar stepped back).
    lo, until = world.window
    since = lo - timedelta(minutes=10)
    _, client = world.api(FakeTime(until.timestamp() + 3600))
    journal = CountingJournal(Journal(tmp_path))
    seen: list[BackfillProgress] = []
    held = threading.Lock()
    first = [True]

    def progress(p: BackfillProgress) -> None:
        with held:
            mine, first[0] = first[0], False
        if mine:
            assert journal.wait_for(3)  # the other fetcher went on
        seen.append(p)

    args: dict[str, Any] = dict(since=since, until=until, slices=2, page_size=10)
    try:
        report = backfill(tmp_path, client=client, journal=journal, progress=progress, **args)
    finally:
        journal.close()
    assert [p.pages for p in seen] == list(range(1, report.pages + 1))  # each page, in order
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions)
    assert seen[-1].fraction == 1.0
    assert_lake_is_exactly_the_history(tmp_path, world)


@pytest.mark.parametrize(
    ("since", "message"), [("99999999d", "before 1970"), ("0001-01-01", "before 1970")]
)
def test_a_since_before_1970_is_a_config_error(
    world: World, tmp_path: Path, since: str, message: str
) -> None:
    _, client = world.api(FakeTime(2_000_000_000))
    with pytest.raises(ConfigError, match=message):
        backfill(tmp_path, client=client, since=since)
    assert not (tmp_path / "_state").exists()


def test_kill_between_journal_commit_and_checkpoint_leaves_no_duplicate(
    world: World, tmp_path: Path
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t)
    saved: dict[str, str] = {}

    def progress(p: BackfillProgress) -> None:
        path = next((tmp_path / "_state" / "backfill").glob("*.json"))
        if p.pages == 4:
            saved["path"], saved["text"] = str(path), path.read_text()
        if p.pages == 8:
            raise Killed

    with pytest.raises(Killed):
        backfill(tmp_path, client=client, since=since, until=until, slices=2, page_size=10,
                 progress=progress)  # fmt: skip
    # Pages 5-8 were committed to the journal, but their checkpoints are "lost".
    Path(saved["path"]).write_text(saved["text"])
    report = backfill(tmp_path, client=client, since=since, until=until, slices=2, page_size=10)
    assert report.resumed
    assert report.events_duplicate > 0  # the re-fetched pages' events were already journaled
    assert_lake_is_exactly_the_history(tmp_path, world)


def test_backfill_in_one_go_single_slice_and_a_rerun_adds_no_event(
    world: World, tmp_path: Path
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t)
    report = backfill(tmp_path, client=client, since=since, until=until, slices=1, now=t.clock)
    assert not report.resumed
    assert report.rows == len(world.emu.store.deliveries)
    assert report.events_new == len(world.history_keys)
    assert report.flushed_events == report.events_new
    assert_lake_is_exactly_the_history(tmp_path, world)
    t.sleep(3600)  # a later run: its rows are fetched at another time
    again = backfill(tmp_path, client=client, since=since, until=until, slices=4, now=t.clock)
    assert again.events_new == 0
    assert again.rows == report.rows
    # the same deliveries fetched again are one row each, in every reader and once compacted
    assert_lake_is_exactly_the_history(tmp_path, world)
    lake = Lake(tmp_path)
    assert lake.sql("SELECT count(*) FROM deliveries").fetchall() == [(report.rows,)]
    lake.compact()
    assert_lake_is_exactly_the_history(tmp_path, world)
    raw = pl.scan_parquet(tmp_path / "deliveries" / "**" / "*.parquet").collect()
    assert raw.height == report.rows


def test_a_range_under_a_minute_is_one_slice(world: World, tmp_path: Path) -> None:
    # Slices read 2 s past their ends (the API's precision is unknown): cut finer than a
    # minute, the world's few seconds would be read by every slice. Slice edges inside the
    # range: test_a_history_that_compares_whole_seconds_loses_no_row_at_slice_edges.
    lo, hi = world.span
    t = FakeTime(hi + 3600)
    _, client = world.api(t)
    since, until = dt(lo - 0.001), dt(hi + 0.002)
    assert until - since < timedelta(minutes=1)
    report = backfill(tmp_path, client=client, since=since, until=until, slices=7, page_size=7,
                      now=t.clock)  # fmt: skip
    assert report.slices == 1
    assert report.pages == len(world.emu.store.deliveries) // 7 + 1
    assert_lake_is_exactly_the_history(tmp_path, world)


def test_history_without_payload_stores_delivery_rows_only(world: World, tmp_path: Path) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t, transport_wrapper=StripPayload)
    report = backfill(tmp_path, client=client, since=since, until=until)
    assert report.rows_without_payload == report.rows == len(world.emu.store.deliveries)
    events, deliveries = lake_frames(tmp_path)
    assert events.height == 0
    assert deliveries.height == report.rows
    assert deliveries["n_events"].null_count() == deliveries.height


def _backfill_one_page(root: Path, rows: list[dict[str, Any]], **kw: Any) -> BackfillReport:
    """Backfill 2026-05-01 from a history of one page holding ``rows`` (every slice is sent
    that page)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": rows, "has_more": False, "next_cursor": None})

    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(handler))
    return backfill(root, client=client, since="2026-05-01", until="2026-05-02", **kw)


def test_history_rows_without_attempt_are_one_row_per_delivery_the_last_fetched(
    world: World, tmp_path: Path
) -> None:
    # kirim-api.md §7.4 documents no "attempt" in a delivery row. Without it, the lake kept
    # every fetch of a delivery whose status changed: a rerun over the same range left the
    # "pending" row of the first run next to the "succeeded" one, counted twice by outcome.
    since, until = world.window
    row = world.emu.store.deliveries[3]
    final = row.status, row.response_status_code
    assert final[0] != "pending"
    row.status, row.response_status_code = "pending", None  # under way at the first run
    try:
        for run in (1, 2):
            t = FakeTime(until.timestamp() + 3600 * run)
            _, client = world.api(t, transport_wrapper=lambda app: StripPayload(app, "attempt"))
            backfill(tmp_path, client=client, since=since, until=until, now=t.clock)
            row.status, row.response_status_code = final  # its outcome came meanwhile
    finally:
        row.status, row.response_status_code = final
    _, deliveries = lake_frames(tmp_path)
    assert deliveries["attempt"].null_count() == deliveries.height  # the field was gone
    assert sorted(deliveries["delivery_id"]) == sorted(r.id for r in world.emu.store.deliveries)
    mine = deliveries.filter(pl.col("delivery_id") == row.id)
    assert mine["outcome"].to_list() == [final[0]]


def test_a_history_row_not_attempted_yet_is_one_row_with_its_first_attempt_fetched_later(
    world: World, tmp_path: Path
) -> None:
    # A delivery waiting for its first attempt showed "attempt": 0 (kirim-api.md §7.4: 1-8);
    # the lake kept that fetch as an attempt of its own, next to attempt 1 fetched by a later
    # run: two rows for one attempt, "pending" and "succeeded", counted twice by outcome.
    since, until = world.window
    row = next(r for r in world.emu.store.deliveries if r.attempt == 1)
    final = row.status, row.response_status_code, row.attempt
    row.status, row.response_status_code, row.attempt = "pending", None, 0  # not yet sent
    try:
        for run in (1, 2):
            t = FakeTime(until.timestamp() + 3600 * run)
            _, client = world.api(t)
            backfill(tmp_path, client=client, since=since, until=until, now=t.clock)
            if run == 1:
                mine = lake_frames(tmp_path)[1].filter(pl.col("delivery_id") == row.id)
                assert mine.select("attempt", "outcome").rows() == [(None, "pending")]
            row.status, row.response_status_code, row.attempt = final  # attempted meanwhile
    finally:
        row.status, row.response_status_code, row.attempt = final
    lake = Lake(tmp_path)
    mine = lake.deliveries().collect().filter(pl.col("delivery_id") == row.id)
    assert mine.select("attempt", "outcome").rows() == [(1, final[0])]
    query = "SELECT attempt, outcome FROM deliveries WHERE delivery_id = ?"
    assert lake.sql(query.replace("?", f"'{row.id}'")).fetchall() == [(1, final[0])]
    assert sorted(lake_frames(tmp_path)[1]["delivery_id"]) == sorted(
        r.id for r in world.emu.store.deliveries
    )


def test_odd_valid_json_in_the_history_never_stops_a_backfill(tmp_path: Path) -> None:
    """Valid JSON the parser did not foresee is kept (whole, or in quarantine): a run that
    stopped on it would stop again on every resume."""
    odd_meta = ('{"object":"whatsapp_business_account","entry":[{"id":"1","changes":'
                '[{"field":"messages","value":{"statuses":5}}]}]}')  # fmt: skip
    deep = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    rows = [
        {"id": "wbd_a", "status": "dead", "event_id": "wamid.X", "payload": odd_meta,
         "created_at": "2026-05-01T10:00:01Z"},
        {"id": "wbd_b", "status": "dead", "event_id": "evt_2", "payload": deep,
         "created_at": "2026-05-01T10:00:02Z"},
    ]  # fmt: skip
    report = _backfill_one_page(tmp_path, rows)
    assert (report.rows, report.events_new, report.quarantined) == (2, 1, 1)
    events, deliveries = lake_frames(tmp_path)
    assert events["type"].to_list() == ["meta.other"]
    bad = deliveries.filter(deliveries["delivery_id"] == "wbd_b")
    assert bad["reason"].to_list() == ["quarantined: invalid_json"]
    (kept,) = (tmp_path / "quarantine").rglob("*.body")
    assert kept.read_bytes() == deep.encode()


# past what Python's JSON decoder reads, under any recursion limit a test run may have
# raised (at 5000 deep the test failed after others in one run)
_DEEP = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


class TooDeep(RewriteAnswers):
    """ASGI middleware over the emulator: its history pages carry the first row's
    ``payload`` as a JSON object nested too deeply to decode (``where="page"``; kirim-api.md
    §7.4 allows an object), or its first history request is answered 503 with such a body
    (``where="error"``, a proxy's, say)."""

    def __init__(self, app: Any, where: str) -> None:
        super().__init__(app)
        self.where, self.errors = where, 0

    def wants(self, scope: Any) -> bool:
        return scope.get("path") == "/v1/webhook_deliveries"

    def rewrite(self, doc: Any) -> bytes:
        if doc.get("data"):
            doc["data"][0]["payload"] = "DEEP"
        return json.dumps(doc).encode().replace(b'"DEEP"', _DEEP, 1)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.where == "error" and self.wants(scope):
            self.errors += 1
            if self.errors > 1:
                await self.app(scope, receive, send)
                return
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": _DEEP})
            return
        await super().__call__(scope, receive, send)


def test_a_history_page_nested_too_deeply_is_a_clear_error_not_a_recursion_error(
    world: World, tmp_path: Path
) -> None:
    # The decoder's RecursionError was no ApiError: the run ended in a traceback at that
    # page, and again at every resume.
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t, transport_wrapper=lambda app: TooDeep(app, "page"))
    with pytest.raises(PermanentApiError, match="nested too deeply to read"):
        backfill(tmp_path, client=client, since=since, until=until, slices=1, now=t.clock)


def test_a_5xx_whose_body_is_nested_too_deeply_is_retried_as_any_5xx(
    world: World, tmp_path: Path
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp())
    transport, client = world.api(t, transport_wrapper=lambda app: TooDeep(app, "error"))
    report = backfill(tmp_path, client=client, since=since, until=until, now=t.clock)
    assert transport.statuses[503] == 1
    assert report.retries == 1
    assert_lake_is_exactly_the_history(tmp_path, world)


class BusyOnce:
    """ASGI middleware over the emulator: its first history request is answered 429 with
    ``Retry-After`` 30 s ahead as an HTTP-date in ``form`` (RFC 9110 §5.6.7: a recipient
    must read the asctime one, in UTC, as well as IMF-fixdate; RFC 5322's ``-0000`` zone
    is UTC too), and the answer's ``Date`` as IMF-fixdate."""

    def __init__(self, app: Any, clock: Any, form: str) -> None:
        self.app, self.clock, self.form, self.busy = app, clock, form, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("path") != "/v1/webhook_deliveries" or self.busy:
            await self.app(scope, receive, send)
            return
        self.busy += 1
        now = int(self.clock())
        later = time.gmtime(now + 30)
        if self.form == "asctime":
            when = time.asctime(later)
        else:
            when = time.strftime("%a, %d %b %Y %H:%M:%S -0000", later)
        error = {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "x"}
        headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", when.encode()),
            (b"date", formatdate(now, usegmt=True).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})


@pytest.fixture(params=["America/New_York", "Asia/Jakarta"])
def in_zone(request: pytest.FixtureRequest) -> Iterator[None]:
    with local_zone(request.param):
        yield


@pytest.mark.usefixtures("in_zone")
@pytest.mark.parametrize("form", ["asctime", "-0000"])
def test_a_retry_after_date_without_gmt_is_utc_whatever_the_local_zone(
    world: World, tmp_path: Path, form: str
) -> None:
    # Both dates parse without a zone, and were read as the machine's local time: west of
    # UTC a 30 s wait became hours (RateLimitTooLong stopped the run), east of it none.
    since, until = world.window
    t = FakeTime(until.timestamp())
    started = t.clock()
    _, client = world.api(t, transport_wrapper=lambda app: BusyOnce(app, t.clock, form))
    report = backfill(tmp_path, client=client, since=since, until=until, slices=1, now=t.clock)
    assert report.retries == 1
    assert 30 <= t.clock() - started < 60  # the wait Kirim asked for, not hours, not none
    assert_lake_is_exactly_the_history(tmp_path, world)


class LimitTurns:
    """ASGI middleware over the emulator: from its ``after``-th answer on, the emulator's
    ``X-RateLimit-Limit`` is replaced by ``limit`` (a plan cut to a tiny custom limit, or
    a header that contradicts the others)."""

    def __init__(self, app: Any, limit: str, after: int) -> None:
        self.app, self.limit, self.after, self.seen = app, limit.encode(), after, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen += 1
        if scope.get("type") != "http" or self.seen < self.after:
            await self.app(scope, receive, send)
            return

        async def relabel(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message["headers"] if k != b"x-ratelimit-limit"]
                message = {**message, "headers": [*headers, (b"x-ratelimit-limit", self.limit)]}
            await send(message)

        await self.app(scope, receive, relabel)


class DayAtMost(FakeTime):
    """Fake time that refuses to be slept past a day: a pacing that never lets a request go
    again fails the test instead of looping for ever."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.start = start

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.now - self.start > 86400:
            raise RuntimeError("the client waited over a day for its next request")


@pytest.mark.parametrize("limit", ["1", "-5"])
def test_a_rate_limit_below_two_requests_never_stops_the_pacing_for_good(
    world: World, tmp_path: Path, limit: str
) -> None:
    # With a rate learnt from earlier answers, the local bucket was capped at Limit, and a
    # request needs 1 token plus 1 kept in reserve: under a Limit of 1 (or a nonsense
    # negative one) no request could go again, and the backfill slept on for ever, silently.
    since, until = world.window
    t = DayAtMost(until.timestamp())
    _, client = world.api(
        t, read_limit=20, transport_wrapper=lambda app: LimitTurns(app, limit, after=8)
    )
    backfill(tmp_path, client=client, since=since, until=until, slices=1, page_size=20,
             now=t.clock)  # fmt: skip
    assert client.limiter._buckets["read"].rate  # paced by a rate, as it was when it hung
    assert_lake_is_exactly_the_history(tmp_path, world)


class Misencoded:
    """ASGI middleware over the emulator: its first ``times`` history answers say
    ``Content-Encoding: gzip`` over their plain JSON (a misconfigured proxy), so that no
    client can decode them."""

    def __init__(self, app: Any, times: int) -> None:
        self.app, self.times = app, times

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("path") != "/v1/webhook_deliveries" or self.times <= 0:
            await self.app(scope, receive, send)
            return
        self.times -= 1

        async def mislabel(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [*message["headers"], (b"content-encoding", b"gzip")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, mislabel)


def test_an_answer_that_cannot_be_decoded_is_retried_then_a_clear_error(
    world: World, tmp_path: Path
) -> None:
    # httpx's DecodingError is no TransportError: it went past the client's retries and
    # error tree, and the CLI printed a traceback.
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t, transport_wrapper=lambda app: Misencoded(app, 1))
    report = backfill(tmp_path, client=client, since=since, until=until, slices=1, now=t.clock)
    assert report.retries == 1
    assert_lake_is_exactly_the_history(tmp_path, world)
    _, client = world.api(t, transport_wrapper=lambda app: Misencoded(app, 1000))
    with pytest.raises(RetryableApiError, match="DecodingError"):
        backfill(tmp_path / "again", client=client, since=since, until=until, now=t.clock)


class SurrogateCursor(RewriteAnswers):
    """ASGI middleware over the emulator: the next cursor of its first ``times`` history
    pages holds an escaped lone UTF-16 surrogate (valid JSON, no Unicode text: no URL can
    carry it)."""

    def __init__(self, app: Any, times: int) -> None:
        super().__init__(app)
        self.times = times

    def wants(self, scope: Any) -> bool:
        return scope.get("path") == "/v1/webhook_deliveries" and self.times > 0

    def rewrite(self, doc: Any) -> bytes:
        if doc["next_cursor"]:
            self.times -= 1
            doc["next_cursor"] += "\ud800"
        return json.dumps(doc).encode()  # ensure_ascii: the surrogate as "\\ud800"


def test_a_next_cursor_no_url_can_carry_is_asked_again_then_a_clear_error(
    world: World, tmp_path: Path
) -> None:
    # httpx raised UnicodeEncodeError building the next request: a traceback, after the
    # checkpoint had saved the cursor, so at every resume too.
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t, transport_wrapper=lambda app: SurrogateCursor(app, 1))
    backfill(tmp_path, client=client, since=since, until=until, slices=1, page_size=10,
             now=t.clock)  # fmt: skip
    assert_lake_is_exactly_the_history(tmp_path, world)  # the page asked again was whole
    _, client = world.api(t, transport_wrapper=lambda app: SurrogateCursor(app, 1000))
    with pytest.raises(PermanentApiError, match="next_cursor is no Unicode text"):
        backfill(tmp_path / "again", client=client, since=since, until=until, now=t.clock)


class NoHasMore(RewriteAnswers):
    """ASGI middleware over the emulator: its history pages leave out ``has_more`` (the
    client allows it) and end with an empty ``next_cursor`` instead of null, as some APIs
    say "no more" (Slack's ``next_cursor: ""``)."""

    def wants(self, scope: Any) -> bool:
        return scope.get("path") == "/v1/webhook_deliveries"

    def rewrite(self, doc: Any) -> bytes:
        del doc["has_more"]
        doc["next_cursor"] = doc["next_cursor"] or ""
        return json.dumps(doc).encode()


def test_pages_without_has_more_end_at_an_empty_next_cursor(world: World, tmp_path: Path) -> None:
    # Without has_more, any cursor but null meant "more": the last page of every walk was
    # refused ("says has_more but gives no next_cursor"), and no backfill could finish.
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t, transport_wrapper=NoHasMore)
    backfill(tmp_path, client=client, since=since, until=until, page_size=20, now=t.clock)
    assert_lake_is_exactly_the_history(tmp_path, world)


def test_history_rows_name_the_type_as_the_lake_does(tmp_path: Path) -> None:
    rows = [
        {"id": "wbd_a", "status": "dead", "event_id": "wamid.X", "created_at":
         "2026-05-01T10:00:01Z", "event_type": "message.status_updated"},
    ]  # fmt: skip
    _backfill_one_page(tmp_path, rows)
    _, deliveries = lake_frames(tmp_path)
    assert deliveries["event_type"].to_list() == ["message.status"]


def test_payload_object_is_kept_inexact_and_garbage_is_quarantined(tmp_path: Path) -> None:
    body = {"id": "evt_01", "type": "contact.updated", "created_at": "2026-05-01T10:00:00Z",
            "data": {"contact": {"id": "ctc_1"}}}  # fmt: skip
    rows = [
        {"id": "wbd_a", "status": "succeeded", "event_id": "evt_01", "payload": body,
         "created_at": "2026-05-01T10:00:01Z", "attempts": 2},
        {"id": "wbd_b", "status": "dead", "event_id": "evt_02", "payload": "{not json",
         "created_at": "2026-05-01T10:00:02Z"},
    ]  # fmt: skip
    report = _backfill_one_page(tmp_path, rows)
    assert (report.rows, report.events_new, report.quarantined) == (2, 1, 1)
    events, deliveries = lake_frames(tmp_path)
    assert events["payload_exact"].to_list() == [False]
    assert events["event_key"].to_list() == ["evt_01"]
    bad = deliveries.filter(deliveries["delivery_id"] == "wbd_b")
    assert bad["reason"].to_list() == ["quarantined: invalid_json"]
    quarantined = list((tmp_path / "quarantine").rglob("*.body"))
    assert [p.read_bytes() for p in quarantined] == [b"{not json"]
    good = deliveries.filter(deliveries["delivery_id"] == "wbd_a")
    assert good["attempt"].to_list() == [2]


def test_lone_surrogate_escapes_in_a_history_row_never_stop_a_backfill(tmp_path: Path) -> None:
    """Valid JSON may escape half a UTF-16 pair: in an id it failed every journal write of
    the page ("journal write failed", again at each resume); in a payload it raised a
    UnicodeEncodeError. The ids are kept escaped, a payload string is quarantined, and a
    payload object keeps its escape."""
    body = ('{"id":"evt_2","type":"contact.updated","created_at":"2026-05-01T10:00:00Z",'
            '"data":{}}')  # fmt: skip
    as_object = {**json.loads(body), "id": "evt_3", "data": {"note": "\ud800"}}
    rows = [
        {"id": "wbd_\ud800", "status": "dead", "event_id": "evt_\udc00", "error": "x\ud800",
         "created_at": "2026-05-01T10:00:01Z"},
        {"id": "wbd_b", "status": "dead", "event_id": "evt_2",
         "payload": body.replace("{}", '{"note":"\ud800"}'), "created_at": "2026-05-01T10:00:02Z"},
        {"id": "wbd_c", "status": "dead", "event_id": "evt_3", "payload": as_object,
         "created_at": "2026-05-01T10:00:03Z"},
    ]  # fmt: skip
    page = json.dumps({"data": rows, "has_more": False, "next_cursor": None}).encode()
    assert b"\\ud800" in page  # the escape, as JSON writes it

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=page, headers={"content-type": "application/json"})

    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(handler))
    report = backfill(tmp_path, client=client, since="2026-05-01", until="2026-05-02")
    assert (report.rows, report.events_new, report.quarantined) == (3, 1, 1)
    events, deliveries = lake_frames(tmp_path)
    assert events["event_key"].to_list() == ["evt_3"]
    assert json.loads(events["payload"][0])["data"] == {"note": "\ud800"}
    assert sorted(deliveries["delivery_id"].to_list()) == ["wbd_\\ud800", "wbd_b", "wbd_c"]
    bare = deliveries.filter(deliveries["delivery_id"] == "wbd_\\ud800")
    assert bare.select("event_id", "reason").row(0) == ("evt_\\udc00", "x\\ud800")
    (kept,) = (tmp_path / "quarantine").rglob("*.body")
    assert kept.read_bytes() == body.replace("{}", '{"note":"\ud800"}').encode(
        "utf-8", "surrogatepass"
    )


def test_numbers_beyond_the_lakes_columns_in_a_history_row_are_read_as_missing(
    tmp_path: Path,
) -> None:
    """3e9 reached the journal and then failed every flush (ArrowInvalid: the lake's columns
    are int32), so the journal never emptied; 1e999 raised OverflowError; 10**23 failed the
    journal write. At every resume again."""
    rows = [
        ("wbd_a", "3000000000", "2147483648"),
        ("wbd_b", "1e999", "-1e999"),
        ("wbd_c", "99999999999999999999999", "-2147483649"),
        ("wbd_d", "2", "200"),
    ]
    items = ",".join(
        f'{{"id":"{i}","status":"dead","event_id":"evt_{i}","created_at":"2026-05-01T10:00:0'
        f'{n}Z","attempt":{a},"response_status_code":{c}}}'
        for n, (i, a, c) in enumerate(rows)
    )
    page = f'{{"data":[{items}],"has_more":false,"next_cursor":null}}'.encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=page, headers={"content-type": "application/json"})

    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(handler))
    report = backfill(tmp_path, client=client, since="2026-05-01", until="2026-05-02")
    assert report.rows == 4
    _, deliveries = lake_frames(tmp_path)
    got = deliveries.sort("delivery_id").select("attempt", "response_status_code").rows()
    assert got == [(None, None), (None, None), (None, None), (2, 200)]
    with Journal(tmp_path) as journal:
        assert journal.backlog == 0
        assert journal.flush(Lake(tmp_path)).receipts == 0  # nothing left stuck


def test_a_backfill_into_a_lakes_own_folder_is_refused_before_writing(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        journal.flush(Lake(tmp_path))  # a lake known by its journal
    with pytest.raises(ConfigError, match="is inside the events/ folder of the lake at"):
        _backfill_one_page(tmp_path / "events", [])
    assert not (tmp_path / "events").exists()  # no checkpoint, journal or lake made there


def checkpoints(home: Path) -> list[Path]:
    """The checkpoints of unfinished runs (a finished run's are moved into done/)."""
    return sorted((home / "_state" / "backfill").glob("*.json"))


def test_a_run_refused_before_its_first_page_leaves_no_checkpoint(
    world: World, tmp_path: Path
) -> None:
    # A wrong key's 401 left a checkpoint named by that key: the right key names another,
    # so it was never resumed, nor removed (a page stored, and it is kept: the next tests)
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    transport, client = world.api(t)
    bad = KirimClient("http://kirim.test", "kdv_live_" + "B" * 24, transport=transport)
    with pytest.raises(AuthenticationError) as info:
        backfill(tmp_path, client=bad, since=since, until=until)
    assert info.value.status_code == 401
    assert info.value.request_id
    assert checkpoints(tmp_path) == []
    with Journal(tmp_path) as j:
        assert j.backlog == 0
    report = backfill(tmp_path, client=client, since=since, until=until)  # the right key
    assert not report.resumed
    assert checkpoints(tmp_path) == []  # none left behind
    assert_lake_is_exactly_the_history(tmp_path, world)


def test_a_resumed_run_refused_before_its_first_page_keeps_its_checkpoint(
    world: World, tmp_path: Path
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t)

    def stop(p: BackfillProgress) -> None:
        raise RuntimeError("stopped after a page")

    with pytest.raises(RuntimeError):
        backfill(tmp_path, client=client, since=since, until=until, progress=stop)
    (checkpoint,) = checkpoints(tmp_path)
    saved = checkpoint.read_text()
    # the same key, refused now (the emulator's own 401): the pages stored stay resumable
    _, refused = world.api(t, transport_wrapper=DropKey)
    with pytest.raises(AuthenticationError):
        backfill(tmp_path, client=refused, since=since, until=until)
    assert checkpoints(tmp_path) == [checkpoint]
    assert checkpoint.read_text() == saved
    assert backfill(tmp_path, client=client, since=since, until=until).resumed
    assert_lake_is_exactly_the_history(tmp_path, world)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slices": 0}, r"^slices must be 1 to 64, got 0$"),
        ({"slices": 65}, r"^slices must be 1 to 64, got 65$"),
        ({"page_size": 0}, r"^page_size must be 1 to 100 \(Kirim's limit\), got 0$"),
        ({"page_size": 101}, r"^page_size must be 1 to 100 \(Kirim's limit\), got 101$"),
    ],
)
def test_bad_sizes_are_config_errors_naming_the_argument(
    tmp_path: Path, kwargs: dict[str, int], message: str
) -> None:
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(lambda r: 1 / 0))
    with pytest.raises(ConfigError, match=message):
        backfill(tmp_path, client=client, since="1d", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("yesterday-ish", None, r"^since 'yesterday-ish' is not a time"),
        ("2026-05-02", "2026-05-01", r"^since \(2026-05-02T00:00:00Z\) must be before until"),
        ("2026-05-01", "2026-05-01", r"^since \(2026-05-01T00:00:00Z\) must be before until"),
        ("now", None, r"^since \(.*\) is not in the past"),  # an empty range is no range
        # not blamed on an until capped at now, which was not typed, or not as that time
        ("2099-01-01", "2099-02-01", r"^since \(2099-01-01T00:00:00Z\) is not in the past"),
        ("2099-01-01", None, r"^since \(2099-01-01T00:00:00Z\) is not in the past"),
        ("2026-05-01", "13 o'clock", r"^until \"13 o'clock\" is not a time"),
        ("2026-02-30", None, r"^since '2026-02-30' is not a time"),
    ],
)
def test_bad_times_are_clear_config_errors(
    tmp_path: Path, since: str, until: str | None, message: str
) -> None:
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(lambda r: 1 / 0))
    with pytest.raises(ConfigError, match=message):
        backfill(tmp_path, client=client, since=since, until=until)
    assert list(tmp_path.iterdir()) == []  # nothing made: no checkpoint, no lock, no folder


def test_resume_after_copying_the_folder_keeps_working(world: World, tmp_path: Path) -> None:
    # The checkpoint is plain versioned JSON inside the data folder: moving the folder is fine.
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t)

    def stop(p: BackfillProgress) -> None:
        if p.pages == 3:
            raise Killed

    first = tmp_path / "a"
    with pytest.raises(Killed):
        backfill(first, client=client, since=since, until=until, slices=2, page_size=20,
                 progress=stop)  # fmt: skip
    moved = tmp_path / "b"
    shutil.copytree(first, moved)
    report = backfill(moved, client=client, since=since, until=until, slices=2, page_size=20)
    assert report.resumed
    assert_lake_is_exactly_the_history(moved, world)


def _killed_run(
    world: World, home: Path, client: KirimClient, *, pages: int = 3, slices: int = 2,
    page_size: int = 20,
) -> Path:  # fmt: skip
    """Start a backfill of the world's window, die after ``pages`` pages; its checkpoint."""
    since, until = world.window

    def stop(p: BackfillProgress) -> None:
        if p.pages == pages:
            raise Killed

    with pytest.raises(Killed):
        backfill(home, client=client, since=since, until=until, slices=slices,
                 page_size=page_size, progress=stop)  # fmt: skip
    return next((home / "_state" / "backfill").glob("*.json"))


def test_a_checkpoint_of_another_kirim_or_key_is_not_resumed(world: World, tmp_path: Path) -> None:
    # A run killed against one Kirim (staging) and started again against another: the slices
    # done at the first would have been skipped at the second, and its history lost.
    t = FakeTime(world.window[1].timestamp() + 3600)
    transport, client = world.api(t)
    _killed_run(world, tmp_path, client)
    since, until = world.window
    other = KirimClient("http://other-kirim.test", world.emu.api_keys[0], transport=transport,
                        sleep=t.sleep, clock=t.clock)  # fmt: skip
    assert other.account != client.account
    assert world.emu.api_keys[0].reveal() not in other.account
    report = backfill(tmp_path, client=other, since=since, until=until, slices=2, page_size=20)
    assert not report.resumed
    assert_lake_is_exactly_the_history(tmp_path, world)
    # the first account's run is still there to resume
    assert backfill(tmp_path, client=client, since=since, until=until, slices=2).resumed


def test_a_second_backfill_of_the_same_range_is_refused_while_one_runs(
    world: World, tmp_path: Path
) -> None:
    # Two runs wrote the one checkpoint through one temporary name: one failed on a rename,
    # and interleaved writes could leave a checkpoint no run could read.
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t)
    _, client2 = world.api(t)
    refused: list[StorageError] = []
    locks = tmp_path / "_state" / "backfill"

    def start_another(p: BackfillProgress) -> None:
        if p.pages == 1:
            assert len(list(locks.glob("*.lock"))) == 1
            with pytest.raises(StorageError, match="another backfill of this range") as info:
                backfill(tmp_path, client=client2, since=since, until=until, page_size=20)
            refused.append(info.value)

    report = backfill(tmp_path, client=client, since=since, until=until, page_size=20,
                      progress=start_another)  # fmt: skip
    assert len(refused) == 1
    assert not report.resumed
    assert_lake_is_exactly_the_history(tmp_path, world)
    # the run's lock file went with it (one was left per range asked, for ever)
    assert not list(locks.glob("*.lock"))
    # once the first run ended, the same range runs again (a new run, nothing to add), and
    # it still excludes another while it runs, though the file it locks is a new one
    again = backfill(tmp_path, client=client2, since=since, until=until, page_size=20,
                     progress=start_another)  # fmt: skip
    assert again.events_new == 0
    assert len(refused) == 2
    assert not list(locks.glob("*.lock"))
    # nor does a run that failed (a Ctrl-C ends it the same way) leave one
    with pytest.raises(RuntimeError, match="failed"):
        backfill(tmp_path, client=client, since=since, until=until, progress=_fail)
    assert not list(locks.glob("*.lock"))


def _fail(p: BackfillProgress) -> None:
    raise RuntimeError("failed after a page")


DAMAGE: dict[str, Any] = {
    "null": lambda state: None,
    "a list": lambda state: [],
    "no slices": lambda state: {"version": state["version"]},
    "empty slices": lambda state: {**state, "slices": []},
    "a slice without times": lambda state: {**state, "slices": [{"after": "x"}]},
    "an until that is no time": lambda state: {**state, "until": "not a time"},
    "an unknown slice field": lambda state: {
        **state,
        "slices": [{**state["slices"][0], "surprise": 1}, *state["slices"][1:]],
    },
    "filters that are no object": lambda state: {**state, "filters": None},
    "a filter that is no text": lambda state: {**state, "filters": {"status": 5}},
    "a filter no run asks": lambda state: {**state, "filters": {"limit": "5"}},
    "a page count that is no number": lambda state: {
        **state,
        "slices": [{**state["slices"][0], "pages": "x"}, *state["slices"][1:]],
    },
    "a cursor that is no text": lambda state: {
        **state,
        "slices": [{**state["slices"][0], "cursor": 5}, *state["slices"][1:]],
    },
}


@pytest.mark.parametrize("damage", [*sorted(DAMAGE), "cut short"])
def test_a_damaged_checkpoint_is_one_clear_error(world: World, tmp_path: Path, damage: str) -> None:
    # valid JSON of the wrong shape gave AttributeError, KeyError, TypeError, AssertionError
    # or ValueError tracebacks instead of the one-line error a damaged file gets
    t = FakeTime(world.window[1].timestamp() + 3600)
    _, client = world.api(t)
    checkpoint = _killed_run(world, tmp_path, client)
    if damage == "cut short":  # not JSON at all: it named no remedy
        text = checkpoint.read_text()[:-7]
    else:
        text = json.dumps(DAMAGE[damage](json.loads(checkpoint.read_text())))
    checkpoint.write_text(text)
    since, until = world.window
    with pytest.raises(StorageError, match=r"is damaged( \(.*\))?; delete it"):
        backfill(tmp_path, client=client, since=since, until=until, slices=2)
    checkpoint.unlink()  # as the message says: the run then starts afresh
    backfill(tmp_path, client=client, since=since, until=until, slices=2)
    assert_lake_is_exactly_the_history(tmp_path, world)


class CursorGone:
    """ASGI middleware: a tampered cursor gets a 410 ``cursor_expired``, another way a Kirim
    might refuse an expired cursor (only ``400 invalid_cursor`` is documented)."""

    code = "cursor_expired"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and b"cursor=tampered" in scope.get("query_string", b""):
            error = {"type": "invalid_request_error", "code": self.code, "message": "x"}
            body = json.dumps({"error": error}).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 410, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class PlainGone(CursorGone):
    """A 410 whose error code does not name the cursor."""

    code = "gone"


@pytest.mark.parametrize(("refusal", "status"), [(None, 400), (CursorGone, 410), (PlainGone, 410)])
def test_a_cursor_kirim_refuses_restarts_the_slice_above_what_is_stored(
    world: World, tmp_path: Path, refusal: Any, status: int
) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    transport, client = world.api(t, transport_wrapper=refusal)
    path = _killed_run(world, tmp_path, client, pages=5, slices=1, page_size=10)
    state = json.loads(path.read_text())
    for s in state["slices"]:
        if s["cursor"]:
            s["cursor"] = "tampered" + s["cursor"]
    path.write_text(json.dumps(state))
    report = backfill(tmp_path, client=client, since=since, until=until, slices=1, page_size=10)
    assert report.resumed
    assert transport.statuses[status] >= 1  # Kirim refused the cursor
    done = json.loads(next((tmp_path / "_state" / "backfill" / "done").glob("*.json")).read_text())
    assert sum(s["restarts"] for s in done["slices"]) >= 1
    assert_lake_is_exactly_the_history(tmp_path, world)


class QuirkyHistory:
    """A history API with the quirks a real Kirim may have (kirim-api.md leaves them open):
    ``seconds``: filters rounded to whole seconds and rows compared by their whole second,
    both ends exclusive; ``ignore_filters``: every row whatever the range (True), or one of
    ``created_after`` and ``created_before`` ignored (a tuple naming it); ``refuse_every``:
    every n-th request with a cursor gets 400 invalid_cursor; ``order``: ``newest first`` (the
    default, what kirim-api.md §7.3 assumes), ``oldest first`` or ``shuffled``. Pages by
    offset."""

    def __init__(self, rows: list[dict[str, Any]], **quirks: Any) -> None:
        order = quirks.get("order", "newest first")
        self.rows = sorted(rows, key=lambda r: str(r["id"]), reverse=order == "newest first")
        if order == "shuffled":
            random.Random(7).shuffle(self.rows)
        self.quirks = quirks
        self.with_cursor = 0

    def times(self, row: dict[str, Any]) -> datetime:
        when = parse_time(row.get("_filed_at", row["created_at"]))  # its time as Kirim knows it
        assert when is not None
        return when

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/webhook_subscriptions"):
            # read once after the walk: none to show (no disabled one to warn about)
            return httpx.Response(200, json={"data": [], "has_more": False})
        q = request.url.params
        rows = self.rows
        ignored = self.quirks.get("ignore_filters") or ()
        if ignored is True:
            ignored = ("created_after", "created_before")
        if len(ignored) == 1:  # one of the two filters ignored, the other applied
            lo, hi = parse_time(q.get("created_after")), parse_time(q.get("created_before"))
            assert lo is not None
            assert hi is not None
            if "created_after" in ignored:
                rows = [r for r in rows if self.times(r) < hi]
            else:
                rows = [r for r in rows if lo <= self.times(r)]
        elif not ignored:
            lo, hi = parse_time(q.get("created_after")), parse_time(q.get("created_before"))
            assert lo is not None
            assert hi is not None
            if self.quirks.get("seconds"):
                lo, hi = (t.replace(microsecond=0) + timedelta(seconds=t.microsecond >= 500_000)
                          for t in (lo, hi))  # fmt: skip
                rows = [r for r in rows if lo < self.times(r).replace(microsecond=0) < hi]
            else:
                rows = [r for r in rows if lo <= self.times(r) < hi]
        offset = int(q.get("cursor", "0"))
        if "cursor" in q:
            self.with_cursor += 1
            every = self.quirks.get("refuse_every")
            if every and self.with_cursor % every == 0:
                error = {"type": "invalid_request_error", "code": "invalid_cursor", "message": "x"}
                return httpx.Response(400, json={"error": error})
        limit = int(q.get("limit", "100"))
        page = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        cursor = str(offset + limit) if more else None
        body = {"data": page, "has_more": more, "next_cursor": cursor}
        return httpx.Response(200, json=body)

    def backfill(self, root: Path, **kwargs: Any) -> BackfillReport:
        client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(self.handler),
                             sleep=lambda s: None)  # fmt: skip
        return backfill(root, client=client, since="2026-05-01T10:00:00Z",
                        until="2026-05-01T11:00:00Z", **kwargs)  # fmt: skip


def history_row(i: int, created_at: Any) -> dict[str, Any]:
    payload = {"id": f"evt_{i:05d}", "type": "contact.updated", "data": {}}
    return {"id": f"wbd_{i:05d}", "status": "succeeded", "event_id": f"evt_{i:05d}",
            "event_type": "contact.updated", "attempt": 1, "created_at": created_at,
            "payload": json.dumps(payload)}  # fmt: skip


def test_a_history_that_compares_whole_seconds_loses_no_row_at_slice_edges(
    tmp_path: Path,
) -> None:
    # 4 slices x 4 pieces cut the hour every 225 s: rows in each edge's second, and between
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    seconds = sorted({*range(0, 3600, 7), *range(0, 3600, 225)})
    rows = [history_row(i, format_time(start + timedelta(seconds=s, milliseconds=250)))
            for i, s in enumerate(seconds)]  # fmt: skip
    report = QuirkyHistory(rows, seconds=True).backfill(tmp_path, slices=4, page_size=50)
    events, deliveries = lake_frames(tmp_path)
    assert sorted(deliveries["delivery_id"]) == sorted(r["id"] for r in rows)
    assert events.height == len(rows)
    assert report.rows == len(rows)
    # each slice reads only its own part and 2 s past each end, not the range again
    assert report.slices == 16
    assert report.pages <= len(rows) // 50 + 2 * report.slices


def _hour_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """100 rows in the first 100 s of the hour (the first slice's), and one at minute 40."""
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    early = [history_row(i, format_time(start + timedelta(seconds=i))) for i in range(100)]
    late = [history_row(100, format_time(start + timedelta(minutes=40)))]
    return early, late


def _stored_once(root: Path, rows: list[dict[str, Any]]) -> None:
    _, deliveries = lake_frames(root)
    assert sorted(deliveries["delivery_id"].to_list()) == sorted(r["id"] for r in rows)


@pytest.mark.parametrize("ignored", [("created_after",), ("created_before",)])
@pytest.mark.parametrize("order", ["newest first", "oldest first"])
def test_kirim_ignoring_one_time_filter_loses_no_row_to_the_one_walk(
    tmp_path: Path, order: str, ignored: tuple[str, ...]
) -> None:
    # Two fetchers, 8 slices; rows in the first slice, one at minute 40 and 30 at minute 50
    early, late = _hour_rows()
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    later = [
        history_row(300 + i, format_time(start + timedelta(minutes=50, seconds=i)))
        for i in range(30)
    ]
    quirky = QuirkyHistory([*early, *late, *later], ignore_filters=ignored, order=order)
    report = quirky.backfill(tmp_path, slices=2, page_size=10)
    _stored_once(tmp_path, [*early, *late, *later])
    assert report.notes[0] == TIME_FILTER_IGNORED


@pytest.mark.parametrize("order", ["newest first", "oldest first"])
def test_a_kirim_that_starts_ignoring_the_range_midway_loses_no_row(
    tmp_path: Path, order: str
) -> None:
    # Kirim applies the range while the first slice (one fetcher) reads its 100 rows, then
    # ignores it (a deploy, a mixed fleet) from the second slice's first page on. The one
    # walk must read the range itself: going on from the first slice's chain, read under the
    # range applied, lost the row at minute 40 (a handover tried and reverted at stop 34).
    early, late = _hour_rows()
    quirky = QuirkyHistory([*early, *late], order=order)
    plain = quirky.handler
    served = 0

    def flip(request: httpx.Request) -> httpx.Response:
        nonlocal served
        served += 1
        if served > 10:
            quirky.quirks["ignore_filters"] = True
        return plain(request)

    quirky.handler = flip  # type: ignore[method-assign]
    report = quirky.backfill(tmp_path, slices=1, page_size=10)
    assert report.notes == [TIME_FILTER_IGNORED]
    _stored_once(tmp_path, [*early, *late])


def test_rows_timed_in_milliseconds_or_not_at_all_are_kept_once(tmp_path: Path) -> None:
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    inside = [history_row(i, int((start + timedelta(minutes=i)).timestamp() * 1000) + 250)
              for i in range(30)]  # fmt: skip
    outside = [history_row(100 + i, int((start - timedelta(days=1)).timestamp() * 1000))
               for i in range(5)]  # fmt: skip
    untimed = [history_row(200 + i, t) for i, t in enumerate(["yesterday", None, "", {}])]
    quirky = QuirkyHistory([*inside, *outside, *untimed], ignore_filters=True)
    report = quirky.backfill(tmp_path, slices=4, page_size=7)
    _, deliveries = lake_frames(tmp_path)
    ids = deliveries["delivery_id"].to_list()
    assert sorted(ids) == sorted(r["id"] for r in [*inside, *untimed])  # each once
    assert report.rows_without_time == len(untimed)
    timed = deliveries.filter(pl.col("delivery_id").is_in([r["id"] for r in inside]))
    assert timed["created_at"].null_count() == 0
    assert timed["created_at"].min() == start + timedelta(milliseconds=250)


@pytest.mark.parametrize("order", ["newest first", "oldest first"])
def test_cursors_refused_now_and_then_do_not_end_a_long_walk_nor_skip_rows(
    tmp_path: Path, order: str
) -> None:
    """A new chain after a refused cursor skips what was read, in the order Kirim pages in:
    assuming newest first on an oldest-first history stored 120 rows of 600."""
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = [history_row(i, format_time(start + timedelta(seconds=i * 3))) for i in range(600)]
    quirky = QuirkyHistory(rows, refuse_every=3, order=order)
    report = quirky.backfill(tmp_path, slices=1, page_size=20)
    _, deliveries = lake_frames(tmp_path)
    assert sorted(set(deliveries["delivery_id"])) == sorted(r["id"] for r in rows)
    assert quirky.with_cursor >= 30  # it was refused ten times and more, with progress between
    assert len(rows) <= report.rows < 2 * len(rows)  # each new chain skipped what was read


def test_a_refused_cursor_on_a_history_in_no_time_order_fails_rather_than_skip_rows(
    tmp_path: Path,
) -> None:
    """No restart point is safe when the rows come in no time order: the slice is read
    again from the start, and a cursor refused every time ends the run with the error."""
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = [history_row(i, format_time(start + timedelta(seconds=i * 3))) for i in range(600)]
    quirky = QuirkyHistory(rows, refuse_every=3, order="shuffled")
    with pytest.raises(PermanentApiError, match="cursor"):
        quirky.backfill(tmp_path, slices=1, page_size=20)
    _, deliveries = lake_frames(tmp_path)
    assert 0 < deliveries.height < len(rows)  # what was read is kept, and nothing else
    assert set(deliveries["delivery_id"]) <= {r["id"] for r in rows}


def test_page_items_that_are_no_delivery_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [history_row(1, "2026-05-01T10:00:01Z"), None, 7, history_row(2, "2026-05-01T10:00:02Z")]
    report = _backfill_one_page(tmp_path, rows, slices=1)  # type: ignore[arg-type]
    # counted each time a page holding them is read: by the first of the 4 slices, whose
    # page showed rows hours outside it (a Kirim ignoring the range), then by the one walk
    # over the range that replaced the slices
    assert (report.rows, report.events_new, report.items_unreadable) == (2, 2, 2 * 2)
    assert report.notes[0] == TIME_FILTER_IGNORED
    _, deliveries = lake_frames(tmp_path)
    assert sorted(deliveries["delivery_id"]) == ["wbd_00001", "wbd_00002"]


def test_a_run_that_fails_midway_puts_what_it_stored_in_the_lake(tmp_path: Path) -> None:
    """Pages stored before an error sat in the journal, out of readers' sight, until some
    later run succeeded; then a rerun resumes after them."""
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = [history_row(i, format_time(start + timedelta(seconds=i * 3))) for i in range(100)]
    quirky = QuirkyHistory(rows)
    served = 0
    handler = quirky.handler

    def fails_on_the_fourth(request: httpx.Request) -> httpx.Response:
        nonlocal served
        served += 1
        if served == 4:
            error = {"type": "authentication_error", "code": "expired_api_key", "message": "x"}
            return httpx.Response(401, json={"error": error})
        return handler(request)

    quirky.handler = fails_on_the_fourth  # type: ignore[method-assign]
    with pytest.raises(AuthenticationError):
        quirky.backfill(tmp_path, slices=1, page_size=10)
    _, deliveries = lake_frames(tmp_path)
    assert deliveries.height == 30  # the three pages stored before the 401
    report = quirky.backfill(tmp_path, slices=1, page_size=10)  # the key works again
    assert report.resumed
    _, deliveries = lake_frames(tmp_path)
    assert sorted(deliveries["delivery_id"]) == sorted(r["id"] for r in rows)


def test_rows_shown_without_a_readable_time_are_kept_whichever_slice_is_sent_them(
    tmp_path: Path,
) -> None:
    """Kirim files a row by the time it knows, then may show that time in a form we cannot
    read: the row reaches the slice of its real time, not always the newest one."""
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = []
    for i in range(60):
        row = history_row(i, "Fri, 01 May 2026 10:05:00 GMT")
        row["_filed_at"] = format_time(start + timedelta(minutes=i))
        rows.append(row)
    report = QuirkyHistory(rows).backfill(tmp_path, slices=4, page_size=7)
    _, deliveries = lake_frames(tmp_path)
    assert sorted(deliveries["delivery_id"]) == sorted(r["id"] for r in rows)  # each once
    assert report.rows_without_time == 60


def _stopped_after_two_pages(root: Path) -> tuple[QuirkyHistory, list[dict[str, Any]]]:
    """A backfill of 50 rows (10 a page) into ``root`` asked to stop after two pages."""
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = [history_row(i, format_time(start + timedelta(seconds=i * 3))) for i in range(50)]
    quirky = QuirkyHistory(rows)
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(quirky.handler))

    def stop_after_two_pages(p: BackfillProgress) -> None:
        if p.pages == 2:
            client.interrupt()

    with pytest.raises(Interrupted):
        backfill(root, client=client, since="2026-05-01T10:00:00Z",
                 until="2026-05-01T11:00:00Z", slices=1, page_size=10,
                 progress=stop_after_two_pages)  # fmt: skip
    return quirky, rows


def test_a_run_asked_to_stop_stops_without_flushing(tmp_path: Path) -> None:
    """interrupt() means stop now: the pages stay in the journal (and the checkpoint says
    where to resume); a flush could take long."""
    _stopped_after_two_pages(tmp_path)
    assert not list((tmp_path / "events").rglob("*.parquet"))
    with Journal(tmp_path) as j:
        assert j.backlog == 20


def test_rows_without_a_time_or_an_id_are_kept_once_too(tmp_path: Path) -> None:
    rows = [history_row(i, None) for i in range(3)]
    for row in rows:
        row["id"] = None
    rows.append({**history_row(9, None), "id": ""})  # an empty id is no id either
    # the same event's replay: another row, though its event, status and payload agree
    rows.append({**rows[0], "replayed_from": "wbd_first", "response_status_code": 500})
    report = QuirkyHistory(rows, ignore_filters=True).backfill(tmp_path, slices=4, page_size=7)
    assert report.rows_without_time == 5  # each sent to all 16 slices, kept by one
    events, deliveries = lake_frames(tmp_path)
    assert events.height == 4  # the replay carries an event already stored
    assert deliveries.height == 5


def test_a_checkpoint_save_cut_short_by_a_kill_leaves_no_file_behind(tmp_path: Path) -> None:
    # A SIGKILL between writing the temporary file and renaming it left .<key>.json.<pid>.tmp
    # in _state/backfill/ for ever; the next run of that range removes it.
    rows = [history_row(1, "2026-05-01T10:00:01Z")]
    QuirkyHistory(rows).backfill(tmp_path, slices=1)
    state = tmp_path / "_state" / "backfill"
    (done,) = (state / "done").glob("*.json")
    key = done.stem.rsplit("-", 1)[0]
    stray = state / f".{key}.json.4242.tmp"
    stray.write_text("{")
    other = state / ".another-run.json.4242.tmp"  # another range's: not this run's to judge
    other.write_text("{")
    QuirkyHistory(rows).backfill(tmp_path, slices=1)
    assert not stray.exists()
    assert other.exists()


@pytest.mark.parametrize("order", ["newest first", "oldest first"])
def test_clock_skew_between_neighbouring_rows_does_not_hide_kirims_order(
    tmp_path: Path, order: str
) -> None:
    # Paged by delivery id, with neighbours' created_at 0.2 s the wrong way round: any
    # backward step made the order "unknown", so every refusal read the whole slice again
    # and the run failed where the code before finished.
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = [history_row(i, format_time(start + timedelta(seconds=i * 0.5 + 0.7 * (i % 2 == 0))))
            for i in range(600)]  # fmt: skip
    quirky = QuirkyHistory(rows, refuse_every=3, order=order)
    quirky.backfill(tmp_path, slices=1, page_size=20)
    _, deliveries = lake_frames(tmp_path)
    assert sorted(set(deliveries["delivery_id"])) == sorted(r["id"] for r in rows)
    assert quirky.with_cursor >= 30


def test_cursors_refused_while_nothing_of_the_slice_is_read_end_the_run(tmp_path: Path) -> None:
    # Every cursor refused, and the first pages hold only rows of the margin read below the
    # slice: each restart reset the bounds yet counted as progress, and the run restarted
    # for ever, calling Kirim.
    rows = [history_row(i, f"2026-05-01T09:59:59.{i}00Z") for i in range(9)]
    quirky = QuirkyHistory(rows, refuse_every=1, order="oldest first")
    with pytest.raises(PermanentApiError, match="cursor"):
        quirky.backfill(tmp_path, slices=1, page_size=3)
    assert quirky.with_cursor == 4  # three restarts that read nothing new, then the error


@pytest.mark.parametrize(
    ("spacing", "how"),
    [
        (30, "each new chain starts 2 s back from the rows stored, and none got further than"
             " that before its cursor was refused"),
        (10, "the rows read show no plain time order (too few of them, or going both ways), so"
             " each new chain read the stretch again from its start"),
    ],
)  # fmt: skip
def test_cursors_refused_too_often_end_in_an_error_saying_so_and_a_rerun_loses_nothing(
    tmp_path: Path, spacing: int, how: str
) -> None:
    # a row every 30 (10) ms, 20 a page, every second cursor refused: no chain gets past
    # the 2 s a new one reads back (or, with 0.4 s a chain, no order shows to restart by),
    # so the walk gives up. It said only Kirim's "x status=400 code=invalid_cursor".
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = [history_row(i, format_time(start + timedelta(milliseconds=i * spacing)))
            for i in range(1_000)]  # fmt: skip
    quirky = QuirkyHistory(rows, refuse_every=2)
    with pytest.raises(CursorRefused) as info:
        quirky.backfill(tmp_path, slices=1, page_size=20)
    message = str(info.value)
    assert message.startswith(
        "Kirim refused the cursor of the history's pages 4 times in a row without the walk"
        " getting further (created "
    )
    assert how in message
    assert "the rows read are kept" in message
    assert message.endswith("The last refusal: status=400 code=invalid_cursor")
    assert info.value.refusals >= 4
    assert isinstance(info.value.__cause__, PermanentApiError)
    _, stored = lake_frames(tmp_path)
    assert 0 < stored.height < len(rows)  # what was read is in the lake
    # the same run again, once Kirim keeps its cursors: resumed, and every row is stored
    del quirky.quirks["refuse_every"]
    report = quirky.backfill(tmp_path, slices=1, page_size=20)
    assert report.resumed
    _, deliveries = lake_frames(tmp_path)
    assert sorted(set(deliveries["delivery_id"])) == sorted(r["id"] for r in rows)
    events, _ = lake_frames(tmp_path)
    assert events.height == len(rows)


def test_a_checkpoint_with_the_field_an_earlier_version_wrote_resumes(tmp_path: Path) -> None:
    # slices written between a12fcf2 and aa784de carry "last": it was called damaged
    quirky, rows = _stopped_after_two_pages(tmp_path)
    (path,) = (tmp_path / "_state" / "backfill").glob("*.json")
    raw = json.loads(path.read_text())
    for piece in raw["slices"]:
        piece["last"] = "2026-05-01T10:01:00Z"
    path.write_text(json.dumps(raw))
    report = quirky.backfill(tmp_path, slices=1, page_size=10)
    assert report.resumed
    _, deliveries = lake_frames(tmp_path)
    assert sorted(set(deliveries["delivery_id"])) == sorted(r["id"] for r in rows)


def test_a_dense_history_with_cursors_refused_now_and_then_finishes(tmp_path: Path) -> None:
    # 20 rows a second, 20 a page, every third cursor refused: a chain covers 3 s before its
    # refusal, which a restart 4 s back could never get past (the run stopped with the error)
    start = datetime(2026, 5, 1, 10, tzinfo=UTC)
    rows = [history_row(i, format_time(start + timedelta(milliseconds=i * 50)))
            for i in range(1_000)]  # fmt: skip
    quirky = QuirkyHistory(rows, refuse_every=3)
    quirky.backfill(tmp_path, slices=1, page_size=20)
    _, deliveries = lake_frames(tmp_path)
    assert sorted(set(deliveries["delivery_id"])) == sorted(r["id"] for r in rows)


class BrokenLake:
    """A lake whose every write fails, as a full disk would."""

    def write_events(self, records: Any) -> int:
        raise StorageError("lake storage failed to write 'events/x': No space left on device")

    def write_deliveries(self, rows: Any) -> int:
        raise StorageError("lake storage failed to write 'deliveries/x': No space left on device")


def test_a_flush_failing_after_a_failed_run_is_noted_on_the_first_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The flush after a failure ran under suppress(Exception): its own failure vanished
    # without a word, and the events it could not move looked lost from the lake.
    rows = [history_row(i, f"2026-05-01T10:00:{i:02d}Z") for i in range(5)]

    def bug(p: BackfillProgress) -> None:
        raise RuntimeError("a bug in a progress callback")

    with (
        caplog.at_level("WARNING", logger="kirim_events.backfill"),
        pytest.raises(RuntimeError, match="a bug in a progress callback") as info,
    ):
        QuirkyHistory(rows).backfill(tmp_path, slices=1, lake=BrokenLake(), progress=bug)
    (note,) = info.value.__notes__
    assert "flushing the journal to the lake after this failure failed too" in note
    assert "StorageError: lake storage failed to write" in note
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "backfill failed (RuntimeError)" in record.getMessage()
    assert "No space left on device" in record.getMessage()
    with Journal(tmp_path) as j:
        assert j.backlog == 5  # kept for a later flush


def test_checkpoint_folders_are_fsynced_when_made_written_and_retired(
    tmp_path: Path, synced: list[Path]
) -> None:
    # The checkpoint was renamed into place and retired to done/ with no folder fsync'd:
    # after a power loss the finished run's checkpoint could come back and resume.
    QuirkyHistory([history_row(1, "2026-05-01T10:00:01Z")]).backfill(tmp_path, slices=1)
    state = tmp_path / "_state" / "backfill"
    assert (state / "done").is_dir()
    # the folders naming _state/, backfill/, the checkpoint, done/ and the retired checkpoint
    assert {tmp_path, tmp_path / "_state", state, state / "done"} <= set(synced)


def test_the_range_holds_since_and_excludes_until(tmp_path: Path) -> None:
    """A backfill over [since, until) stores a row made at ``since`` and none made at
    ``until`` (the next range's), also where Kirim sends rows past both ends."""
    rows = [
        history_row(i, at)
        for i, at in enumerate(
            [
                "2026-05-01T09:59:59.999999Z",  # before since
                "2026-05-01T10:00:00Z",  # since: in
                "2026-05-01T10:59:59.999999Z",  # in
                "2026-05-01T11:00:00Z",  # until: out
            ]
        )
    ]
    QuirkyHistory(rows, ignore_filters=True).backfill(tmp_path, slices=1, page_size=10)
    events, deliveries = lake_frames(tmp_path)
    assert sorted(deliveries["delivery_id"]) == ["wbd_00001", "wbd_00002"]
    assert sorted(events["event_key"]) == ["evt_00001", "evt_00002"]


def test_an_until_in_the_future_ends_the_range_now(tmp_path: Path) -> None:
    """Nothing exists after now: the range, its slices and the report stop there."""
    quirky = QuirkyHistory([history_row(0, "2026-05-01T10:30:00Z")])
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(quirky.handler),
                         sleep=lambda s: None)  # fmt: skip
    now = datetime(2026, 5, 1, 11, tzinfo=UTC)
    report = backfill(tmp_path, client=client, since="2026-05-01T10:00:00Z",
                      until="2026-05-02T00:00:00Z", now=now.timestamp, slices=1)  # fmt: skip
    assert (report.since, report.until) == (now - timedelta(hours=1), now)
    assert report.events_new == 1


class MovingHistory(QuirkyHistory):
    """Kirim's record of each row moves on between fetches (its response code changes)."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        response = super().handler(request)
        for row in self.rows:
            row["response_status_code"] = (row.get("response_status_code") or 500) + 1
        return response


def test_a_row_without_a_time_is_known_by_its_id_though_it_changed_between_slices(
    tmp_path: Path,
) -> None:
    rows = [history_row(i, None) for i in range(3)]
    report = MovingHistory(rows, ignore_filters=True).backfill(tmp_path, slices=4, page_size=10)
    assert report.rows_without_time == 3


def test_a_cursor_refusal_of_a_first_page_is_no_stale_cursor(tmp_path: Path) -> None:
    """Without a cursor there is nothing to restart from: the error is raised at once."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        error = {"type": "invalid_request_error", "code": "invalid_cursor", "message": "x"}
        return httpx.Response(400, json={"error": error})

    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(handler),
                         sleep=lambda s: None)  # fmt: skip
    with pytest.raises(PermanentApiError, match="invalid_cursor"):
        backfill(tmp_path, client=client, since="2026-05-01T10:00:00Z",
                 until="2026-05-01T11:00:00Z", slices=1, flush=False)  # fmt: skip
    assert len(calls) == 1


def test_a_quarantined_history_row_says_so_whatever_kirim_reported(tmp_path: Path) -> None:
    row = history_row(0, "2026-05-01T10:30:00Z") | {"payload": "not json", "error": "HTTP 500"}
    QuirkyHistory([row]).backfill(tmp_path, slices=1)
    _, deliveries = lake_frames(tmp_path)
    assert deliveries["reason"].to_list()[0].startswith("quarantined: ")
