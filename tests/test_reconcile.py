"""reconcile() against the emulator: exactly the never-acknowledged events, then recovered."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from racing import compacted_meanwhile
from test_backfill_kit import (
    DropKey,
    FakeTime,
    StripPayload,
    SyncASGI,
    World,
    lake_frames,
)

from kirim_events import testing
from kirim_events.client import KirimClient
from kirim_events.emulator import FaultConfig
from kirim_events.errors import AuthenticationError, ConfigError, PermanentApiError
from kirim_events.events import EventRecord, parse_delivery, parse_time
from kirim_events.journal import Journal
from kirim_events.lake import Lake
from kirim_events.reconcile import plan_windows, reconcile


@pytest.fixture(autouse=True)
def _portals() -> Iterator[None]:
    yield
    SyncASGI.shutdown_all()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "data", seed=8, events=250)
    yield w
    w.close()


def lake_files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_dry_run_finds_exactly_the_unacknowledged_events_and_changes_nothing(
    world: World,
) -> None:
    truth = world.emu.unacknowledged_event_keys()
    assert truth  # the broken collector refused some events for good
    since, until = world.window
    t = FakeTime(until.timestamp())
    transport, client = world.api(t)
    before = lake_files(world.home)
    report = reconcile(
        world.home, client=client, since=since, until=until, dry_run=True,
        journal=world.journal, now=t.clock,
    )  # fmt: skip
    assert {m.key for m in report.missing} == truth
    assert report.dry_run
    assert report.actions == {"import": len(truth)}
    assert lake_files(world.home) == before
    assert not [p for p in transport.paths if p.startswith("POST")]
    # Oldest day first, one row per (type, day).
    days = [day for _, day, _ in report.by_type_day]
    assert days == sorted(days)
    assert sum(n for _, _, n in report.by_type_day) == len(truth)
    assert report.near_purge == 0


class RefuseCursors:
    """ASGI middleware: every ``every``-th request with a cursor gets 400 invalid_cursor (a
    cursor expired during a long walk; kirim-api.md §7.3 names the code)."""

    def __init__(self, app: Any, every: int) -> None:
        self.app, self.every, self.seen = app, every, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and b"cursor=" in scope.get("query_string", b""):
            self.seen += 1
            if self.seen % self.every == 0:
                error = {"type": "invalid_request_error", "code": "invalid_cursor", "message": "x"}
                body = json.dumps({"error": error}).encode()
                headers = [(b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("spacing", [60.0, 0.3])  # seconds between rows: 0.3 re-reads several
def test_cursors_refused_during_the_walk_neither_stop_it_nor_skip_or_repeat_rows(
    tmp_path: Path, spacing: float
) -> None:
    # reconcile walked the history in one chain of pages, and the first cursor Kirim
    # refused stopped it with the error (a backfill's slices start a new chain); a long
    # walk of 30 days is where a cursor may expire.
    world = World(tmp_path / "data", seed=9, events=1200)
    try:
        rows = world.emu.store.deliveries
        start = rows[0].created_at
        for row in rows:  # newest first, as the API pages it
            row.created_at = row.updated_at = start + spacing * row.seq + 0.25
        truth = world.emu.unacknowledged_event_keys()
        since, until = world.window
        t = FakeTime(until.timestamp())
        transport, client = world.api(t, transport_wrapper=lambda app: RefuseCursors(app, 3))
        report = reconcile(
            world.home, client=client, since=since, until=until, dry_run=True,
            journal=world.journal, now=t.clock,
        )  # fmt: skip
        assert transport.statuses[400] >= 2  # Kirim refused cursors, more than once
        assert {m.key for m in report.missing} == truth
        assert report.history_rows == len(rows)  # each row scanned once
    finally:
        world.close()


def test_a_cursor_refused_on_a_history_in_no_time_order_stops_the_walk(tmp_path: Path) -> None:
    # Without a plain order a new chain cannot tell what it would skip: the error stands
    # (before anything was imported or replayed), rather than a walk that loses rows.
    world = World(tmp_path / "data", seed=10, events=400)
    try:
        rows = world.emu.store.deliveries
        start = rows[0].created_at
        for row in rows:  # paged by creation, timed in no order
            row.created_at = row.updated_at = start + (row.seq * 7919) % 3600
        since, until = world.window
        t = FakeTime(until.timestamp())
        transport, client = world.api(t, transport_wrapper=lambda app: RefuseCursors(app, 2))
        with pytest.raises(PermanentApiError, match="invalid_cursor"):
            reconcile(world.home, client=client, since=since, until=until,
                      journal=world.journal, now=t.clock)  # fmt: skip
        assert not [p for p in transport.paths if p.startswith("POST")]
    finally:
        world.close()


def test_recovery_imports_from_payloads_and_the_lake_then_has_them(world: World) -> None:
    truth = world.emu.unacknowledged_event_keys()
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t, faults=FaultConfig(error_rate=0.2, latency=0.3, latency_rate=0.5))
    events, _ = lake_frames(world.home)
    assert not truth & set(events["event_key"])
    started = datetime.fromtimestamp(t.clock(), UTC)
    report = reconcile(world.home, client=client, since=since, until=until,
                       journal=world.journal, now=t.clock)  # fmt: skip
    assert {m.key for m in report.missing} == truth
    assert report.imported == len(truth)
    events, deliveries = lake_frames(world.home)
    keys = events["event_key"].to_list()
    assert len(keys) == len(set(keys))
    assert set(keys) == world.history_keys
    recovered = events.filter(events["event_key"].is_in(list(truth)))
    assert set(recovered["origin"]) == {"backfill"}
    # received by the run's clock, not the machine's (it read datetime.now)
    assert set(recovered["received_at"]) == {started}
    # The history rows that carried them are deliveries rows, as a backfill stores them: each
    # attempt of Kirim's once, with the number of events its body held.
    rows = [row for row in world.emu.store.deliveries if set(row.event_keys) & truth]
    fetched = deliveries.filter(deliveries["origin"] == "backfill")
    assert {(r.id, r.attempt) for r in rows} <= set(fetched.select("delivery_id", "attempt").rows())
    assert fetched.select("delivery_id", "attempt").is_duplicated().sum() == 0
    assert all(n >= 1 for n in fetched["n_events"])
    # A second pass finds nothing left to do.
    again = reconcile(world.home, client=client, since=since, until=until,
                      journal=world.journal, now=t.clock)  # fmt: skip
    assert again.missing == []


def test_a_data_folder_starting_with_a_tilde_is_the_folder_its_journal_and_lake_use(
    world: World, tmp_path: Path, away_from_home: Path
) -> None:
    # Journal and Lake expand "~" (a3f34c8); reconcile took "~/data" as the words given:
    # the lake it named (./~/data, made absolute) was not the one the journal records as
    # its own ("data folder"), so the run was refused ("the journal flushes into the lake at
    # the data folder, not the one reconciled"), and its quarantine was read from ./~/data
    assert world.home == tmp_path / "data"
    truth = world.emu.unacknowledged_event_keys()
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t)
    report = reconcile("~/data", client=client, since=since, until=until,
                       journal=world.journal, now=t.clock)  # fmt: skip
    assert {m.key for m in report.missing} == truth
    assert report.imported == len(truth)
    events, _ = lake_frames(world.home)
    assert set(events["event_key"]) == world.history_keys
    assert list(away_from_home.iterdir()) == []  # no folder named "~" made where it ran


def test_a_body_over_the_collectors_limit_is_imported_from_the_history(tmp_path: Path) -> None:
    # docs/cli.md: a body over --max-body is answered 413 (never read past the limit, so not
    # quarantined) and Kirim takes that as final; reconcile brings it from the history
    limit = 540  # the emulator sends 329 to 867 bytes
    w = World(tmp_path / "data", seed=8, events=60, max_body=limit)
    try:
        rows = w.emu.store.deliveries
        large = {k for row in rows if len(row.payload) > limit for k in row.event_keys}
        assert large
        events, deliveries = lake_frames(w.home)
        assert not large & set(events["event_key"])
        assert "too_large" in set(deliveries["reason"])
        since, until = w.window
        t = FakeTime(until.timestamp())
        _, client = w.api(t)
        report = reconcile(w.home, client=client, since=since, until=until,
                           journal=w.journal, now=t.clock)  # fmt: skip
        assert large <= {m.key for m in report.missing}
        events, _ = lake_frames(w.home)
        assert large <= set(events["event_key"])
    finally:
        w.close()


def test_a_run_killed_between_its_import_and_its_flush_is_finished_by_the_next(
    world: World,
) -> None:
    # Killed after the import's journal commit, before its flush: the next run found the
    # events in the dedup index, so nothing missing, and flushed nothing; the lake lacked
    # them until some other command flushed the journal.
    truth = world.emu.unacknowledged_event_keys()
    rows = [row for row in world.emu.store.deliveries if set(row.event_keys) & truth]
    world.journal.append([r for row in rows for r in parse_delivery(row.payload)])  # committed
    events, _ = lake_frames(world.home)
    assert not truth & set(events["event_key"])  # not flushed: the kill came first
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t)
    report = reconcile(world.home, client=client, since=since, until=until,
                       journal=world.journal, now=t.clock)  # fmt: skip
    assert report.missing == []  # the journal holds them
    events, _ = lake_frames(world.home)
    assert set(events["event_key"]) == world.history_keys  # and now the lake does too


def test_without_payloads_kirim_replays_them_to_the_collector(world: World) -> None:
    truth = world.emu.unacknowledged_event_keys()
    rows_truth = {row.id for row in world.emu.store.deliveries if set(row.event_keys) & truth}
    since, until = world.window
    t = FakeTime(until.timestamp())
    faults = FaultConfig(error_rate=0.15, latency=0.2, latency_rate=0.3)
    transport, client = world.api(t, faults=faults, write_limit=10,
                                  transport_wrapper=StripPayload)  # fmt: skip
    report = reconcile(world.home, client=client, since=since, until=until,
                       journal=world.journal, now=t.clock)  # fmt: skip
    # Without bodies, each missing event is named by its delivery (statuses share wamids).
    assert {m.delivery_id for m in report.missing} <= rows_truth
    assert {eid for m in report.missing for eid in [m.event_id]} == {
        world.emu.store.by_id[r].event_id for r in rows_truth
    }
    assert report.imported == 0
    assert report.errors == []
    assert report.bulk_calls >= 1  # dead / failed ones went through bulk_replay
    assert transport.paths["POST /v1/webhook_deliveries/bulk_replay"] >= 1
    # The collector is fixed; Kirim delivers the replays; the lake now has every event.
    world.collector.healthy = True
    world.deliver_pending()
    assert world.emu.unacknowledged_event_keys() == set()
    events, _ = lake_frames(world.home)
    keys = events["event_key"].to_list()
    assert len(keys) == len(set(keys))
    assert set(keys) == world.history_keys
    assert set(events.filter(events["event_key"].is_in(list(truth)))["origin"]) == {"webhook"}


def test_a_dead_delivery_replayed_before_is_replayed_alone_not_by_a_window(
    world: World, tmp_path: Path
) -> None:
    """A dead delivery that was replayed once (and taken) has left Kirim's dead-letter
    queue, as the emulator reads kirim-api.md §3: a bulk_replay window sends nothing for
    it. Reconcile into a folder that lacks those events (another data folder, a lake lost)
    put them in windows and said they were asked for; none came."""
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t, read_limit=10**6, write_limit=10**6,
                          transport_wrapper=StripPayload)  # fmt: skip
    dead = [r for r in world.emu.store.deliveries if r.status == "dead"]
    assert len(dead) > 5
    world.collector.healthy = True
    subscription = dead[0].subscription_id
    assert client.bulk_replay(subscription).enqueued == len(dead)
    world.deliver_pending()  # each replay taken by the collector
    n_rows = len(world.emu.store.deliveries)
    t.sleep(60)
    later = datetime.fromtimestamp(t.clock(), UTC)
    report = reconcile(tmp_path / "elsewhere", client=client, since=since, until=later,
                       now=t.clock)  # fmt: skip
    assert report.errors == []
    asked = {m.event_id for m in report.missing if m.action in ("replay", "bulk_replay")}
    assert {r.event_id for r in dead} <= asked
    sent = {r.event_id for r in world.emu.store.deliveries[n_rows:]}
    assert asked - sent == set()  # every event reconcile asked for, Kirim sends again


def test_warns_when_missing_events_are_near_the_purge(world: World) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp() + 28 * 86400)  # 28 days later: 2 days before the purge
    _, client = world.api(t)
    report = reconcile(world.home, client=client, since=since, until=until, dry_run=True,
                       journal=world.journal, now=t.clock)  # fmt: skip
    assert report.missing
    assert report.near_purge == len(report.missing)
    relaxed = reconcile(world.home, client=client, since=since, until=until, dry_run=True,
                        journal=world.journal, now=t.clock, warn_days=1)  # fmt: skip
    assert relaxed.near_purge == 0


def test_dry_run_on_an_empty_folder_creates_nothing(world: World, tmp_path: Path) -> None:
    since, until = world.window
    t = FakeTime(until.timestamp())
    _, client = world.api(t)
    empty = tmp_path / "empty"
    empty.mkdir()
    report = reconcile(empty, client=client, since=since, until=until, dry_run=True,
                       now=t.clock)  # fmt: skip
    assert len({m.key for m in report.missing}) == len(world.history_keys)
    assert list(empty.iterdir()) == []
    # nor does a folder not made yet: it holds nothing, and is not made
    absent = tmp_path / "absent"
    report = reconcile(absent, client=client, since=since, until=until, dry_run=True,
                       now=t.clock)  # fmt: skip
    assert len({m.key for m in report.missing}) == len(world.history_keys)
    assert not absent.exists()


def test_bad_range_is_a_config_error(tmp_path: Path) -> None:
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(lambda r: 1 / 0))
    with pytest.raises(
        ConfigError, match=r"^since \(2026-05-02T00:00:00Z\) must be before until \(2026-05-01"
    ):
        reconcile(tmp_path, client=client, since="2026-05-02", until="2026-05-01")
    with pytest.raises(ConfigError, match=r"^since 'last tuesday' is not a time"):
        reconcile(tmp_path, client=client, since="last tuesday")
    for days in (-1, 40, float("nan")):  # a warning threshold outside Kirim's 30 days
        with pytest.raises(ConfigError, match=r"^warn_days must be 0 to 30"):
            reconcile(tmp_path, client=client, since="2d", warn_days=days)


def test_plan_windows_respects_the_cap_and_covers_every_row() -> None:
    base = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [("wbs_A", "dead", base + timedelta(milliseconds=i // 3)) for i in range(2500)]
    rows += [("wbs_A", "failed", base)]
    windows = plan_windows(rows)
    dead = [w for w in windows if w.status == "dead"]
    assert len(dead) == 3
    assert all(w.rows <= 1000 for w in windows)
    twice = 0
    for _, status, at in rows:
        inside = [
            w for w in windows if w.status == status and w.created_after <= at < w.created_before
        ]
        assert 1 <= len(inside) <= 2
        twice += len(inside) == 2
    # rows 1 ms apart leave no millisecond between two windows: they overlap by the one
    # before the edge (its 3 rows), which a Kirim reading both ends exclusive needs
    assert twice == 3 * (len(dead) - 1)


def test_more_rows_at_one_instant_than_the_cap_make_one_window_not_hundreds() -> None:
    # 1500 rows at one instant: windows shrank to one row each with equal ends (hundreds of
    # empty windows, each a write call), and the last still held over 1000 rows
    base = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [("wbs_A", "dead", base - timedelta(seconds=5))] * 3
    rows += [("wbs_A", "dead", base)] * 1500 + [("wbs_A", "dead", base + timedelta(seconds=1))]
    windows = plan_windows(rows)
    assert [w.rows for w in windows] == [3, 1500, 1]
    assert all(w.created_after < w.created_before for w in windows)
    for _, _, at in rows:
        assert sum(w.created_after <= at < w.created_before for w in windows) == 1


def test_replays_stop_at_the_first_key_kirim_refuses_and_the_error_is_kept(world: World) -> None:
    # A key that may read the history but is refused for replays (revoked meanwhile): every
    # replay and bulk_replay call was sent and refused in turn, one error line each, and
    # the CLI could not tell a 401 (whose hint names KIRIM_KEY) from the lines
    since, until = world.window
    t = FakeTime(until.timestamp())
    transport, client = world.api(
        t, transport_wrapper=lambda app: DropKey(StripPayload(app), "POST")
    )
    report = reconcile(world.home, client=client, since=since, until=until,
                       journal=world.journal, now=t.clock)  # fmt: skip
    assert report.actions["replay"] + report.actions["bulk_replay"] > 1
    assert sum(n for path, n in transport.paths.items() if path.startswith("POST")) == 1
    assert (report.replayed, report.bulk_calls) == (0, 0)
    (line,) = report.errors
    assert line.startswith("replays stopped: ")
    assert "status=401" in line
    (refused,) = report.failures
    assert isinstance(refused, AuthenticationError)
    assert refused.status_code == 401


def test_a_crowded_instant_is_replayed_one_by_one(tmp_path: Path) -> None:
    base = 1200
    rows = [delivery(n, base, f"evt_{n}", "dead") for n in range(1001)]
    history = History(rows)
    report = history.reconcile(tmp_path)
    assert (report.bulk_calls, report.windows) == (0, [])
    assert sorted(history.replays) == sorted(r["id"] for r in rows)


def test_capped_bulk_replay_narrows_the_window_and_repeats(tmp_path: Path) -> None:
    # Kirim reports more dead rows than the history showed: the window is halved until not capped.
    base = datetime(2026, 5, 1, tzinfo=UTC)
    history = [
        {"id": f"wbd_{i}", "status": "dead", "subscription_id": "wbs_A", "event_id": f"evt_{i}",
         "event_type": "contact.updated",
         "created_at": (base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")}
        for i in range(30)
    ]  # fmt: skip
    calls: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": history, "has_more": False})
        body = json.loads(request.content)
        calls.append(body)
        capped = len(calls) == 1
        return httpx.Response(202, json={"data": {"enqueued": 1000 if capped else 5,
                                                  "capped": capped}})  # fmt: skip

    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(handler),
                         sleep=lambda s: None)  # fmt: skip
    report = reconcile(tmp_path, client=client, since=base, until=base + timedelta(hours=1),
                       now=lambda: (base + timedelta(days=1)).timestamp())  # fmt: skip
    assert len(report.missing) == 30
    assert report.actions == {"bulk_replay": 30}
    assert len(calls) == 3
    assert calls[1]["created_after"] == calls[0]["created_after"]
    assert calls[2]["created_before"] == calls[0]["created_before"]
    # the halves overlap by the millisecond either side of the midpoint (a row there is in
    # one of them whichever ends Kirim includes, and at its milliseconds)
    first_end, second_start = (
        parse_time(calls[1]["created_before"]),
        parse_time(calls[2]["created_after"]),
    )
    assert first_end is not None
    assert second_start is not None
    assert first_end - second_start == timedelta(milliseconds=2)
    assert report.bulk_enqueued == 1010


# ------------------------------------------------------------------ history as Kirim may send it

OURS, OTHER = "wbs_01J0000000000000000000000A", "wbs_01J0000000000000000000000B"
BASE = datetime(2026, 5, 1, 10, tzinfo=UTC)


def delivery(n: int, seconds: float, event: str, status: str, **extra: Any) -> dict[str, Any]:
    at = (BASE + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return {"id": f"wbd_{n:03d}", "status": status, "subscription_id": OURS, "event_id": event,
            "event_type": "contact.updated", "created_at": at, **extra}  # fmt: skip


class History:
    """One page of delivery rows; records what reconcile asks Kirim to replay. Its
    subscriptions have ``sub_status`` (None: reading one is answered 404)."""

    def __init__(self, rows: list[dict[str, Any]], sub_status: str | None = "active") -> None:
        self.rows, self.replays, self.bulk = rows, list[str](), list[dict[str, Any]]()
        self.sub_status = sub_status
        self.pages = 0  # history pages served

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/webhook_subscriptions"):
            if self.sub_status is None:
                error = {"type": "invalid_request_error", "code": "resource_not_found"}
                return httpx.Response(404, json={"error": error})
            if request.url.path == "/v1/webhook_subscriptions":  # the list: ours alone
                subs = [{"id": OURS, "status": self.sub_status}]
                return httpx.Response(200, json={"data": subs, "has_more": False})
            sub = {"id": request.url.path.split("/")[-1], "status": self.sub_status}
            return httpx.Response(200, json={"data": sub})
        if request.method == "GET":
            self.pages += 1
            # json.dumps escapes as JSON may (httpx's json= writes a lone surrogate raw)
            page = json.dumps({"data": self.rows, "has_more": False}).encode()
            return httpx.Response(200, content=page, headers={"content-type": "application/json"})
        if request.url.path.endswith("/replay"):
            self.replays.append(request.url.path.split("/")[-2])
            return httpx.Response(202, json={"data": {"id": "wbd_new", "status": "pending"}})
        body = json.loads(request.content)
        self.bulk.append(body)
        lo, hi = (datetime.fromisoformat(body[k]) for k in ("created_after", "created_before"))
        hits = [r for r in self.rows if r["subscription_id"] == body["subscription_id"]
                and r["status"] == body["status"]
                and lo <= datetime.fromisoformat(r["created_at"]) < hi]  # fmt: skip
        self.enqueued = [*getattr(self, "enqueued", []), *(r["event_id"] for r in hits)]
        return httpx.Response(202, json={"data": {"enqueued": len(hits), "capped": False}})

    def reconcile(self, home: Path, **kwargs: Any) -> Any:
        client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(self.handler),
                             sleep=lambda s: None)  # fmt: skip
        return reconcile(home, client=client, since=BASE, until=BASE + timedelta(hours=1),
                         now=lambda: (BASE + timedelta(days=1)).timestamp(), **kwargs)  # fmt: skip


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class ExclusiveHistory(History):
    """A Kirim whose ``created_after`` and ``created_before`` both exclude their instant."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method != "GET" or "/webhook_subscriptions" in request.url.path:
            return super().handler(request)
        lo, hi = (_at(request.url.params[k]) for k in ("created_after", "created_before"))
        rows = [r for r in self.rows if lo < _at(r["created_at"]) < hi]
        return httpx.Response(200, json={"data": rows, "has_more": False})


@pytest.mark.parametrize("kirim", [History, ExclusiveHistory])
def test_a_row_at_the_start_of_the_range_is_examined_whatever_kirim_excludes(
    tmp_path: Path, kirim: type[History]
) -> None:
    # Walked with created_after = --since exactly, a Kirim excluding that instant never showed
    # the row created at it; rows just outside the range are not the range's.
    rows = [
        delivery(n, seconds, event, "dead")
        for n, seconds, event in [(1, -0.001, "evt_before"), (2, 0, "evt_at_since"),
                                  (3, 3599.999, "evt_last"), (4, 3600, "evt_at_until")]
    ]  # fmt: skip
    report = kirim(rows).reconcile(tmp_path, dry_run=True)
    assert sorted(m.event_id or "" for m in report.missing) == ["evt_at_since", "evt_last"]
    assert report.history_rows == 2


def test_with_several_subscriptions_replays_go_only_to_the_one_named(tmp_path: Path) -> None:
    # Both systems missed five events. Replaying a delivery of the other subscription would
    # send the event to its URL, never to our collector.
    rows = [delivery(2 * i + k, i, f"evt_{i}", "dead", subscription_id=sub)
            for i in range(5) for k, sub in enumerate((OTHER, OURS))]  # fmt: skip
    history = History(rows)
    with pytest.raises(ConfigError, match=f"{OURS}, {OTHER}.*--subscription-id"):
        history.reconcile(tmp_path, dry_run=True)
    # A typo (or a quiet range) reported nothing missing without a word: now a note says so.
    typo = history.reconcile(tmp_path, subscription_id=OTHER[:-1] + "C", dry_run=True)
    assert typo.missing == []
    assert typo.notes == [
        f"no delivery of subscription {OTHER[:-1]}C in this range; the history holds"
        f" deliveries of {OURS}, {OTHER}: check --subscription-id"
    ]
    report = history.reconcile(tmp_path, subscription_id=OURS)
    assert len(report.missing) == 5
    assert {m.subscription_id for m in report.missing} == {OURS}
    assert {b["subscription_id"] for b in history.bulk} | {
        r["subscription_id"] for r in rows if r["id"] in history.replays
    } == {OURS}
    assert report.errors == []


@pytest.mark.parametrize(
    ("status", "code", "missing"),
    [("succeeded", None, 0), ("delivered", None, 0), ("Success", None, 0), ("complete", 200, 0),
     ("pending", None, 1), ("dead", 500, 1), ("retrying", None, 1), ("complete", 299, 0),
     ("complete", 300, 1)],
)  # fmt: skip
def test_a_status_without_payload_is_acknowledged_by_any_success_name_or_a_2xx(
    tmp_path: Path, status: str, code: int | None, missing: int
) -> None:
    # kirim-api.md 7.4: Kirim's name for success is unknown ("succeeded" is a guess).
    row = delivery(1, 0, "wamid.X", status, event_type="message.status", response_status_code=code)
    # the store holds a status of wamid.X (which one it cannot tell from a bare row)
    body = json.dumps(testing.meta_status("sent", wamid="wamid.X", timestamp=1_779_000_000))
    Lake(tmp_path).write_events(parse_delivery(body.encode()))
    report = History([row]).reconcile(tmp_path, dry_run=True)
    assert len(report.missing) == missing


@pytest.mark.parametrize("held", ["nowhere", "lake", "journal"])
def test_an_acknowledged_status_the_store_has_lost_is_missing(tmp_path: Path, held: str) -> None:
    # Kirim says our endpoint took a status of wamid.Y; if the store holds no status of
    # that message at all (a lake folder deleted, a journal lost), it was stored, then lost,
    # and is replayed. A store holding any status of it cannot tell which: not missing.
    row = delivery(1, 0, "wamid.Y", "succeeded", event_type="message.status")
    records = parse_delivery(json.dumps(testing.meta_status("read", wamid="wamid.Y")).encode())
    if held == "lake":
        Lake(tmp_path).write_events(records)
    elif held == "journal":
        with Journal(tmp_path) as journal:
            journal.append(records)  # accepted, not flushed yet
    history = History([row])
    report = history.reconcile(tmp_path)
    assert [m.delivery_id for m in report.missing] == (["wbd_001"] if held == "nowhere" else [])
    assert history.replays == (["wbd_001"] if held == "nowhere" else [])


@pytest.mark.parametrize("event_type", ["message.status", "contact.updated"])
def test_a_quarantined_delivery_is_held_not_replayed_on_every_run(
    tmp_path: Path, event_type: str
) -> None:
    # Our endpoint answered 200 to a signed body it could not parse and kept it under
    # quarantine/: replaying it brings the same bytes back, so it is not missing.
    row = delivery(1, 0, "wamid.Q" if event_type == "message.status" else "evt_Q", "succeeded",
                   event_type=event_type)  # fmt: skip
    with Journal(tmp_path) as journal:
        journal.quarantine(b"{not json", {"X-Kirim-Event-Id": row["event_id"]}, "invalid_json")
    history = History([row])
    for _ in range(2):
        report = history.reconcile(tmp_path)
        assert report.missing == []
        # and the report says so, for someone to look at it
        assert any(n.startswith("1 delivery is kept in quarantine") for n in report.notes)
    assert history.replays == []


def test_a_429_asking_for_hours_stops_the_replays_at_the_first(tmp_path: Path) -> None:
    rows = [delivery(n, n, f"evt_{n}", "dead") for n in range(20)]  # one bulk_replay window

    class Busy(History):
        def handler(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                self.replays.append(request.url.path)
                error = {"type": "rate_limit_error", "code": "rate_limit_exceeded"}
                return httpx.Response(429, json={"error": error}, headers={"Retry-After": "7200"})
            return super().handler(request)

    history = Busy(rows)
    report = history.reconcile(tmp_path)
    assert len(report.missing) == 20
    assert len(history.replays) == 1  # the others were not sent
    assert len(report.errors) == 1
    assert report.errors[0].startswith("replays stopped:")
    assert "wait 7200 s" in report.errors[0]


def test_bulk_windows_hold_the_very_rows_chosen_for_replay(tmp_path: Path) -> None:
    # evt_6 was first delivered (yet is not in the store), long before its replay went dead;
    # the dead replay is the row to bulk-replay, so a window must hold its time, not the
    # first one's. (A pending first delivery would make the event wait for Kirim's retry.)
    rows = [delivery(i, i, f"evt_{i}", "dead") for i in range(1, 6)]
    rows.append(delivery(6, 0.5, "evt_6", "succeeded"))
    rows.append(delivery(7, 9, "evt_6", "dead", replayed_from="wbd_006"))
    history = History(rows)
    report = history.reconcile(tmp_path)
    assert report.actions == {"bulk_replay": 6}
    assert sorted(history.enqueued) == [f"evt_{i}" for i in range(1, 7)]


def test_a_history_payload_that_is_no_body_is_kept_once_and_never_replayed(tmp_path: Path) -> None:
    rows = [delivery(1, 0, "evt_1", "dead", payload="<html>not json</html>")]
    history = History(rows)
    first = history.reconcile(tmp_path)
    second = history.reconcile(tmp_path)
    assert (first.unparseable, first.quarantined, first.missing) == (1, 1, [])
    assert (second.unparseable, second.quarantined, second.missing) == (1, 0, [])
    assert (history.replays, history.bulk) == ([], [])
    kept = sorted((tmp_path / "quarantine").rglob("*.body"))
    assert [p.read_bytes() for p in kept] == [b"<html>not json</html>"]
    # its history row is a deliveries row saying why, once however often it was read
    receipts = Lake(tmp_path).deliveries().collect()
    assert receipts.select("delivery_id", "origin", "n_events").rows() == [
        ("wbd_001", "backfill", 0)
    ]
    assert receipts["reason"][0].startswith("quarantined: ")


def test_lone_surrogate_escapes_in_the_history_are_kept_not_a_crash(tmp_path: Path) -> None:
    # a payload holding half a UTF-16 pair raised UnicodeEncodeError; an id, a StorageError
    bad = '{"id":"evt_1","type":"contact.updated","data":{"x":"\ud800"}}'
    rows = [delivery(1, 0, "evt_1", "dead", payload=bad),
            delivery(2, 1, "evt_\udc00", "dead")]  # fmt: skip
    report = History(rows).reconcile(tmp_path)
    assert (report.unparseable, report.quarantined) == (1, 1)
    assert [m.key for m in report.missing] == ["evt_\\udc00"]
    (kept,) = (tmp_path / "quarantine").rglob("*.body")
    assert kept.read_bytes() == bad.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------ what is not replayed


def test_events_whose_delivery_kirim_still_retries_are_awaited_not_replayed(
    tmp_path: Path,
) -> None:
    # A pending delivery comes with Kirim's next attempt: a replay would send it twice.
    rows = [delivery(n, n, f"evt_{n}", "pending") for n in range(5)]
    rows.append(delivery(9, 9, "evt_9", "dead"))
    history = History(rows)
    report = history.reconcile(tmp_path)
    assert report.actions == {"await": 5, "replay": 1}
    assert history.replays == ["wbd_009"]
    assert history.bulk == []
    assert any("still retrying" in note for note in report.notes)
    assert report.errors == []


@pytest.mark.parametrize("dry_run", [False, True])
def test_replays_to_a_disabled_subscription_are_held_and_said(
    tmp_path: Path, dry_run: bool
) -> None:
    # Kirim sends nothing to a disabled subscription: replays would wait in its queue, and
    # each run of reconcile would add as many again.
    rows = [delivery(n, n, f"evt_{n}", "dead") for n in range(30)]
    rows += [delivery(50, 50, "evt_50", "pending"), delivery(51, 51, "evt_51", "failed")]
    history = History(rows, sub_status="disabled")
    report = history.reconcile(tmp_path, dry_run=dry_run)
    assert report.actions == {"held": 32}
    assert report.windows == []
    assert (history.replays, history.bulk) == ([], [])
    said = report.notes if dry_run else report.errors
    assert len([m for m in said if f"subscription {OURS} is disabled" in m]) == 1
    assert any('{"status": "active"}' in m for m in said)
    if not dry_run:
        assert not any("is disabled" in note for note in report.notes)


def test_a_subscription_kirim_does_not_show_is_replayed_to_with_a_note(tmp_path: Path) -> None:
    history = History([delivery(1, 0, "evt_1", "dead")], sub_status=None)
    report = history.reconcile(tmp_path)
    assert history.replays == ["wbd_001"]
    assert any(f"cannot read subscription {OURS}" in note for note in report.notes)
    assert report.errors == []


def test_a_bulk_window_is_not_used_when_it_would_resend_mostly_stored_events(
    tmp_path: Path,
) -> None:
    # 100 dead deliveries, 98 of them stored: two replays, not one window re-sending 100.
    rows = [delivery(n, n, f"evt_{n}", "dead") for n in range(100)]
    stored = [n for n in range(100) if n not in (17, 71)]
    bodies = [json.dumps(testing.kirim_event(event_id=f"evt_{n}")).encode() for n in stored]
    with Journal(tmp_path) as journal:
        journal.append([r for body in bodies for r in parse_delivery(body)])
    history = History(rows)
    report = history.reconcile(tmp_path)
    assert report.actions == {"replay": 2}
    assert sorted(history.replays) == ["wbd_017", "wbd_071"]
    assert history.bulk == []
    # most of a window missing: the window is worth its re-sends
    history = History(rows)
    report = history.reconcile(tmp_path / "empty")
    assert report.actions == {"bulk_replay": 100}
    assert len(history.bulk) == 1


# ------------------------------------------------------------------ stored, then lost


def _lake_files(home: Path) -> list[Path]:
    return sorted((home / "events").rglob("*.parquet"))


def test_events_the_index_remembers_but_the_lake_lost_are_found_and_stored_again(
    tmp_path: Path,
) -> None:
    # The dedup index was taken as proof that the lake holds an event: a lake file deleted
    # (or an S3 lake restored from an older copy) was reported complete, and a backfill or
    # a replay could not bring its events back (the index dropped them as duplicates).
    payload = {n: json.dumps(testing.kirim_event(event_id=f"evt_{n}", created_at=BASE))
               for n in range(6)}  # fmt: skip
    rows = [delivery(n, n, f"evt_{n}", "succeeded", payload=payload[n]) for n in range(3)]
    rows += [delivery(n, n, f"evt_{n}", "dead") for n in range(3, 6)]  # no payload
    with Journal(tmp_path) as journal:  # all six were received once
        journal.append([r for n in range(6) for r in parse_delivery(payload[n].encode())])
        journal.flush(Lake(tmp_path))
    assert History(rows).reconcile(tmp_path).missing == []
    for path in _lake_files(tmp_path):
        path.unlink()  # the lake loses them; the journal's index still remembers all six
    dry = History(rows).reconcile(tmp_path, dry_run=True)
    assert sorted(m.key for m in dry.missing) == [f"evt_{n}" for n in range(6)]
    assert dry.lost == 6
    assert any("would be forgotten" in note for note in dry.notes)
    history = History(rows)
    report = history.reconcile(tmp_path)
    assert (report.lost, report.imported) == (6, 3)
    assert report.actions == {"import": 3, "bulk_replay": 3}
    assert sorted(history.enqueued) == ["evt_3", "evt_4", "evt_5"]
    with Journal(tmp_path) as journal:  # so the collector stores their replays again
        assert journal.seen([f"evt_{n}" for n in range(3, 6)]) == set()
    events = Lake(tmp_path).events().collect()
    assert sorted(events["event_id"]) == ["evt_0", "evt_1", "evt_2"]
    assert History(rows[:3]).reconcile(tmp_path).missing == []  # and once is enough


def _held_and_one_more(home: Path, *, journal: bool) -> tuple[list[dict[str, Any]], EventRecord]:
    """History rows of four events; the first three in the lake at ``home``, one small file
    each (flushed from the journal one by one, or written to the lake without one). Returns
    the rows and a record the lake holds."""
    payload = {n: json.dumps(testing.kirim_event(event_id=f"evt_{n}", created_at=BASE))
               for n in range(4)}  # fmt: skip
    rows = [delivery(n, n, f"evt_{n}", "succeeded", payload=payload[n]) for n in range(4)]
    records = [parse_delivery(payload[n].encode()) for n in range(3)]
    for held in records:
        if journal:
            with Journal(home) as j:
                j.append(held)
                j.flush(Lake(home))
        else:
            Lake(home).write_events(held)
    assert len(_lake_files(home)) == 3
    return rows, records[0][0]


@pytest.mark.parametrize("journal", [False, True], ids=["lake-only", "journal"])
def test_a_compaction_deleting_the_files_a_lake_read_planned_is_read_again(
    tmp_path: Path, journal: bool
) -> None:
    """A scheduled compaction finishing during reconcile deleted the files its lake reads
    had planned: it failed with FileNotFoundError. Each read is planned again. With the
    journal, both reads are raced: the events the dedup index holds (lost?) and the others
    (in the lake?)."""
    rows, held = _held_and_one_more(tmp_path, journal=journal)
    raced, ran = compacted_meanwhile("events", {1, 3} if journal else {1}, held)
    report = History(rows).reconcile(tmp_path, dry_run=True, lake=raced(tmp_path))
    assert len(ran) == (2 if journal else 1)
    assert [m.key for m in report.missing] == ["evt_3"]  # exactly the one the lake lacks
    assert report.lost == 0
    assert sorted(Lake(tmp_path).events().collect()["event_id"]) == ["evt_0", "evt_1", "evt_2"]


def test_events_waiting_in_the_journal_are_not_taken_for_lost(tmp_path: Path) -> None:
    payload = json.dumps(testing.kirim_event(event_id="evt_1", created_at=BASE))
    rows = [delivery(1, 0, "evt_1", "succeeded", payload=payload)]
    with Journal(tmp_path) as journal:
        journal.append(parse_delivery(payload.encode()))  # accepted, not flushed yet
    for dry_run in (True, False):
        history = History(rows)
        report = history.reconcile(tmp_path, dry_run=dry_run)
        assert (report.missing, report.lost) == ([], 0)
        assert history.pages == 1  # with a collector running, the history was walked twice


def test_a_journal_that_flushes_into_another_lake_is_not_taken_for_lost(tmp_path: Path) -> None:
    # compact --data ./data --lake URI flushes the journal elsewhere: every event the index
    # remembered was taken for lost, forgotten, and imported into ./data as well
    payload = {n: json.dumps(testing.kirim_event(event_id=f"evt_{n}", created_at=BASE))
               for n in range(120)}  # fmt: skip
    rows = [delivery(n, n, f"evt_{n}", "succeeded", payload=payload[n]) for n in range(120)]
    other = Lake(tmp_path / "elsewhere")
    with Journal(tmp_path / "data") as journal:
        journal.append([r for n in range(120) for r in parse_delivery(payload[n].encode())])
        journal.flush(other)
    dry = History(rows).reconcile(tmp_path / "data", dry_run=True)
    assert (dry.missing, dry.lost) == ([], 0)
    assert any("the journal flushes into the lake at" in note for note in dry.notes)
    # what it imported would land in the wrong lake: refused, before Kirim is asked
    history = History(rows)
    with pytest.raises(ConfigError, match="pass that one"):
        history.reconcile(tmp_path / "data")
    assert history.pages == 0
    assert not (tmp_path / "data" / "events").exists()
    report = History(rows).reconcile(tmp_path / "data", lake=other)  # the CLI's --lake
    assert (report.missing, report.notes) == ([], [])
    # a journal that never said where it flushes (written before it did): most of the
    # range missing is taken for a lake mix-up, not for a loss
    with sqlite3.connect(tmp_path / "data" / "_journal" / "journal.sqlite3") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'lake'")
    report = History(rows).reconcile(tmp_path / "data")
    assert (report.missing, report.lost) == ([], 0)
    assert any("they were not taken for lost" in note for note in report.notes)


@pytest.mark.parametrize(("first", "then"), [("dead", "pending"), ("pending", "dead")])
def test_an_event_with_any_delivery_still_retried_is_awaited(
    tmp_path: Path, first: str, then: str
) -> None:
    # the terminal delivery was chosen and replayed on every run while another one of the
    # same event was still being retried
    rows = [delivery(1, 0, "evt_1", first), delivery(2, 60, "evt_1", then, replayed_from="wbd_001")]
    history = History(rows)
    report = history.reconcile(tmp_path)
    assert report.actions == {"await": 1}
    assert (history.replays, history.bulk) == ([], [])


def test_deliveries_held_for_a_disabled_subscription_are_not_said_to_be_retried(
    tmp_path: Path,
) -> None:
    # Kirim keeps them pending while the subscription is disabled: "run reconcile again
    # after Kirim's retries end" would wait for ever
    rows = [delivery(n, n, f"evt_{n}", "pending") for n in range(5)]
    report = History(rows, sub_status="disabled").reconcile(tmp_path)
    assert report.actions == {"held": 5}
    assert not any("still retrying" in note for note in report.notes)
    assert len([e for e in report.errors if f"subscription {OURS} is disabled" in e]) == 1


@pytest.mark.parametrize("order", [1, -1])
def test_the_delivery_to_replay_is_a_terminal_one_then_the_newest(
    tmp_path: Path, order: int
) -> None:
    # a terminal delivery first (bulk_replay can take it), then the newest: the furthest
    # from Kirim's purge (it kept the first one seen among equals, whichever the page order)
    rows = [
        delivery(1, 5, "evt_x", "dead"),
        delivery(2, 50, "evt_x", "dead"),
        delivery(3, 90, "evt_x", "succeeded"),
        delivery(4, 5, "evt_y", "succeeded"),
        delivery(5, 50, "evt_y", "succeeded"),
    ]
    report = History(rows[::order]).reconcile(tmp_path, dry_run=True)
    chosen = {m.event_id: (m.delivery_id, m.status) for m in report.missing}
    assert chosen == {"evt_x": ("wbd_002", "dead"), "evt_y": ("wbd_005", "succeeded")}


@pytest.mark.parametrize("newest_first", [True, False])
def test_a_status_acknowledged_through_a_replay_of_a_replay_is_not_missing(
    tmp_path: Path, newest_first: bool
) -> None:
    """A bare status delivery that died, replayed, and whose replay was replayed again and
    taken: the chain (followed to its root however deep) is acknowledged, whichever order
    Kirim lists its rows in; a chain none of whose rows was taken is missing once."""
    rows = [
        delivery(1, 0, "wamid.Z", "dead", event_type="message.status"),
        delivery(2, 60, "wamid.Z", "dead", event_type="message.status", replayed_from="wbd_001"),
        delivery(3, 120, "wamid.Z", "succeeded", event_type="message.status",
                 replayed_from="wbd_002"),
        delivery(4, 0, "wamid.W", "dead", event_type="message.status"),
        delivery(5, 60, "wamid.W", "dead", event_type="message.status", replayed_from="wbd_004"),
        delivery(6, 120, "wamid.W", "dead", event_type="message.status", replayed_from="wbd_005"),
    ]  # fmt: skip
    if newest_first:
        rows.reverse()
    # the store holds a status of each message (which one it cannot tell from a bare row)
    for wamid in ("wamid.Z", "wamid.W"):
        body = json.dumps(testing.meta_status("sent", wamid=wamid, timestamp=1_779_000_000))
        Lake(tmp_path).write_events(parse_delivery(body.encode()))
    report = History(rows).reconcile(tmp_path, dry_run=True)
    assert [m.event_id for m in report.missing] == ["wamid.W"]


def test_the_purge_warning_counts_from_an_events_oldest_delivery(tmp_path: Path) -> None:
    """Kirim purges each delivery 30 days after it was made: a missing event is near the
    purge by its first delivery, however recent its replays are."""
    rows = [
        delivery(1, 0, "evt_old", "dead"),
        delivery(2, 10 * 86_400, "evt_old", "dead", replayed_from="wbd_001"),
    ]
    history = History(list(reversed(rows)))  # newest first, as Kirim lists them
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(history.handler),
                         sleep=lambda s: None)  # fmt: skip
    report = reconcile(tmp_path, client=client, since=BASE, until=BASE + timedelta(days=11),
                       now=lambda: (BASE + timedelta(days=28)).timestamp(), dry_run=True,
                       warn_days=3)  # fmt: skip
    assert [m.event_id for m in report.missing] == ["evt_old"]
    assert report.near_purge == 1


# ------------------------------------------------------------------ limits and plan details


def test_a_warning_of_the_whole_30_days_is_taken(tmp_path: Path) -> None:
    report = History([delivery(1, 0, "evt_1", "dead")]).reconcile(
        tmp_path, dry_run=True, warn_days=30
    )
    assert report.near_purge == 1


def test_an_until_in_the_future_ends_the_range_now(tmp_path: Path) -> None:
    history = History([delivery(1, 0, "evt_1", "dead")])
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(history.handler),
                         sleep=lambda s: None)  # fmt: skip
    now = BASE + timedelta(days=1)
    report = reconcile(tmp_path, client=client, since=BASE, until=BASE + timedelta(days=5),
                       now=now.timestamp, dry_run=True)  # fmt: skip
    assert (report.since, report.until) == (BASE, now)


def test_the_purge_warning_takes_a_delivery_exactly_at_its_edge(tmp_path: Path) -> None:
    """Near the purge means within ``warn_days`` of it, the edge included."""
    history = History([delivery(1, 86_400, "evt_edge", "dead")])
    client = KirimClient("http://k", "kdv_live_x", transport=httpx.MockTransport(history.handler),
                         sleep=lambda s: None)  # fmt: skip
    report = reconcile(tmp_path, client=client, since=BASE, until=BASE + timedelta(days=2),
                       now=lambda: (BASE + timedelta(days=28)).timestamp(), dry_run=True,
                       warn_days=3)  # fmt: skip
    assert report.warn_before == BASE + timedelta(days=1)
    assert report.near_purge == 1


def test_missing_events_are_listed_by_the_day_they_happened_first(tmp_path: Path) -> None:
    # an event of the day before, delivered after one of this day: its day comes first
    early = testing.kirim_event(
        "message.sent", event_id="evt_early", created_at=BASE - timedelta(hours=11)
    )
    late = testing.kirim_event(event_id="evt_late", created_at=BASE)
    rows = [delivery(1, 10, "evt_late", "dead", payload=json.dumps(late)),
            delivery(2, 100, "evt_early", "dead", payload=json.dumps(early))]  # fmt: skip
    report = History(rows).reconcile(tmp_path, dry_run=True)
    assert [(m.event_id, m.day) for m in report.missing] == [
        ("evt_early", "2026-04-30"),
        ("evt_late", "2026-05-01"),
    ]
    assert report.by_type_day == [  # by day first, then type
        ("message.sent", "2026-04-30", 1),
        ("contact.updated", "2026-05-01", 1),
    ]


def test_the_first_window_starts_before_its_first_row() -> None:
    """Kirim's ``created_after`` may exclude its instant: the first window opens a second
    early; the next ones open halfway from the row before theirs, where the window before
    closes (a row in exactly one window, and none on an edge)."""
    base = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [("wbs_A", "dead", base + timedelta(seconds=i)) for i in range(1500)]
    first, second = plan_windows(rows)
    assert first.created_after == base - timedelta(seconds=1)
    assert second.created_after == base + timedelta(seconds=999.5) == first.created_before


def test_a_window_counts_only_the_rows_of_its_own_status(tmp_path: Path) -> None:
    rows = [delivery(n, n, f"evt_{n}", "dead") for n in range(30)]
    rows += [delivery(n, n - 30, f"evt_{n}", "failed") for n in range(30, 60)]
    report = History(rows).reconcile(tmp_path, dry_run=True)
    assert sorted((w.status, w.rows) for w in report.windows) == [("dead", 30), ("failed", 30)]


def test_a_window_capped_again_and_again_is_halved_until_it_is_not(tmp_path: Path) -> None:
    # capped while a window spans more than 5 minutes: 60 -> 30 -> 15 -> 7.5 -> 3.75 minutes
    rows = [delivery(n, n * 100, f"evt_{n}", "dead") for n in range(30)]
    calls: list[float] = []

    class Capping(History):
        def handler(self, request: httpx.Request) -> httpx.Response:
            if request.method != "POST" or request.url.path.endswith("/replay"):
                return super().handler(request)
            body = json.loads(request.content)
            lo, hi = (_at(body[k]) for k in ("created_after", "created_before"))
            calls.append((hi - lo).total_seconds())
            capped = hi - lo > timedelta(minutes=5)
            return httpx.Response(202, json={"data": {"enqueued": 1, "capped": capped}})

    report = Capping(rows).reconcile(tmp_path)
    assert report.actions == {"bulk_replay": 30}
    assert report.errors == []
    assert min(calls) < 300
    assert len(calls) > 8


def test_a_subscription_shown_without_a_status_is_taken_to_be_active(tmp_path: Path) -> None:
    class NoStatus(History):
        def handler(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.startswith("/v1/webhook_subscriptions/"):
                sub = {"id": request.url.path.split("/")[-1]}
                return httpx.Response(200, json={"data": sub})
            return super().handler(request)

    history = NoStatus([delivery(1, 0, "evt_1", "dead")])
    report = history.reconcile(tmp_path)
    assert history.replays == ["wbd_001"]
    assert report.actions == {"replay": 1}


def test_events_the_history_carries_are_imported_even_for_a_disabled_subscription(
    tmp_path: Path,
) -> None:
    """Only what Kirim must send is held; a payload in the history needs no delivery."""
    body = json.dumps(testing.kirim_event(event_id="evt_1", created_at=BASE))
    rows = [delivery(1, 0, "evt_1", "dead", payload=body), delivery(2, 1, "evt_2", "dead")]
    report = History(rows, sub_status="disabled").reconcile(tmp_path)
    assert report.actions == {"import": 1, "held": 1}
    assert report.imported == 1
    assert Lake(tmp_path).events().collect()["event_key"].to_list() == ["evt_1"]


@pytest.mark.parametrize(("stored", "lost"), [(6, 6), (202, 101)])
def test_a_journal_that_never_said_where_it_flushes_still_finds_a_small_or_half_loss(
    tmp_path: Path, stored: int, lost: int
) -> None:
    """The lake mix-up guess needs more than 100 events lost and more than half of those
    the index remembers: below either, they are taken for lost."""

    def body(n: int) -> str:
        at = BASE - timedelta(days=n % 2)  # two days: two lake files
        return json.dumps(testing.kirim_event(event_id=f"evt_{n}", created_at=at))

    rows = [delivery(n, n, f"evt_{n}", "succeeded", payload=body(n)) for n in range(stored)]
    with Journal(tmp_path) as journal:
        journal.append([r for n in range(stored) for r in parse_delivery(body(n).encode())])
        journal.flush(Lake(tmp_path))
    with sqlite3.connect(tmp_path / "_journal" / "journal.sqlite3") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'lake'")
    gone = _lake_files(tmp_path)
    if lost < stored:
        gone = [p for p in gone if "2026-05-01" in str(p)]
    for path in gone:
        path.unlink()
    report = History(rows).reconcile(tmp_path, dry_run=True)
    assert report.lost == lost
    assert not any("they were not taken for lost" in note for note in report.notes)


def test_bare_deliveries_without_an_event_id_are_one_missing_event_each(tmp_path: Path) -> None:
    rows = [delivery(1, 0, None, "dead"), delivery(2, 1, None, "dead")]
    history = History(rows)
    report = history.reconcile(tmp_path)
    assert len(report.missing) == 2
    assert report.replayed + report.bulk_enqueued == 2


def test_the_third_shapes_status_name_shares_its_id_as_metas_does(tmp_path: Path) -> None:
    """``message.status_updated`` rows of one message (two statuses, two chains) are two
    missing events, not one event id."""
    rows = [
        delivery(1, 0, "msg_1", "dead", event_type="message.status_updated"),
        delivery(2, 5, "msg_1", "dead", event_type="message.status_updated"),
    ]
    report = History(rows).reconcile(tmp_path, dry_run=True)
    assert sorted(m.delivery_id or "" for m in report.missing) == ["wbd_001", "wbd_002"]


def test_a_named_subscription_in_a_quiet_range_adds_no_note(tmp_path: Path) -> None:
    report = History([]).reconcile(tmp_path, dry_run=True, subscription_id=OURS)
    assert (report.missing, report.notes) == ([], [])


class OverlappingHistory(History):
    """Two pages whose boundaries overlap by one row, read again after it moved on: Kirim
    had not had our endpoint's answer yet at the first read (``pending``)."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method != "GET" or "/webhook_subscriptions" in request.url.path:
            return super().handler(request)
        self.pages += 1
        first = request.url.params.get("cursor") is None
        rows = self.rows[:2] if first else self.rows[2:]
        page = {"data": rows, "has_more": first, "next_cursor": "c2" if first else None}
        return httpx.Response(200, json=page)


def test_a_row_read_again_after_its_delivery_moved_on_counts_as_it_is_now(
    tmp_path: Path,
) -> None:
    # The walk scanned a row read twice only once, the first time: its delivery, pending
    # then and acknowledged since, was reported missing (an overlap of Kirim's pages, or a
    # new chain after a refused cursor, reads a row again).
    rows = [
        delivery(1, 50, "wamid.A", "succeeded", event_type="message.status"),
        delivery(2, 40, "wamid.B", "pending", event_type="message.status"),
        delivery(2, 40, "wamid.B", "succeeded", event_type="message.status"),
        delivery(3, 30, "wamid.C", "succeeded", event_type="message.status"),
    ]
    lake = Lake(tmp_path)
    for wamid in ("wamid.A", "wamid.B", "wamid.C"):  # the store holds a status of each
        lake.write_events(
            parse_delivery(json.dumps(testing.meta_status("sent", wamid=wamid)).encode())
        )
    history = OverlappingHistory(rows)
    report = history.reconcile(tmp_path, dry_run=True)
    assert history.pages == 2
    assert report.missing == []
    # an unchanged row read again is still scanned once
    rows[2] = rows[1] = delivery(2, 40, "wamid.B", "succeeded", event_type="message.status")
    again = OverlappingHistory(rows).reconcile(tmp_path, dry_run=True)
    assert (again.missing, again.history_rows) == ([], 3)


def test_rows_outside_a_range_kirim_ignored_are_skipped_and_said(world: World) -> None:
    lo, hi = world.window
    # the five minutes before the history: a Kirim ignoring the range sends all of it
    since, until = lo - timedelta(minutes=5), lo
    t = FakeTime(hi.timestamp())
    ignores = FaultConfig(ignored_filters=("created_after", "created_before"))
    _, client = world.api(t, faults=ignores)
    report = reconcile(world.home, client=client, since=since, until=until, dry_run=True,
                       journal=world.journal, now=t.clock)  # fmt: skip
    every = len(world.emu.store.deliveries)
    assert report.missing == []  # none of them is of this range
    assert report.history_rows == 0
    assert dict(report.filtered.outside) == {"--since/--until": every}
    assert (
        f"Kirim returned {every} row(s) outside --since/--until (it may ignore that filter or"
        " know it by another name): skipped, not compared with the lake"
    ) in report.notes


class ExclusiveAfter:
    """ASGI middleware over the emulator: ``bulk_replay``'s ``created_after`` excludes its
    own instant (the emulator's includes it; kirim-api.md §7.4 says neither), so with the
    emulator's exclusive ``created_before`` both ends of a window are exclusive."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("path") != "/v1/webhook_deliveries/bulk_replay":
            await self.app(scope, receive, send)
            return
        body = await _request_json(receive)
        after = datetime.fromisoformat(body["created_after"]) + timedelta(microseconds=1)
        body["created_after"] = after.isoformat()
        await self.app(scope, _once(body), send)


def test_bulk_windows_leave_no_row_on_an_edge_kirim_may_exclude(tmp_path: Path) -> None:
    # Windows after the first opened at their first row's instant, the one the window
    # before closed at: where Kirim excludes both ends, as backfill allows for
    # (HISTORY_OVERLAP), that row was in no window and was never replayed, without a word.
    from kirim_events.emulator import Emulator, create_app

    emu = Emulator(seed=4)
    sub = emu.subscribe("http://collector.test/webhooks/kirim")
    start = float(int(BASE.timestamp()))
    originals = []
    for i in range(1500):  # two windows; whole seconds, as the API shows them
        row = emu.store.new_delivery(
            sub, event_id=f"evt_{i:05d}", event_type="contact.updated", source="kirim",
            event_keys=(f"evt_{i:05d}",), payload=b"{}", now=start + i,
        )  # fmt: skip
        row.status, row.attempt, row.response_status_code = "dead", 8, 500
        originals.append(row.id)
    t = FakeTime(start + 86400)
    app = create_app(emu.store, api_keys=emu.api_keys, clock=t.clock, write_limit=600)
    client = KirimClient("http://kirim.test", emu.api_keys[0], sleep=t.sleep, clock=t.clock,
                         transport=SyncASGI(StripPayload(ExclusiveAfter(app))))  # fmt: skip
    report = reconcile(tmp_path, client=client, since=BASE - timedelta(minutes=1),
                       until=BASE + timedelta(hours=1), now=t.clock)  # fmt: skip
    assert report.bulk_calls == 2
    replayed = Counter(r.replayed_from for r in emu.store.deliveries if r.replayed_from)
    assert set(replayed) == set(originals)
    assert max(replayed.values()) == 1


class MillisecondEdges:
    """``ExclusiveAfter`` behind a Kirim that reads ``created_after`` / ``created_before`` to
    whole milliseconds, the precision its times show (a JavaScript ``Date`` drops the rest):
    both ends exclusive, at milliseconds."""

    def __init__(self, app: Any) -> None:
        self.app = ExclusiveAfter(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("path") != "/v1/webhook_deliveries/bulk_replay":
            await self.app(scope, receive, send)
            return
        body = await _request_json(receive)
        for name in ("created_after", "created_before"):
            when = datetime.fromisoformat(body[name])
            body[name] = when.replace(microsecond=when.microsecond // 1000 * 1000).isoformat()
        await self.app(scope, _once(body), send)


async def _request_json(receive: Any) -> Any:
    """The JSON body of an ASGI request, read to its end."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return json.loads(b"".join(chunks))


def _once(body: Any) -> Any:
    """An ASGI ``receive`` giving the request ``body`` (as JSON) once, then a disconnect."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": json.dumps(body).encode()}

    return receive


def _dead_rows_apart(step: float, n: int = 1500) -> tuple[Any, str, float, list[str]]:
    from kirim_events.emulator import Emulator

    emu = Emulator(seed=4)
    sub = emu.subscribe("http://collector.test/webhooks/kirim")
    start = float(int(BASE.timestamp()))
    originals = []
    for i in range(n):
        row = emu.store.new_delivery(
            sub, event_id=f"evt_{i:05d}", event_type="contact.updated", source="kirim",
            event_keys=(f"evt_{i:05d}",), payload=b"{}", now=start + i * step,
        )  # fmt: skip
        row.status, row.attempt, row.response_status_code = "dead", 8, 500
        originals.append(row.id)
    return emu, sub, start, originals


def test_bulk_windows_of_rows_a_millisecond_apart_miss_none_at_kirims_precision(
    tmp_path: Path,
) -> None:
    # Halfway between rows 1 ms apart is a half millisecond: a Kirim reading the edge to
    # its milliseconds read it as the earlier row's time, which both windows then excluded.
    from kirim_events.emulator import create_app

    emu, _, start, originals = _dead_rows_apart(0.001)
    t = FakeTime(start + 86400)
    app = create_app(emu.store, api_keys=emu.api_keys, clock=t.clock, write_limit=600)
    client = KirimClient("http://kirim.test", emu.api_keys[0], sleep=t.sleep, clock=t.clock,
                         transport=SyncASGI(StripPayload(MillisecondEdges(app))))  # fmt: skip
    report = reconcile(tmp_path, client=client, since=BASE - timedelta(minutes=1),
                       until=BASE + timedelta(hours=1), now=t.clock)  # fmt: skip
    assert report.bulk_calls == 2
    replayed = {r.replayed_from for r in emu.store.deliveries if r.replayed_from}
    assert replayed == set(originals)


def test_no_window_edge_falls_on_a_row_a_microsecond_from_the_next() -> None:
    # Kirim's times may carry microseconds (kirim-api.md §8: 0-9 fraction digits): halfway
    # between rows 1 µs apart rounded to the earlier row's time, an edge both windows exclude.
    base = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [("wbs_A", "dead", base + timedelta(microseconds=i)) for i in range(1500)]
    first, second = plan_windows(rows)
    edge_row = rows[999][2]  # the first window's last row

    # whichever ends Kirim includes, and at micro- or milliseconds, the row is in a window
    def to_ms(d: datetime) -> datetime:
        return d.replace(microsecond=d.microsecond // 1000 * 1000)

    for read in (lambda d: d, to_ms):
        in_first = read(first.created_after) < edge_row < read(first.created_before)
        in_second = read(second.created_after) < edge_row < read(second.created_before)
        assert in_first or in_second


def test_a_capped_window_halved_on_a_row_still_replays_it(tmp_path: Path) -> None:
    # Kirim capped a window (rows made since the plan, or none planned): its halves met at
    # its midpoint, which may be a row's own time; with both ends exclusive that row was in
    # neither half, and never replayed.
    from kirim_events.emulator import create_app
    from kirim_events.reconcile_report import BulkWindow, ReconcileReport
    from kirim_events.reconcile_windows import bulk_replay_window

    emu, sub, start, originals = _dead_rows_apart(0.001, n=3000)
    t = FakeTime(start + 86400)
    app = create_app(emu.store, api_keys=emu.api_keys, clock=t.clock, write_limit=600)
    client = KirimClient("http://kirim.test", emu.api_keys[0], sleep=t.sleep, clock=t.clock,
                         transport=SyncASGI(StripPayload(MillisecondEdges(app))))  # fmt: skip
    first = datetime.fromtimestamp(start, UTC)
    # halved at first + 1.5 s: row 1500's own time, past the 1000 the capped call replayed
    window = BulkWindow(
        sub.id, "dead", first - timedelta(seconds=1), first + timedelta(seconds=4), 0
    )
    report = ReconcileReport(since=first, until=first + timedelta(seconds=4), dry_run=False)
    bulk_replay_window(client, window, report)
    assert not report.errors
    replayed = {r.replayed_from for r in emu.store.deliveries if r.replayed_from}
    assert replayed == set(originals)


@pytest.mark.parametrize("rerun_until", ["range end", "now"])
def test_a_rerun_after_replays_that_died_recovers_every_event(
    world: World, rerun_until: str
) -> None:
    """A first recovery's replays died too (the collector still broken): the replay rows
    are dead or failed in turn, their originals out of Kirim's dead-letter queue. A rerun of
    the same range (--until its end, as a daily job reconciling yesterday runs) sees the
    originals but not their replays, made after --until: its windows were sent, Kirim
    enqueued nothing for those rows, and reconcile said they were replayed in bulk while
    the lake still lacked them. Reconcile now checks each window's enqueued against the
    queued rows it holds and replays the events of a window that fell short one by one;
    with the replays in the range (--until now) the windows take them, nothing alone."""
    since, until = world.window
    t = FakeTime(until.timestamp() + 3600)
    _, client = world.api(t, read_limit=10**6, write_limit=10**6,
                          transport_wrapper=StripPayload)  # fmt: skip
    rows = world.emu.store.deliveries
    dead = [r for r in rows if r.status == "dead"]
    failed = [r for r in rows if r.status == "failed"]
    assert len(dead) > 5
    assert len(failed) > 3
    assert client.bulk_replay(dead[0].subscription_id).enqueued == len(dead)
    for r in failed[:3]:
        client.replay(r.id)
    world.deliver_pending()  # the collector is still broken: each replay dies in turn
    assert world.emu.unacknowledged_event_keys() == world.history_keys - lake_keys(world)
    world.collector.healthy = True
    t.sleep(3600)
    end = until if rerun_until == "range end" else datetime.fromtimestamp(t.clock(), UTC)
    report = reconcile(world.home, client=client, since=since, until=end,
                       journal=world.journal, now=t.clock)  # fmt: skip
    assert report.errors == []
    assert report.actions["bulk_replay"] > 0
    world.deliver_pending()
    assert lake_keys(world) == world.history_keys  # every event, as the ground truth says
    assert world.emu.unacknowledged_event_keys() == set()
    if rerun_until == "now":  # the windows took the replays: nothing was asked twice
        assert report.replayed == 0
    else:
        assert report.replayed == len(report.missing)
        assert any("left Kirim's dead-letter queue" in note for note in report.notes)


def lake_keys(world: World) -> set[str]:
    events, _ = lake_frames(world.home)
    return set(events["event_key"].to_list())
