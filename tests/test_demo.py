"""The demo runs the whole pipeline and its lake equals the emulator's ground truth."""

from __future__ import annotations

import http.server
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import polars as pl
import pytest
from nosecrets import places_holding
from racing import compact_with_late_copy
from typer.testing import CliRunner
from waiting import wait_until

from kirim_events import Lake, demo, testing
from kirim_events.cli import app
from kirim_events.demo import DemoReport, run_demo
from kirim_events.errors import ConfigError
from kirim_events.events import EventRecord, parse_delivery
from kirim_events.events_record import EVENT_FIELDS
from kirim_events.journal import Journal
from kirim_events.lake import LAKE_ENTRIES
from kirim_events.lake.compact import CompactionReport


def test_demo_end_to_end(tmp_path: Path) -> None:
    stages: list[str] = []
    report = run_demo(tmp_path, scale=0.15, seed=3, on_progress=lambda s, d, t: stages.append(s))
    # Kirim gave up on the events it sent while the collector was down, those and no others
    # were never acknowledged, and reconcile found exactly those.
    assert report.dead_or_failed > 0
    assert report.outage_events >= 5
    assert report.unacknowledged_events == report.outage_events
    assert report.reconcile_found_exactly
    assert report.reconcile_missing == report.unacknowledged_events
    assert report.reconcile_recovered == report.unacknowledged_events
    assert report.lake_matches_truth, report.notes
    assert report.duplicates_sent > 0
    assert report.lake_events == report.world_events
    for stage in ("sending", "collector restart", "reconciling", "compacting"):
        assert stage in stages
    # After compaction a plain reader sees every event exactly once.
    n, distinct = duckdb.sql(
        f"select count(*), count(distinct event_key) from read_parquet("
        f"'{tmp_path}/events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0]
    assert n == distinct == report.world_events
    # Deliveries include the collector's receipts (with duplicates) and reconcile's imports.
    outcomes = set(Lake(tmp_path).deliveries().select("outcome").collect()["outcome"].to_list())
    assert {"new", "duplicate"} <= outcomes
    assert Lake(tmp_path).events().filter(pl.col("origin") == "backfill").collect().height > 0
    # the demo asks for Kirim's `kirim` block (off by default): every message it sent is
    # linked to its conversation
    timelines = Lake(tmp_path).message_timelines().collect()
    assert timelines.height > 0
    assert timelines["conversation_id"].null_count() == 0
    # no secret of the run (the first webhook secret, the one minted half way, the API key)
    # is kept anywhere in the folder: journal, state, lake
    assert places_holding(tmp_path, "whsec_", "kdv_") == []


def test_demo_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--data", str(tmp_path), "--scale", "0.1", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "lake equals the emulator's ground truth" in result.output
    assert "Delivery funnel" in result.output
    assert any(tmp_path.glob("events/**/*.parquet"))
    assert "whsec_" not in result.output
    assert "kdv_" not in result.output
    # the notebooks open ./data: the hint says how to point them at this lake instead
    assert "KIRIM_DATA_DIR=" in result.output


def test_demo_refuses_a_bad_scale(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--data", str(tmp_path), "--scale", "0"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--scale'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_demo_failing_half_way_leaves_nothing_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in a notebook kernel, which lives on, a failed run left its collector's journal
    # thread and database open
    def journals() -> int:
        return sum(t.name == "kirim-journal" and t.is_alive() for t in threading.enumerate())

    deliver = demo._deliver
    calls: list[int] = []

    async def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(journals())
        if len(calls) == 3:  # the day's last part, the restarted collector serving it
            raise RuntimeError("sending broke")
        return await deliver(*args, **kwargs)

    bound: list[socket.socket] = []
    listen = demo.listen_socket

    def listening(host: str, port: int) -> socket.socket:
        bound.append(listen(host, port))
        return bound[-1]

    before = journals()
    monkeypatch.setattr(demo, "_deliver", broken)
    monkeypatch.setattr(demo, "listen_socket", listening)
    with pytest.raises(RuntimeError, match="sending broke"):
        run_demo(tmp_path / "data", scale=0.05)
    assert calls[2] == before + 1  # its journal was open when the run failed
    assert journals() == before
    # both ports, and the collector's bound again after its outage, are let go
    assert len(bound) == 3
    assert [s.fileno() for s in bound] == [-1, -1, -1]


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_a_bad_scale_is_refused_before_anything_is_written(tmp_path: Path, scale: float) -> None:
    with pytest.raises(ConfigError, match=r"scale must be a positive number .*, got "):
        run_demo(tmp_path / "data", scale=scale)
    assert list(tmp_path.iterdir()) == []


def test_a_scale_above_the_cap_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # at 1e6 the demo would hold 4 billion events in memory and send them for days
    with pytest.raises(
        ConfigError, match=r"scale must be at most 25 \(about 100,000 events\), got 1e\+06"
    ):
        run_demo(tmp_path / "data", scale=1e6)
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(app, ["demo", "--data", str(tmp_path / "data"), "--scale", "26"])
    assert result.exit_code == 2
    assert "Invalid value for '--scale'" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "   "])
def test_a_blank_folder_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # "" is the current folder to Path: the demo's lake went wherever the shell stood
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="data folder name is blank"):
        run_demo(name, scale=0.05)
    assert list(tmp_path.iterdir()) == []


def refused_by_library_and_cli(folder: Path, reason: str) -> None:
    """The demo refuses ``folder`` with ``reason``: run_demo raises ConfigError, and the CLI
    exits 2 printing the error alone (no empty progress display before it)."""
    with pytest.raises(ConfigError, match=reason):
        run_demo(folder, scale=0.05)
    result = CliRunner().invoke(app, ["demo", "--data", str(folder), "--scale", "0.05"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert reason in result.stderr


def test_a_file_given_as_the_folder_is_named_as_a_file(tmp_path: Path) -> None:
    # mkdir's own "File exists" left the user guessing which file, and why that mattered
    file = tmp_path / "data"
    file.write_bytes(b"mine")
    refused_by_library_and_cli(file, "data is a file, not a folder")
    assert file.read_bytes() == b"mine"


def test_a_busy_port_is_a_config_error_naming_it_and_nothing_is_written(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            run_demo(tmp_path / "data", scale=0.05, port=port)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_port_out_of_range_is_a_config_error(tmp_path: Path, port: int) -> None:
    with pytest.raises(ConfigError, match=rf"port must be 0 \(a free one\) to 65535, got {port}"):
        run_demo(tmp_path / "data", scale=0.05, port=port)
    assert not (tmp_path / "data").exists()


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    precious = tmp_path / "events" / "mine.parquet"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"not the demo's")
    refused_by_library_and_cli(tmp_path, "not written by the demo")
    assert precious.read_bytes() == b"not the demo's"


def test_a_folder_starting_with_a_tilde_is_checked_where_the_demo_writes(
    tmp_path: Path, away_from_home: Path
) -> None:
    # the collector, journal and lake expand "~" (a3f34c8, a187a7f); run_demo checked,
    # locked and marked the words given, a folder named "~" where it ran, and wrote its
    # emulated events into ~/kirim all the same, beside the real ones there
    precious = tmp_path / "kirim" / "events" / "mine.parquet"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"not the demo's")
    elsewhere = away_from_home
    with pytest.raises(ConfigError, match="not written by the demo"):
        run_demo("~/kirim", scale=0.02)
    assert sorted(p.name for p in (tmp_path / "kirim").iterdir()) == ["events"]
    assert precious.read_bytes() == b"not the demo's"
    assert list(elsewhere.iterdir()) == []


def test_demo_twice_on_one_folder_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative folder, as README's `kirim-events demo` uses
    first = run_demo("data", scale=0.05, seed=2)
    tmp_path = tmp_path / "data"
    lake = Lake(tmp_path)  # reading the demo's lake (as the report and notebooks do) is fine
    assert lake.message_timelines().collect().height > 0
    assert lake.sql("select count(*) from events").fetchall() == [(first.lake_events,)]
    second = run_demo("data", scale=0.05, seed=2)
    # the second run says it replaced the first's lake (it did so without a word)
    assert first.notes == []
    assert second.notes == [
        "data held an earlier demo's lake: it was cleared, so this run started afresh"
    ]
    for report in (first, second):
        assert report.lake_matches_truth, report.notes
        assert report.reconcile_found_exactly
    assert second.lake_events == second.world_events
    # The outage's cost does not depend on the machine's speed: the same seed loses the same
    # deliveries. (It did: the outage was timed against traffic that kept flowing.)
    assert _outage(first) == _outage(second)
    assert first.unacknowledged_events == first.outage_events > 0


def _outage(report: DemoReport) -> tuple[int, ...]:
    return (
        report.world_events,
        report.deliveries,
        report.dead_or_failed,
        report.unacknowledged_events,
        report.reconcile_missing,
        report.reconcile_recovered,
    )


def test_demo_refuses_to_clear_its_folder_once_real_events_came_in(tmp_path: Path) -> None:
    # `collect --data DIR` into a demo folder, then `demo` again: it cleared the real event.
    run_demo(tmp_path, scale=0.05, seed=2)
    real = parse_delivery(testing.encode(testing.kirim_event(event_id="evt_REAL")), {})
    with Journal(tmp_path) as journal:
        assert journal.append(real) == [True]
        journal.flush(Lake(tmp_path))
    with pytest.raises(ConfigError, match="events were added since"):
        run_demo(tmp_path, scale=0.05)
    events = Lake(tmp_path).events().filter(pl.col("event_id") == "evt_REAL").collect()
    assert events.height == 1


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "--port", "18999"],
        ["backfill", "--since", "1d", "--no-progress"],
        ["reconcile", "--since", "1d"],
    ],
)
def test_writing_commands_refuse_the_demo_folder(tmp_path: Path, args: list[str]) -> None:
    # The demo writes ./data, the default folder: `collect` after `demo` stored real events
    # beside the emulated ones, and every report counted them together.
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state" / "demo.json").write_text('{"seed": 7, "scale": 1.0}\n')
    env = {
        "KIRIM_WEBHOOK_SECRET": "whsec_test",
        "KIRIM_KEY": "kdv_live_AAAAAAAAAAAAAAAAAAAAAAAA",
        "KIRIM_API_URL": "http://127.0.0.1:9",  # never reached
    }
    result = CliRunner().invoke(app, [*args, "--data", str(tmp_path)], env=env)
    assert result.exit_code == 2, result.output
    assert "holds the demo's emulated events" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_state"]


def test_a_dry_run_reconcile_may_read_the_demo_folder(tmp_path: Path) -> None:
    # Reading changes nothing: the dry run is not refused; it goes on to ask the API (here a
    # server that knows no path, so it ends with Kirim's 404).
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state" / "demo.json").write_text("{}\n")
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "KIRIM_KEY": "kdv_live_AAAAAAAAAAAAAAAAAAAAAAAA",
            "KIRIM_API_URL": f"http://127.0.0.1:{server.server_port}",
        }
        args = ["reconcile", "--since", "1d", "--dry-run", "--data", str(tmp_path)]
        result = CliRunner().invoke(app, args, env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert "demo's emulated events" not in result.output
    assert "404" in result.output
    assert _NotFound.paths
    assert _NotFound.paths[0].startswith("/v1/webhook_deliveries")


class _NotFound(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _NotFound.paths.append(self.path)
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _demo_sending(data: Path) -> subprocess.Popen[str]:
    """``kirim-events demo`` on ``data`` in a process of its own, once the collector's first
    flush is written: the traffic is under way, requests in flight."""
    cmd = [sys.executable, "-m", "kirim_events", "demo", "--data", str(data), "--scale", "0.5"]
    # (a child of a background job would start with SIGINT ignored)
    interruptible = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or any(data.glob("events/**/*.parquet")),
            120,
            what="the demo's first flush",
        )
        assert proc.poll() is None, proc.communicate()
    except BaseException:
        proc.kill()
        raise
    return proc


def _stopped(proc: subprocess.Popen[str], *signals: int, gap: float = 0.0) -> tuple[int, str]:
    """Send ``signals`` to ``proc`` (``gap`` s apart); its exit code and stderr."""
    try:
        for n, sig in enumerate(signals):
            if n:
                time.sleep(gap)
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def _interrupted_line(data: Path) -> list[str]:
    return [
        f"interrupted: the demo stopped part way; {data} holds what it wrote so far, and the"
        " next kirim-events demo there starts afresh"
    ]


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_stop_while_sending_is_one_line_and_the_next_run_starts_afresh(
    tmp_path: Path, sig: int, code: int
) -> None:
    # Ctrl-C half way through the traffic printed an "Exception in ASGI application"
    # traceback for each request in flight (the servers were torn down under them) and then
    # exited without a word on what was left in the folder. SIGTERM (kill, docker stop)
    # killed it without a word, the servers and the journal not stopped.
    data = tmp_path / "data"
    returncode, err = _stopped(_demo_sending(data), sig)
    assert returncode == code, err
    assert err.splitlines() == _interrupted_line(data)
    again = run_demo(data, scale=0.05)
    assert again.lake_matches_truth, again.notes


def test_a_second_ctrl_c_while_the_demo_stops_is_quiet_too(tmp_path: Path) -> None:
    # Ctrl-C twice in quick succession: asyncio.run's handler raised the second one wherever
    # its loop was, in the middle of the servers' shutdown, and the requests in flight died
    # with "Exception in ASGI application" tracebacks (in most tries 10-50 ms apart; a
    # few tries, as one may pass by luck)
    for n, gap in enumerate([0.01, 0.03, 0.01, 0.05]):
        data = tmp_path / f"data{n}"
        returncode, err = _stopped(_demo_sending(data), signal.SIGINT, signal.SIGINT, gap=gap)
        assert returncode == 130, err
        assert err.splitlines() == _interrupted_line(data), f"try {n + 1}, {gap} s apart"


def test_a_second_demo_on_a_folder_a_demo_is_writing_is_refused(tmp_path: Path) -> None:
    # `kirim-events demo` in one terminal and notebook 01 (whose first cell runs the demo
    # while ./data holds no event yet) at once: the second cleared the first's lake under
    # it, and the first died with "journal ... was deleted, moved or replaced while open"
    folder = tmp_path / "data"
    first: list[DemoReport | BaseException] = []

    def run() -> None:
        try:
            first.append(run_demo(folder, scale=0.3, seed=4))
        except BaseException as exc:
            first.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: first or (folder / demo.DEMO_MARKER).is_file(), 60, what="the start")
        assert not first, first
        refused_by_library_and_cli(folder, f"a demo is running on {folder} now")
    finally:
        thread.join(120)
    assert len(first) == 1
    assert isinstance(first[0], DemoReport), first
    assert first[0].lake_matches_truth, first[0].notes


def test_the_closing_hint_can_be_pasted_into_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run outside the repository, in a folder whose name has a space: the hint said
    # `kirim-events report --data /my folder/data` (two arguments once pasted) and, the
    # folder being ./data, sent the notebooks to the repository's ./data, not this one.
    here = tmp_path / "my folder"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("KIRIM_DATA_DIR", raising=False)
    for args, report, lake in [
        ([], "--data data", here / "data"),
        (["--data", "the lake"], "--data 'the lake'", here / "the lake"),
    ]:
        result = CliRunner().invoke(app, ["demo", *args, "--scale", "0.05"])
        assert result.exit_code == 0, result.output
        last = result.output.strip().splitlines()[-1]
        assert f"try: kirim-events report {report}, or open" in last
        assert last.endswith(f"with KIRIM_DATA_DIR='{lake}' set")


def test_the_closing_hint_runs_kirim_events_as_the_user_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's first command runs `.venv/bin/kirim-events demo` without activating the
    # environment; the hint's `kirim-events report` then met "command not found".
    monkeypatch.chdir(tmp_path)
    script = Path(".venv") / "bin" / "kirim-events"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", "/nonexistent")
    result = CliRunner().invoke(app, ["demo", "--scale", "0.05"])
    assert result.exit_code == 0, result.output
    assert "try: .venv/bin/kirim-events report --data data, or" in result.output
    # found on PATH (an activated environment): the plain name
    monkeypatch.setenv("PATH", str(script.parent.resolve()))
    result = CliRunner().invoke(app, ["demo", "--scale", "0.05"])
    assert result.exit_code == 0, result.output
    assert "try: kirim-events report --data data, or" in result.output


def test_a_kernel_interrupt_stops_a_demo_run_from_a_notebook(tmp_path: Path) -> None:
    # In a notebook (a running event loop) the demo runs on a thread; the kernel's
    # interrupt (KeyboardInterrupt in the main thread) took effect only once that thread had
    # run the whole demo, so the interrupt button seemed to do nothing.
    import _thread
    import asyncio

    from kirim_events.stopsignals import handling

    folder = tmp_path / "data"

    def interrupt_once_sending() -> None:
        wait_until(lambda: any(folder.glob("events/**/*.parquet")), 120, what="a first flush")
        _thread.interrupt_main()

    async def cell() -> None:  # a notebook cell: the kernel's loop runs, SIGINT raises
        with handling(signal.default_int_handler, (signal.SIGINT,)):
            threading.Thread(target=interrupt_once_sending, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                run_demo(folder, scale=0.5)

    asyncio.run(cell())
    # stopped while sending: reconcile never ran (it had recovered the outage's events)
    assert Lake(folder).events().filter(pl.col("origin") == "backfill").collect().height == 0
    assert not [t for t in threading.enumerate() if t.name == "kirim-journal" and t.is_alive()]
    assert run_demo(folder, scale=0.05).lake_matches_truth


def test_a_stop_while_the_demo_clears_its_folder_leaves_one_the_next_run_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C while a run cleared an earlier demo's lake: the next run refused the folder,
    # "events were added since" (the sealed contents no longer matched), or, once the
    # marker's _state/ had gone before the events, "not written by the demo".
    import contextlib
    import shutil

    first = tmp_path / "first"
    run_demo(first, scale=0.05, seed=2)
    entries = len([p for p in first.iterdir() if p.name in LAKE_ENTRIES])
    remove = shutil.rmtree
    for stop_after in range(1, entries):
        folder = tmp_path / f"stopped-{stop_after}"
        shutil.copytree(first, folder)
        gone: list[str] = []

        def interrupted(
            path: Path,
            *args: Any,
            gone: list[str] = gone,
            stop_after: int = stop_after,
            **kwargs: Any,
        ) -> None:
            remove(path, *args, **kwargs)
            gone.append(Path(path).name)
            if len(gone) == stop_after:  # Ctrl-C right after this one went
                raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(demo.shutil, "rmtree", interrupted)
            with pytest.raises(KeyboardInterrupt), contextlib.ExitStack() as held:
                demo._prepare(folder, held)
        with contextlib.ExitStack() as held:
            demo._prepare(folder, held)  # the next run takes the folder
        assert not [p for p in folder.iterdir() if p.name in LAKE_ENTRIES], gone


def test_the_demos_check_of_its_lake_is_read_again_when_a_compaction_races_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction (a user's `kirim-events compact` on the folder, in effect) finishing
    between the demo's planning of its final read of the lake and the read deleted the files
    planned: the demo died with FileNotFoundError instead of judging its lake."""
    raced: list[CompactionReport] = []
    planned = [0]

    class CompactedAfterFirstPlan(demo.Lake):
        def events(self, *args: Any, **kwargs: Any) -> Any:
            frame = super().events(*args, **kwargs)
            planned[0] += 1
            if planned[0] == 1:  # the first plan only: a copy of one of its events, later
                row = Lake(self.location).events().head(1).collect().row(0, named=True)
                fields = {k: row[k] for k in EVENT_FIELDS if k in row}
                late = EventRecord(**{"signature": None, **fields})
                raced.append(compact_with_late_copy(self.location, late))
            return frame

    monkeypatch.setattr(demo, "Lake", CompactedAfterFirstPlan)
    report = run_demo(tmp_path / "data", scale=0.05, seed=2)
    assert len(raced) == 1  # deleted files (compact_with_late_copy checks it)
    assert planned[0] == 2  # planned again once, after the race
    assert report.lake_matches_truth, report.notes
    assert report.lake_events == report.world_events
