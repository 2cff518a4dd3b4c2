"""The CLI against the emulator's REST API on a loopback uvicorn: SIGKILL mid-backfill, resume,
reconcile --dry-run, and Kirim-side replay (`deliveries`)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loopback import free_port, serve
from nosecrets import places_holding
from test_backfill_kit import DropKey, StripPayload, World, lake_frames
from typer.testing import CliRunner

from kirim_events.cli import app
from kirim_events.emulator import FaultConfig, create_app
from kirim_events.emulator.store import Store
from kirim_events.journal import Journal


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("collector"), seed=33, events=300)
    yield w
    w.close()


@pytest.fixture(scope="module")
def api_url(world: World) -> Iterator[str]:
    """The emulator's REST app, with faults, served on 127.0.0.1."""
    faults = FaultConfig(error_rate=0.1, latency=0.03, latency_rate=1.0)
    app_ = create_app(world.emu.store, api_keys=world.emu.api_keys, faults=faults,
                      read_limit=6000, write_limit=600)  # fmt: skip
    with serve(app_, log_level="error") as url:
        yield url


@pytest.fixture
def env(world: World, api_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "KIRIM_KEY": world.emu.api_keys[0].reveal(),
        "KIRIM_API_URL": api_url,
    }


def window(world: World) -> tuple[str, str]:
    """The history's span as the CLI's --since/--until text."""
    lo, hi = world.window
    return lo.strftime("%Y-%m-%dT%H:%M:%SZ"), hi.strftime("%Y-%m-%dT%H:%M:%SZ")


def checkpoint_pages(data: Path) -> int:
    total = 0
    for path in (data / "_state" / "backfill").glob("*.json"):
        with contextlib.suppress(ValueError, KeyError, FileNotFoundError):  # mid-rename
            total += sum(s["pages"] for s in json.loads(path.read_text())["slices"])
    return total


def test_sigkill_mid_backfill_then_resume_gives_exactly_the_history(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    since, until = window(world)
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "kirim_events", "backfill", "--data", str(data),
           "--since", since, "--until", until, "--slices", "2", "--page-size", "5",
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while checkpoint_pages(data) < 6:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_pages(data)
    assert 6 <= killed_at < len(world.emu.store.deliveries) // 5
    locks = data / "_state" / "backfill"
    assert len(list(locks.glob("*.lock"))) == 1  # a killed run cannot remove its lock file

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"│ resumed an unfinished run +│ yes +│", done.stdout), done.stdout
    assert not list(locks.glob("*.lock"))  # the run that took it over removed it
    assert env["KIRIM_KEY"] not in done.stdout + done.stderr
    assert places_holding(data, env["KIRIM_KEY"]) == []  # checkpoints, journal, lake
    events, deliveries = lake_frames(data)
    keys = events["event_key"].to_list()
    assert len(keys) == len(set(keys))
    assert set(keys) == world.history_keys
    assert sorted(deliveries["delivery_id"]) == sorted(r.id for r in world.emu.store.deliveries)


def test_a_run_stopped_by_ctrl_c_is_resumed_and_the_summary_names_its_filters(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    # The summary said "resumed a killed run: yes" after a Ctrl-C too, and not which
    # filters the run used
    since, until = window(world)
    data = tmp_path / "data"
    sub = world.emu.store.deliveries[0].subscription_id
    cmd = [sys.executable, "-m", "kirim_events", "backfill", "--data", str(data),
           "--since", since, "--until", until, "--event-type", "message.status",
           "--subscription-id", sub, "--slices", "2", "--page-size", "5",
           "--no-progress"]  # fmt: skip
    interruptible = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=interruptible)  # fmt: skip
    deadline = time.monotonic() + 60
    while checkpoint_pages(data) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130

    done = subprocess.run(cmd, env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"│ resumed an unfinished run +│ yes +│", done.stdout), done.stdout
    # in the flags' order (the checkpoint the resumed run read keeps them sorted)
    filters = rf"│ filters +│ --subscription-id {sub} --event-type message.status +│"
    assert re.search(filters, done.stdout), done.stdout
    assert "killed" not in done.stdout


def _stopped_while_kirim_asks_to_wait(
    args: list[str],
    data: Path | None,
    sig: signal.Signals,
    ready: Callable[[], bool] = lambda: True,
    send: Callable[[subprocess.Popen[bytes], signal.Signals], None] = lambda proc, sig: (
        proc.send_signal(sig)
    ),
) -> tuple[int, str]:
    """Run ``kirim-events <args>`` (``--data data`` unless None) against a Kirim answering
    every request 429 with Retry-After: 600; once one was answered and ``ready()``, send
    ``sig`` (``send``: to the process): its exit code and its stderr (blanks folded)."""
    answered: list[int] = []

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"retry-after", b"600"), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error": {"type": "rate"}}'})
        answered.append(429)

    with serve(busy) as url:
        env = {**os.environ, "KIRIM_KEY": "kdv_live_" + "A" * 24, "KIRIM_API_URL": url}
        cmd = [sys.executable, "-m", "kirim_events", *args]
        cmd += [] if data is None else ["--data", str(data)]
        # (a child of a background job would start with SIGINT ignored)
        interruptible = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=interruptible)  # fmt: skip
        deadline = time.monotonic() + 60
        while not (answered and ready()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        send(proc, sig)
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:  # not left running its ten-minute wait after the test
                proc.kill()
                proc.communicate()
    return proc.returncode, " ".join(err.decode().split())


def _to_another_thread(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to a thread of ``proc`` other than its main one that does not block it
    (tgkill), as the kernel may when it picks a thread for a process's signal: Python runs
    the handler only when the main thread next runs Python code."""

    def takes(tid: int) -> bool:  # not blocked there (a native pool's thread blocks all)
        status = Path(f"/proc/{proc.pid}/task/{tid}/status").read_text()
        blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)", status)[1], 16)  # type: ignore[index]
        return not blocked >> (int(sig) - 1) & 1

    tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    tids = sorted(t for t in tids if takes(t))
    assert tids, "the command runs no thread but its main one that takes the signal"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(234, proc.pid, tids[0], int(sig)) == 0, ctypes.get_errno()  # tgkill


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_while_kirim_asks_for_a_long_pause_stops_at_once(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    # Every answer is 429 with Retry-After: 600. Ctrl-C sat out those ten minutes (the
    # workers slept, and the signal could land on a worker while the main thread blocked).
    # SIGTERM (kill, systemd, docker stop) killed the run without a word: now it stops as
    # Ctrl-C does.
    data = tmp_path / "data"
    args = ["backfill", "--since", "1d", "--slices", "3", "--no-progress"]
    # as soon as a slice is in its Retry-After: the others may still be starting (a signal
    # then left them unwarned, and the run sat out the ten minutes)
    started = lambda: bool(list((data / "_state" / "backfill").glob("*.json")))  # noqa: E731
    returncode, said = _stopped_while_kirim_asks_to_wait(args, data, sig, started)
    assert returncode == code, said
    assert list((data / "_state" / "backfill").glob("*.json"))  # kept: run it again to resume
    assert "the same command resumes the run" in said
    assert "Traceback" not in said


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_reconcile_stopped_says_what_it_leaves(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    # Ctrl-C ended reconcile with exit 130 and not a word (SIGTERM with 143, killed), where
    # backfill says what it kept; a user could not tell what an interrupted run left
    data = tmp_path / "data"
    data.mkdir()
    # it waits out the 429's Retry-After
    returncode, said = _stopped_while_kirim_asks_to_wait(["reconcile", "--since", "1d"], data, sig)
    assert returncode == code, said
    assert "interrupted: nothing is lost; events it imported wait in the journal" in said
    assert "the same command finishes the rest" in said
    assert "Traceback" not in said


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="tgkill: Linux x86-64"
)
def test_reconcile_stops_when_the_signal_lands_on_another_thread(tmp_path: Path) -> None:
    # The client waited out a Retry-After in one Event.wait of 600 s; a SIGTERM the kernel
    # handed to another thread (the journal's writer) only set a flag, and the main thread
    # ran its handler after the ten minutes (the clean-clone CI once timed out so)
    data = tmp_path / "data"
    data.mkdir()
    args = ["reconcile", "--since", "1d"]
    returncode, said = _stopped_while_kirim_asks_to_wait(
        args, data, signal.SIGTERM, send=_to_another_thread
    )
    assert returncode == 143, said
    assert "interrupted: nothing is lost" in said


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["deliveries", "list"], "nothing was changed: deliveries list only reads Kirim's history"),
        (["deliveries", "replay", "wbd_1", "wbd_2"], "the replays answered above are queued at"
         " Kirim; one asked for as it stopped may be too (deliveries list --event-id shows it),"
         " the ids after it were not asked for"),
        (["deliveries", "bulk-replay", "--subscription-id", "wbs_x"], "the bulk_replay calls"
         " Kirim answered went ahead, one asked for as it stopped may have too, and the rest of"
         " the window was not replayed: the same command replays it"),
    ],
)  # fmt: skip
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_deliveries_stopped_say_what_they_leave(
    args: list[str], said: str, sig: signal.Signals, code: int
) -> None:
    # Ctrl-C ended them with exit 130 and not a word (SIGTERM with 143, killed)
    returncode, err = _stopped_while_kirim_asks_to_wait(args, None, sig)
    assert returncode == code, err
    assert f"interrupted: {said}" in err
    assert "Traceback" not in err


def test_reconcile_dry_run_prints_the_plan(world: World, env: dict[str, str]) -> None:
    since, until = window(world)
    runner = CliRunner()
    result = runner.invoke(
        app, ["reconcile", "--data", str(world.home), "--since", since, "--until", until,
              "--dry-run"], env={**env, "COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dry run: nothing changed" in result.output
    # one line, however narrow the output (piped, rich took 80 columns and broke it)
    head = next(line for line in result.output.splitlines() if "dry run" in line)
    assert len(head) > 80
    assert "events missing from the lake" in head
    n = len(world.emu.unacknowledged_event_keys())
    assert f"{n} events missing from the lake" in result.output
    assert "import" in result.output


@contextlib.contextmanager
def read_only_copy(home: Path, *, with_wal: bool) -> Iterator[Path]:
    """A copy of the data folder that the user running it may read but not write; with
    ``with_wal``, copied while its journal is open (its -wal and -shm files beside it),
    else after the journal was closed (everything in the database file)."""
    top = Path(tempfile.mkdtemp(prefix="kirim-ro-"))
    top.chmod(0o755)
    data = top / "data"
    if with_wal:
        with Journal(home):  # keeps the WAL files there while copying
            shutil.copytree(home, data)
        assert (data / "_journal" / "journal.sqlite3-wal").exists()
    else:
        shutil.copytree(home, data)
        Journal(data).close()  # the last writer folds the WAL in and removes it
        assert not (data / "_journal" / "journal.sqlite3-wal").exists()
    for p in [data, *data.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield data
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755)
        shutil.rmtree(top)


def as_other_user() -> list[str]:
    """A command prefix that runs as a user without write access: nobody when we are root
    (who may write anything), else ourselves."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import kirim_events"],
                           capture_output=True, check=False)  # fmt: skip
    if shutil.which("setpriv") is None or probe.returncode != 0:
        pytest.skip("cannot run as a user without write access (setpriv, or nobody's access)")
    return prefix


@pytest.mark.parametrize("with_wal", [False, True], ids=["closed-journal", "open-journal"])
def test_reconcile_dry_run_works_on_a_read_only_folder(
    world: World, env: dict[str, str], with_wal: bool
) -> None:
    since, until = window(world)
    n = len(world.emu.unacknowledged_event_keys())
    prefix = as_other_user()
    with read_only_copy(world.home, with_wal=with_wal) as data:
        before = {str(p): p.stat().st_mtime_ns for p in data.rglob("*")}
        args = ["reconcile", "--data", str(data), "--since", since, "--until", until, "--dry-run"]
        cmd = [*prefix, sys.executable, "-m", "kirim_events", *args]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"{n} events missing from the lake" in run.stdout
        assert {str(p): p.stat().st_mtime_ns for p in data.rglob("*")} == before


def test_reconcile_names_a_damaged_lake_file_in_one_line(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    since, until = window(world)
    data = tmp_path / "data"
    shutil.copytree(world.home / "events", data / "events")
    damaged = sorted((data / "events").rglob("*.parquet"))[0]
    damaged.write_text("not parquet")
    result = CliRunner().invoke(
        app, ["reconcile", "--data", str(data), "--since", since, "--until", until,
              "--dry-run"], env=env,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "1 damaged or foreign Parquet file(s)" in result.output
    assert damaged.name in result.output


def test_deliveries_list_replay_and_bulk_replay(world: World, env: dict[str, str]) -> None:
    runner = CliRunner()
    store = world.emu.store
    dead = [r for r in store.deliveries if r.status == "dead" and r.replayed_from is None]
    assert dead
    listed = runner.invoke(app, ["deliveries", "list", "--status", "dead", "--limit", "500",
                                 "--json"], env=env)  # fmt: skip
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert {r["id"] for r in rows} == {r.id for r in store.deliveries if r.status == "dead"}
    assert all(r["has_payload"] for r in rows)

    # 80 columns wide: every id and event id whole on a line, with the rest of its row (the
    # table squeezed each wamid into five-character pieces, one per line)
    assert any(r["event_id"].startswith("wamid.") for r in rows[:5])
    for columns in (80, 200):
        table = runner.invoke(app, ["deliveries", "list", "--status", "dead", "--limit", "5"],
                              env={**env, "COLUMNS": str(columns)})  # fmt: skip
        assert table.exit_code == 0, table.output
        # the lines alone (stdout): a full-file run once saw a 239-character line in .output
        lines = table.stdout.splitlines()
        assert max(map(len, lines)) <= columns, table.stdout
        assert "…" not in table.stdout  # nothing cut
        for r in rows[:5]:
            (at,) = [n for n, line in enumerate(lines) if re.search(rf"\b{r['id']}\b", line)]
            row = " ".join(lines[at : at + 3] if columns == 80 else lines[at : at + 1])
            for value in (r["status"], r["event_type"], r["created_at"]):
                assert value in row, (value, row)
            assert re.search(rf"(^|\s){re.escape(r['event_id'])}(\s|$)", row), row
            numbers = rf"\s{r['attempt']}\s+(│\s+)?{r['response_status_code'] or '-'}\s"
            assert re.search(numbers, row), row

    before = len(store.deliveries)
    one = runner.invoke(app, ["deliveries", "replay", dead[0].id], env=env)
    assert one.exit_code == 0, one.output
    assert len(store.deliveries) == before + 1
    assert store.deliveries[-1].replayed_from == dead[0].id

    missing = runner.invoke(app, ["deliveries", "replay", "wbd_00000000000000000000000000"],
                            env=env)  # fmt: skip
    assert missing.exit_code == 1
    assert "status=404 code=resource_not_found" in missing.output
    assert env["KIRIM_KEY"] not in missing.output

    # dead[0], replayed above, has left the dead-letter queue (docs/emulator.md)
    n_dead = sum(1 for r in store.deliveries if r.status == "dead" and r.id != dead[0].id)
    sub = dead[0].subscription_id
    bulk = runner.invoke(app, ["deliveries", "bulk-replay", "--subscription-id", sub,
                               "--since", "3650d"], env=env)  # fmt: skip
    assert bulk.exit_code == 0, bulk.output
    assert f"{n_dead} deliveries enqueued in 1 call" in bulk.output


def test_cli_bad_input(world: World, env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    bad_since = runner.invoke(app, ["backfill", "--data", str(tmp_path), "--since", "soon"],
                              env=env)  # fmt: skip
    assert bad_since.exit_code == 2
    assert "--since" in bad_since.output
    # the wrong order is refused before a progress bar is drawn, on one line however narrow
    backwards = runner.invoke(app, ["backfill", "--data", str(tmp_path), "--since",
                                    "2026-05-02", "--until", "2026-05-01"], env=env)  # fmt: skip
    assert backwards.exit_code == 2
    (line,) = backwards.output.strip().splitlines()
    assert line.startswith("error: --since")
    assert line.endswith("(2026-05-01T00:00:00Z)")
    wrong_key = {**env, "KIRIM_KEY": "kdv_live_" + "Z" * 24}
    denied = runner.invoke(app, ["backfill", "--data", str(tmp_path), "--since", "1d",
                                 "--no-progress"], env=wrong_key)  # fmt: skip
    assert denied.exit_code == 1
    assert "invalid_api_key" in denied.output
    assert "Z" * 24 not in denied.output
    no_key = {k: v for k, v in env.items() if k != "KIRIM_KEY"}
    unset = runner.invoke(app, ["reconcile", "--data", str(tmp_path), "--since", "1d"],
                          env={**no_key, "KIRIM_KEY": ""})  # fmt: skip
    assert unset.exit_code == 2
    assert "KIRIM_KEY" in unset.output
    # a mistyped folder: every event Kirim knows would have been imported or replayed
    typo = runner.invoke(app, ["reconcile", "--data", str(tmp_path / "typo"), "--since", "1d"],
                         env=env)  # fmt: skip
    assert typo.exit_code == 2
    assert typo.output.startswith("error: no lake at")
    assert not (tmp_path / "typo").exists()
    bad_status = runner.invoke(app, ["deliveries", "bulk-replay", "--subscription-id",
                                     "wbs_X", "--status", "succeeded"], env=env)  # fmt: skip
    assert bad_status.exit_code == 2


def test_backfill_progress_bar_and_summary(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    since, until = window(world)
    runner = CliRunner()
    result = runner.invoke(
        app, ["backfill", "--data", str(tmp_path), "--since", since, "--until", until,
              "--slices", "3"], env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pages" in result.output
    assert "of range" in result.output  # the share of time walked, not of rows
    bar_lines = [line for line in result.output.splitlines() if "of range" in line]
    # 80 columns (not a terminal): every column whole, none squeezed into "…"
    assert bar_lines
    assert all("…" not in line and re.search(r"\d:\d\d:\d\d ~", line) for line in bar_lines)
    assert " left" in result.output  # an estimate: docs/cli.md says on what
    rows = len(world.emu.store.deliveries)
    assert re.search(rf"│ history rows read +│ {rows} +│", result.output)
    assert re.search(r"│ filters +│ none +│", result.output)  # every delivery of the range
    assert re.search(
        rf"│ flushed to the lake +│ {len(world.history_keys)} events, {rows} rows", result.output
    )
    events, _ = lake_frames(tmp_path)
    assert set(events["event_key"]) == world.history_keys


def test_backfill_summary_of_one_row_says_one_event_one_row(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """The summary said "1 events, 1 rows" (and the bar "1 rows"): a range around a single
    history row."""
    by_ms: dict[int, list[Any]] = {}
    for row in world.emu.store.deliveries:
        by_ms.setdefault(int(row.created_at * 1000), []).append(row)
    ms = next(
        ms for ms, rows in sorted(by_ms.items())
        if len(rows) == 1 and len(rows[0].event_keys) == 1 and rows[0].payload
        and not {ms - 1, ms + 1} & by_ms.keys()
    )  # fmt: skip
    since = datetime.fromtimestamp(ms / 1000, UTC)
    until = since + timedelta(milliseconds=1)
    result = CliRunner().invoke(
        app, ["backfill", "--data", str(tmp_path), "--since", since.isoformat(),
              "--until", until.isoformat()], env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"│ history rows read +│ 1 +│", result.output), result.output
    assert re.search(r"│ flushed to the lake +│ 1 event, 1 row +│", result.output), result.output
    assert "of range  1 row " in result.output  # the progress bar


def test_an_until_in_the_future_is_read_up_to_now_with_a_note(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    since, _ = window(world)
    result = CliRunner().invoke(
        app, ["backfill", "--data", str(tmp_path), "--since", since, "--until", "2999-01-01",
              "--no-progress"], env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: --until is in the future: the history is read up to now" in result.output
    events, _ = lake_frames(tmp_path)
    assert set(events["event_key"]) == world.history_keys


@pytest.mark.parametrize(("command", "since"), [("backfill", "40d"), ("reconcile", "31d")])
def test_a_since_past_kirims_30_days_of_history_gets_a_note(
    world: World, env: dict[str, str], tmp_path: Path, command: str, since: str
) -> None:
    # Kirim purges delivery rows after 30 days: a backfill or reconcile of 40 days ended
    # without a word that its first 10 days could hold nothing, as if all was well there.
    backfills = command == "backfill"
    data, extra = (tmp_path, "--no-progress") if backfills else (world.home, "--dry-run")
    args = [command, "--data", str(data), "--since", since, extra]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "note: --since is more than 30 days ago: Kirim purges" in result.output
    within = CliRunner().invoke(app, [*args[:4], "29d", extra], env=env)
    assert within.exit_code == 0, within.output
    assert "purges" not in within.output


def test_a_plain_http_api_url_off_this_machine_gets_a_note(tmp_path: Path) -> None:
    env = {"KIRIM_KEY": "kdv_live_" + "A" * 24, "KIRIM_API_URL": "http://kirim.invalid"}
    args = ["reconcile", "--since", "1d", "--data", str(tmp_path / "none")]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2  # no lake there: stops before any request
    assert "note: http://kirim.invalid is plain http" in result.stderr
    assert "plain http" not in result.stdout  # stdout stays the command's (--json output)


def test_the_time_left_reads_in_hours_past_a_day() -> None:
    # "2 days, 3:00:00" squeezed the bar off an 80-column line
    from kirim_events.backfill import BackfillProgress
    from kirim_events.cli.backfill import _eta

    def at(fraction: float, elapsed: float) -> str:
        return _eta(BackfillProgress(1, 1, 0, fraction, elapsed, 0, 4))

    assert at(0.5, 3_725.0) == "1:02:05"
    assert at(0.01, 1_854.5) == "50:59:55"  # 99 times the 30 min walked
    assert at(0.0, 10.0) == "?"


@pytest.mark.parametrize("command", ["backfill", "reconcile", "collect"])
def test_a_file_given_as_the_data_folder_is_said_so(tmp_path: Path, command: str) -> None:
    # backfill said "cannot open lock file .../_state/backfill/...lock: Not a directory",
    # exit 1; reconcile "no lake at ...".
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    args = [command, "--data", str(afile)] + ([] if command == "collect" else ["--since", "1d"])
    env = {"KIRIM_KEY": "kdv_live_" + "A" * 24, "KIRIM_WEBHOOK_SECRET": "whsec_x"}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert "is a file, not a folder" in result.output
    assert afile.read_text() == "not a folder"


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` and the bytes of its files (None for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in folder.rglob("*")
    }


def _project_folder(tmp_path: Path) -> Path:
    """A folder that is no lake: a project's, as a mistyped --data (or a cd into the wrong
    folder with the default ./data) may name."""
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "README.md").write_text("# a project\n")
    (folder / "src" / "main.py").write_text("print('hi')\n")
    return folder


@pytest.mark.parametrize("command", [["backfill"], ["reconcile"], ["reconcile", "--dry-run"]])
def test_a_folder_holding_other_things_is_refused_as_compact_refuses_it_and_left_as_it_was(
    world: World, env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    # backfill wrote a lake (_journal, _state, events/, deliveries/) into a folder that
    # compact and report refuse as "not a kirim-events lake" (exit 1, where "no lake at"
    # exits 2)
    folder = _project_folder(tmp_path)
    before = _snapshot(folder)
    since, until = window(world)
    runner = CliRunner()
    args = [*command, "--data", str(folder), "--since", since, "--until", until]
    result = runner.invoke(app, args, env=env)
    assert _snapshot(folder) == before  # not a file added, changed or removed
    refused = runner.invoke(app, ["compact", "--data", str(folder)], env=env)
    assert refused.exit_code == 2, refused.output
    assert result.exit_code == refused.exit_code, result.output
    (line,) = result.output.strip().splitlines()
    assert line == refused.output.strip()
    assert line.startswith(f"error: {folder} is not a kirim-events lake: it holds README.md, src")


def test_collect_refuses_a_folder_holding_other_things_before_it_listens(tmp_path: Path) -> None:
    folder = _project_folder(tmp_path)
    before = _snapshot(folder)
    env = {**os.environ, "KIRIM_WEBHOOK_SECRET": "whsec_x", "KIRIM_DATA_DIR": str(folder)}
    cmd = [sys.executable, "-m", "kirim_events", "collect", "--port", str(free_port())]
    try:  # (it collected into the folder until stopped)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("collect ran on a folder that is no lake")
    assert done.returncode == 2, done.stderr
    assert f"error: {folder} is not a kirim-events lake" in done.stderr
    assert "Traceback" not in done.stderr
    assert _snapshot(folder) == before


def test_the_library_refuses_a_folder_holding_other_things_as_the_cli_does(
    tmp_path: Path,
) -> None:
    # only the CLI checked: ke.Collector, backfill() and reconcile() made a journal in a
    # project's folder, which then held _journal/ and passed for a lake with every command
    import httpx

    from kirim_events.backfill import backfill
    from kirim_events.client import KirimClient
    from kirim_events.collect import Collector
    from kirim_events.errors import NotALakeError
    from kirim_events.reconcile import reconcile

    def no_request(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"asked Kirim {request.url} for a folder that is no lake")

    client = KirimClient(
        "https://api.test", "kdv_live_" + "A" * 24, transport=httpx.MockTransport(no_request)
    )
    folder = _project_folder(tmp_path)
    before = _snapshot(folder)
    said = f"{folder} is not a kirim-events lake: it holds README.md, src"
    with pytest.raises(NotALakeError, match=re.escape(said)):
        Collector(folder, ["whsec_x"])
    with pytest.raises(NotALakeError, match=re.escape(said)):
        backfill(folder, client=client, since="1d")
    with pytest.raises(NotALakeError, match=re.escape(said)):
        reconcile(folder, client=client, since="1d")
    assert _snapshot(folder) == before
    Collector(tmp_path / "new", ["whsec_x"]).close()  # a folder not there yet takes a lake
    assert (tmp_path / "new" / "_journal").is_dir()


def test_an_empty_folder_still_takes_a_new_lake(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """The refusal is of other things only: an empty folder, a dot file in it (as
    data/.gitkeep), takes a new lake (a folder not there yet is made: the tests above)."""
    since, until = window(world)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".gitkeep").write_text("")
    args = ["backfill", "--data", str(empty), "--since", since, "--until", until, "--no-progress"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    stored = set(lake_frames(empty)[1]["delivery_id"])
    assert stored == {r.id for r in world.emu.store.deliveries}


WINDOW_COMMANDS = [
    ["backfill"],
    ["reconcile"],
    ["deliveries", "list"],
    ["deliveries", "bulk-replay", "--subscription-id", "wbs_x"],
]


def window_args(tmp_path: Path, command: list[str], since: str, until: str) -> list[str]:
    args = [*command, "--since", since, "--until", until]
    if command[0] != "deliveries":
        (tmp_path / "data").mkdir()
        args += ["--data", str(tmp_path / "data")]
    return args


@pytest.mark.parametrize("command", WINDOW_COMMANDS)
def test_a_reversed_window_is_refused_alike_by_every_command(
    tmp_path: Path, command: list[str]
) -> None:
    # deliveries list printed an empty table, exit 0; reconcile and bulk-replay said it
    # without the times
    args = window_args(tmp_path, command, "2026-11-30", "2026-11-01")
    result = CliRunner().invoke(app, args, env={"KIRIM_KEY": "kdv_live_" + "A" * 24})
    assert result.exit_code == 2, result.output
    assert "--since (2026-11-30T00:00:00Z) must be before --until (2026-11-01" in result.output


@pytest.mark.parametrize("command", WINDOW_COMMANDS)
def test_a_future_since_is_said_so_not_blamed_on_until(tmp_path: Path, command: list[str]) -> None:
    # it said "--since (2099-01-01...) must be before --until (<now>)": an --until not typed
    args = window_args(tmp_path, command, "2099-01-01", "2099-02-01")
    result = CliRunner().invoke(app, args, env={"KIRIM_KEY": "kdv_live_" + "A" * 24})
    assert result.exit_code == 2, result.output
    assert "--since (2099-01-01T00:00:00Z) is not in the past: Kirim's history ends now" in (
        result.output
    )


@pytest.mark.parametrize("command", WINDOW_COMMANDS)
@pytest.mark.parametrize("bad", ["since", "until"])
def test_a_bad_time_is_named_by_its_flag(tmp_path: Path, command: list[str], bad: str) -> None:
    """The library names its arguments (``since``); the CLI must name the flag it was given."""
    times = {"since": "2026-11-01", "until": "2026-11-30", bad: "soon"}
    args = window_args(tmp_path, command, times["since"], times["until"])
    result = CliRunner().invoke(app, args, env={"KIRIM_KEY": "kdv_live_" + "A" * 24})
    assert result.exit_code == 2, result.output
    assert f"error: --{bad} 'soon' is not a time" in result.output


def test_a_backfill_stopped_by_an_error_says_the_same_command_resumes(tmp_path: Path) -> None:
    # A first page, then a captive portal's page for every request: the error names the URL
    # and asks whether KIRIM_API_URL is Kirim's API; then a note says that what was fetched
    # is kept (only when a page was: not after an error before any).
    served = 0

    async def portal(scope: Any, receive: Any, send: Any) -> None:
        nonlocal served
        served += 1
        if served == 1:
            body = json.dumps({"data": [], "has_more": True, "next_cursor": "c1"}).encode()
            headers = [(b"content-type", b"application/json")]
        else:
            body, headers = b"<html>log in first</html>", [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    data = tmp_path / "data"
    with serve(portal) as url:
        env = {"KIRIM_KEY": "kdv_live_" + "A" * 24, "KIRIM_API_URL": url}
        result = CliRunner().invoke(
            app, ["backfill", "--data", str(data), "--since", "1h", "--slices", "1",
                  "--no-progress"], env=env,
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"at {url}: the answer is not JSON (is KIRIM_API_URL Kirim's API?)" in result.output
    assert "the same command resumes the run" in result.output
    assert env["KIRIM_KEY"] not in result.output
    # an error before any page is stored: no such note
    damaged = next((data / "_state" / "backfill").glob("*.json"))
    damaged.write_text("{")
    again = CliRunner().invoke(
        app, ["backfill", "--data", str(data), "--since", "1h", "--slices", "1",
              "--no-progress"], env=env,
    )  # fmt: skip
    assert again.exit_code == 1, again.output
    assert "is damaged" in again.output
    assert "resumes the run" not in again.output


def test_reconcile_reads_the_lake_named_by_lake(world: World, env: dict[str, str]) -> None:
    # the journal flushes into the lake given to compact --lake; reconcile takes it too
    since, until = window(world)
    args = ["reconcile", "--data", str(world.home), "--since", since, "--until", until,
            "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--lake", str(world.home)], env=env)
    assert result.exit_code == 0, result.output
    n = len(world.emu.unacknowledged_event_keys())
    assert f"{n} events missing from the lake" in result.output
    elsewhere = CliRunner().invoke(app, [*args, "--lake", str(world.home / "nowhere")], env=env)
    assert elsewhere.exit_code == 2, elsewhere.output
    assert "no lake at" in elsewhere.output


@pytest.mark.parametrize("command", [["backfill", "--since", "1d", "--no-progress"],
                                     ["deliveries", "list"]])  # fmt: skip
def test_an_api_url_holding_the_key_is_refused_without_showing_it(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    """A key pasted into KIRIM_API_URL's path was sent on every request and shown in the
    error (`at http://host/kdv_live_...: GET /kdv_live_.../v1/...`) and in httpx's logs."""
    key = env["KIRIM_KEY"]
    pasted = {**env, "KIRIM_API_URL": f"{env['KIRIM_API_URL']}/{key}"}
    args = [command[0], *(["--data", str(tmp_path)] if command[0] == "backfill" else []),
            *command[1:]]  # fmt: skip
    result = CliRunner().invoke(app, args, env=pasted)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: KIRIM_API_URL holds the API key")
    assert key not in result.output
    assert key[len("kdv_live_") :] not in result.output


@pytest.fixture(scope="module")
def ignoring_url(world: World) -> Iterator[str]:
    """The emulator's REST app behind a Kirim that ignores ``status``, served on 127.0.0.1."""
    ignores = FaultConfig(ignored_filters=("status",))
    app_ = create_app(world.emu.store, api_keys=world.emu.api_keys, read_limit=6000, faults=ignores)
    with serve(app_, log_level="error") as url:
        yield url


def test_rows_outside_a_filter_kirim_ignored_are_neither_stored_nor_listed_and_said(
    world: World, env: dict[str, str], ignoring_url: str, tmp_path: Path
) -> None:
    env = {**env, "KIRIM_API_URL": ignoring_url}
    dead = sorted(r.id for r in world.emu.store.deliveries if r.status == "dead")
    skipped = len(world.emu.store.deliveries) - len(dead)
    note = (
        f"note: Kirim returned {skipped} row(s) outside --status dead (it may ignore that"
        " filter or know it by another name): skipped, not"
    )
    since, until = window(world)
    runner = CliRunner()
    result = runner.invoke(app, ["backfill", "--data", str(tmp_path), "--since", since,
                                 "--until", until, "--status", "dead", "--no-progress"],
                           env={**env, "COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(lake_frames(tmp_path)[1]["delivery_id"]) == dead
    assert result.stdout.count(note + " stored") == 1
    line = rf"│ rows outside the filters asked \(skipped\) +│ {skipped} +│"
    assert re.search(line, result.stdout)

    listed = runner.invoke(app, ["deliveries", "list", "--status", "dead", "--limit", "500",
                                 "--json"], env={**env, "COLUMNS": "200"})  # fmt: skip
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert sorted(r["id"] for r in rows) == dead
    assert listed.stderr.count(note + " shown") == 1


def test_deliveries_list_says_kirim_has_more_only_when_a_higher_limit_shows_more(
    world: World, env: dict[str, str], ignoring_url: str
) -> None:
    """With Kirim ignoring --status, --limit N over the N dead deliveries said "Kirim has
    more (raise --limit)" because rows outside the filter followed the last one shown; a
    higher --limit then showed the same N rows."""
    env = {**env, "KIRIM_API_URL": ignoring_url, "COLUMNS": "200"}
    dead = sorted(r.id for r in world.emu.store.deliveries if r.status == "dead")
    assert 1 < len(dead) < len(world.emu.store.deliveries)  # other rows to ignore the filter on
    runner = CliRunner()

    def listed(limit: int) -> tuple[list[str], str]:
        args = ["deliveries", "list", "--status", "dead", "--limit", str(limit), "--json"]
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["id"] for line in result.stdout.splitlines()], result.stderr

    every, said = listed(len(dead))
    assert sorted(every) == dead
    assert "Kirim has more" not in said
    assert listed(len(dead) + 1)[0] == every  # a higher --limit indeed shows nothing new
    cut, said = listed(len(dead) - 1)
    assert cut == every[:-1]
    assert f"note: the newest {len(dead) - 1} deliveries are shown; Kirim has more" in said


class CountHistoryPages:
    """ASGI middleware: counts the requests for pages of the delivery history."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pages = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/webhook_deliveries":
            self.pages += 1
        await self.app(scope, receive, send)


def test_deliveries_list_looks_a_bounded_way_past_the_limit_for_one_more_row(
    tmp_path: Path,
) -> None:
    """With Kirim ignoring --since, every row past the newest ones is outside the range:
    the look for one more matching row, to say "Kirim has more", walked the whole history,
    page after page. It stops a couple of pages past the limit, and says more *may* exist."""
    world = World(tmp_path / "collector", seed=8, events=120)  # its own: no replays added
    try:
        _look_ahead_is_bounded(world)
    finally:
        world.close()


def _look_ahead_is_bounded(world: World) -> None:
    newest = world.emu.store.deliveries[::-1]  # as Kirim lists them
    assert [r.created_at for r in newest] == sorted((r.created_at for r in newest), reverse=True)
    # --since between two rows a few ms apart: exactly the newest `limit` are in range
    limit = next(k for k in range(2, len(newest))
                 if newest[k - 1].created_at - newest[k].created_at > 0.002)  # fmt: skip
    middle = (newest[limit - 1].created_at + newest[limit].created_at) / 2
    since = datetime.fromtimestamp(middle, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # a history of more pages than the bound: the whole walk takes 5 or more
    assert len(newest) > 4 * (limit + 1)
    ignores = FaultConfig(ignored_filters=("created_after",))
    counted = CountHistoryPages(create_app(world.emu.store, api_keys=world.emu.api_keys,
                                           read_limit=6000, faults=ignores))  # fmt: skip
    with serve(counted, log_level="error") as url:
        env = {**os.environ, "KIRIM_KEY": world.emu.api_keys[0].reveal(), "KIRIM_API_URL": url}
        args = ["deliveries", "list", "--since", since, "--limit", str(limit), "--json"]
        result = CliRunner().invoke(app, args, env={**env, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert shown == [r.id for r in newest[:limit]]
    # the page that filled --limit (pages of limit + 1 rows), then two more
    assert counted.pages == 3
    said = " ".join(result.stderr.split())
    assert "Kirim has more" not in said  # no row past them matched: it is not known
    assert (
        f"note: the newest {limit} deliveries are shown; Kirim may have more: the 2 pages"
        " read past them held no other match" in said
    )
    assert "outside --since" in said  # the rows Kirim ignored it on: said too


def test_deliveries_list_stops_paging_once_past_since_when_kirim_ignores_it() -> None:
    """Fewer rows than --limit inside --since, and a Kirim that ignores the filter: the list
    paged the rest of the history (all 30 days of it on a real account) looking for more.
    The rows show newest first: past --since, none still to come can match."""
    store = Store(rng=random.Random(5))
    key = "kdv_live_" + "Since" * 4 + "xxxx"
    sub, _ = store.create_subscription("http://127.0.0.1:9/hook", now=time.time() - 86400)
    start = time.time() - 6 * 3600
    for i in range(300):  # one a minute, over five hours
        store.new_delivery(sub, event_id=f"evt_{i}", event_type="message.status",
                           source="kirim", event_keys=(f"k{i}",), payload=b"{}",
                           now=start + 60 * i)  # fmt: skip
    newest = store.deliveries[::-1]
    # three rows inside --since: the newest, a minute apart
    since = datetime.fromtimestamp(newest[2].created_at - 30, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ignores = FaultConfig(ignored_filters=("created_after",))
    counted = CountHistoryPages(create_app(store, api_keys=[key], read_limit=6000, faults=ignores))
    with serve(counted, log_level="error") as url:
        env = {**os.environ, "KIRIM_KEY": key, "KIRIM_API_URL": url}
        args = ["deliveries", "list", "--since", since, "--limit", "10", "--json"]
        result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    shown = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert shown == [r.id for r in newest[:3]]  # every matching row, none lost
    # one page of 11 rows: 3 inside, 8 older by minutes; the whole history is 28 pages
    assert counted.pages == 1
    said = " ".join(result.stderr.split())
    assert "may have more" not in said
    assert "outside --since" in said


@pytest.mark.parametrize(
    "args",
    [
        ["deliveries", "list", "--event-id", ""],
        ["deliveries", "list", "--status", " "],
        ["deliveries", "list", "--event-type", ""],
        ["deliveries", "list", "--subscription-id", ""],
        ["deliveries", "bulk-replay", "--subscription-id", ""],
        ["backfill", "--since", "1h", "--event-type", ""],
        ["reconcile", "--since", "1h", "--subscription-id", ""],
    ],
)
def test_an_empty_filter_is_refused_before_any_request(
    world: World, args: list[str], tmp_path: Path
) -> None:
    """``--event-id "$ID"`` with ID unset: the empty filter was read as none, and the
    command went over every row (listed all, stored all)."""
    counted = CountHistoryPages(create_app(world.emu.store, api_keys=world.emu.api_keys,
                                           read_limit=6000))  # fmt: skip
    with serve(counted, log_level="error") as url:
        env = {"KIRIM_KEY": world.emu.api_keys[0].reveal(), "KIRIM_API_URL": url}
        data = [] if args[0] == "deliveries" else ["--data", str(tmp_path / "data")]
        result = CliRunner().invoke(app, [*args, *data], env=env)
    assert result.exit_code == 2, result.output
    assert "must not be empty" in " ".join(result.output.split())
    assert counted.pages == 0
    assert not (tmp_path / "data").exists()


class CountReplays:
    """ASGI middleware: counts the replay requests (``POST .../{id}/replay``)."""

    def __init__(self, app: Any) -> None:
        self.app, self.asked = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/replay"):
            self.asked += 1
        await self.app(scope, receive, send)


@contextlib.contextmanager
def counting_replays(world: World) -> Iterator[tuple[CountReplays, dict[str, str]]]:
    """The emulator's API, counting replay requests, and the CLI's environment for it."""
    counted = CountReplays(create_app(world.emu.store, api_keys=world.emu.api_keys,
                                      read_limit=6000, write_limit=6000))  # fmt: skip
    with serve(counted, log_level="error") as url:
        yield counted, {"KIRIM_KEY": world.emu.api_keys[0].reveal(), "KIRIM_API_URL": url}


def test_deliveries_replay_checks_every_id_before_asking_for_any(world: World) -> None:
    """``replay wbd_a ../x`` replayed wbd_a and then refused ../x (exit 1): bad input found
    after something was done."""
    dead = [r for r in world.emu.store.deliveries if r.status == "dead"]
    with counting_replays(world) as (counted, env):
        bad = CliRunner().invoke(app, ["deliveries", "replay", dead[0].id, "../x"], env=env)
    assert bad.exit_code == 2, bad.output
    assert "nothing was replayed" in " ".join(bad.output.split())
    assert counted.asked == 0


def test_deliveries_replay_refuses_an_id_that_is_no_unicode_before_asking_for_any(
    world: World,
) -> None:
    """A byte that is no UTF-8 on the command line ($'\\xff') reaches Python as a lone
    surrogate: quote() raised UnicodeEncodeError as the id went out, a traceback (it was an
    error line before the ids were checked first, which now let it through)."""
    dead = [r for r in world.emu.store.deliveries if r.status == "dead"]
    with counting_replays(world) as (counted, env):
        bad = CliRunner().invoke(app, ["deliveries", "replay", dead[0].id, "wbd_\udcff"],
                                 env=env)  # fmt: skip
    assert bad.exit_code == 2, bad.output
    assert not isinstance(bad.exception, UnicodeError)
    assert "nothing was replayed" in " ".join(re.sub("[│╭╮╰╯─]", " ", bad.output).split())
    assert counted.asked == 0


def test_deliveries_replay_takes_an_id_given_twice_once(world: World) -> None:
    dead = [r for r in world.emu.store.deliveries if r.status == "dead"]
    with counting_replays(world) as (counted, env):
        twice = CliRunner().invoke(app, ["deliveries", "replay", dead[1].id, dead[1].id],
                                   env=env)  # fmt: skip
    assert twice.exit_code == 0, twice.output
    assert counted.asked == 1


def test_deliveries_replay_stops_at_a_key_kirim_refuses(world: World) -> None:
    """A wrong key: every id was asked for and refused in turn, an error line each."""
    dead = [r for r in world.emu.store.deliveries if r.status == "dead"]
    with counting_replays(world) as (counted, env):
        wrong = {**env, "KIRIM_KEY": "kdv_live_" + "W" * 24}
        refused = CliRunner().invoke(app, ["deliveries", "replay", *(r.id for r in dead[:3])],
                                     env=wrong)  # fmt: skip
    assert refused.exit_code == 1, refused.output
    assert counted.asked == 1
    said = " ".join(refused.stderr.split())
    assert said.count("error:") == 1
    assert "the 2 ids after it were not asked for" in said


def test_deliveries_list_json_gives_null_for_what_kirim_did_not_return(world: World) -> None:
    """Kirim documents only a row's id, object, status and replayed_from: a row without its
    time was given ``"created_at": "-"`` (the table's blank) in --json, where every other
    missing field is null; a reader parsing the times stopped on it."""
    app_ = create_app(world.emu.store, api_keys=world.emu.api_keys, read_limit=6000)
    with serve(StripPayload(app_, "created_at", "attempt"), log_level="error") as url:
        env = {**os.environ, "KIRIM_KEY": world.emu.api_keys[0].reveal(), "KIRIM_API_URL": url}
        args = ["deliveries", "list", "--limit", "3", "--json"]
        result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert [(r["created_at"], r["attempt"]) for r in rows] == [(None, None)] * 3


def test_a_kirim_ignoring_the_time_range_is_said_once_as_the_run_finds_it(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    from kirim_events.backfill import TIME_FILTER_IGNORED

    ignores = FaultConfig(ignored_filters=("created_after", "created_before"))
    app_ = create_app(world.emu.store, api_keys=world.emu.api_keys, read_limit=6000, faults=ignores)
    lo, hi = world.window
    hour = timedelta(hours=1)
    since, until = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (lo - hour, hi + hour))
    with serve(app_, log_level="error") as url:
        args = ["backfill", "--data", str(tmp_path), "--since", since, "--until", until,
                "--page-size", "50"]  # fmt: skip
        env = {**env, "KIRIM_API_URL": url, "COLUMNS": "400"}
        result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert sorted(lake_frames(tmp_path)[1]["delivery_id"]) == sorted(
        r.id for r in world.emu.store.deliveries
    )
    # on stderr while the run goes on (above the progress bar), not again in the summary
    assert result.stderr.count("note: " + TIME_FILTER_IGNORED) == 1
    assert "Kirim ignores" not in result.stdout


class RefuseCursors:
    """ASGI middleware: every second history request that carries a cursor gets Kirim's
    ``400 invalid_cursor`` (a cursor expired, again and again)."""

    def __init__(self, app: Any) -> None:
        self.app, self.with_cursor = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and b"cursor=" in scope.get("query_string", b""):
            self.with_cursor += 1
            if self.with_cursor % 2 == 0:
                error = {"type": "invalid_request_error", "code": "invalid_cursor",
                         "message": "the cursor has expired"}  # fmt: skip
                body = json.dumps({"error": error}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json")]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def test_cursors_refused_again_and_again_are_one_clear_error_and_the_rerun_loses_nothing(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    # The history (about a second, 10 rows a page) is denser than the 2 s a new chain of
    # pages reads back: the run gives up. It said only "the cursor has expired status=400
    # code=invalid_cursor".
    app_ = create_app(world.emu.store, api_keys=world.emu.api_keys, read_limit=60000)
    since, until = window(world)
    args = ["backfill", "--data", str(tmp_path), "--since", since, "--until", until,
            "--page-size", "10", "--slices", "1", "--no-progress"]  # fmt: skip
    port = free_port()  # one Kirim for both runs: a checkpoint resumes only against its own
    with serve(RefuseCursors(app_), port=port, log_level="error") as url:
        failed = CliRunner().invoke(app, args, env={**env, "KIRIM_API_URL": url})
    assert failed.exit_code == 1, failed.output
    lines = failed.stderr.strip().splitlines()
    error, *notes = [line for line in lines if "--until is in the future" not in line]
    assert error.startswith(
        "error: Kirim refused the cursor of the history's pages 4 times in a row without the"
        " walk getting further"
    )
    assert "Stopped rather than read the same pages again; the rows read are kept." in error
    assert error.endswith("The last refusal: status=400 code=invalid_cursor")
    assert notes == [
        "note: the pages fetched so far are stored and checkpointed: the same command resumes"
        " the run"
    ]
    with serve(app_, port=port, log_level="error") as url:  # Kirim keeps its cursors now
        again = CliRunner().invoke(app, args, env={**env, "KIRIM_API_URL": url, "COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert re.search(r"│ resumed an unfinished run +│ yes +│", again.stdout), again.stdout
    stored = lake_frames(tmp_path)[1]["delivery_id"]
    assert sorted(set(stored)) == sorted(r.id for r in world.emu.store.deliveries)


@pytest.mark.parametrize(
    "command", [["backfill", "--no-progress"], ["reconcile", "--dry-run"], ["deliveries", "list"]]
)
def test_a_key_kirim_refuses_is_one_error_and_a_hint_naming_kirim_key(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    # it said "invalid API key status=401 ..." and nothing of where the key comes from
    args = [*command, "--since", "1d"]
    if command[0] != "deliveries":
        (tmp_path / "data").mkdir()
        args += ["--data", str(tmp_path / "data")]
    wrong = "kdv_live_" + "B" * 24
    result = CliRunner().invoke(app, args, env={**env, "KIRIM_KEY": wrong})
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if "retrying in" not in line]
    assert lines[0].startswith("error: GET /v1/webhook_deliveries at ")  # (5xx: retried)
    assert "status=401" in lines[0]
    assert lines[1:] == [
        (
            "note: Kirim refused the API key: check KIRIM_KEY (wrong, expired or revoked?) and"
            " that KIRIM_API_URL is that key's Kirim"
        )
    ]
    assert wrong not in result.output


KEY_NOTE = (
    "note: Kirim refused the API key: check KIRIM_KEY (wrong, expired or revoked?) and that"
    " KIRIM_API_URL is that key's Kirim"
)


def test_a_bulk_replay_kirim_refuses_is_the_error_first_and_alone_with_the_hint(
    world: World, env: dict[str, str]
) -> None:
    # it printed "0 deliveries enqueued in 0 call(s)", then the error, and no hint
    sub = world.emu.store.deliveries[0].subscription_id
    wrong = "kdv_live_" + "B" * 24
    args = ["deliveries", "bulk-replay", "--subscription-id", sub, "--since", "3650d"]
    result = CliRunner().invoke(app, args, env={**env, "KIRIM_KEY": wrong})
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if "retrying in" not in line]
    assert len(lines) == 2, result.output
    assert lines[0].startswith(f"error: bulk_replay {sub} dead: POST ")
    assert "status=401" in lines[0]
    assert lines[1] == KEY_NOTE
    assert "enqueued" not in result.output
    assert wrong not in result.output


@pytest.fixture(scope="module")
def read_only_url(world: World) -> Iterator[str]:
    """The emulator without payloads in its history (so reconcile must ask for replays),
    refusing every POST as Kirim refuses a key revoked after the walk: its own 401."""
    app_ = create_app(world.emu.store, api_keys=world.emu.api_keys, read_limit=6000)
    with serve(DropKey(StripPayload(app_), "POST"), log_level="error") as url:
        yield url


def test_reconcile_replays_kirim_refuses_get_the_hint_and_the_summary_counts_them(
    world: World, env: dict[str, str], read_only_url: str, tmp_path: Path
) -> None:
    since, until = window(world)
    (tmp_path / "data").mkdir()  # an empty lake: every event is to be replayed
    args = ["reconcile", "--data", str(tmp_path / "data"), "--since", since, "--until", until]
    result = CliRunner().invoke(app, args, env={**env, "KIRIM_API_URL": read_only_url,
                                                "COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 1, result.output
    assert re.search(r"replayed 0; bulk_replay calls 0 \(0 enqueued\); 1 call failed",
                     result.stdout), result.stdout  # fmt: skip
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: replays stopped: POST ")
    assert "status=401" in error
    assert result.stderr.count(KEY_NOTE) == 1
    assert env["KIRIM_KEY"] not in result.output


def test_replays_with_a_key_kirim_refuses_get_the_hint_once(env: dict[str, str]) -> None:
    wrong = "kdv_live_" + "B" * 24
    args = ["deliveries", "replay", "wbd_1", "wbd_2"]
    result = CliRunner().invoke(app, args, env={**env, "KIRIM_KEY": wrong})
    assert result.exit_code == 1, result.output
    assert result.output.count("status=401") == 1  # not asked again for wbd_2, in vain
    assert "note: the id after it was not asked for" in result.output
    assert result.output.count("note: Kirim refused the API key: check KIRIM_KEY") == 1


def test_a_file_given_as_the_lake_is_said_so(tmp_path: Path) -> None:
    # it said "lake storage failed to read '_state/lake.json': [Errno 20] Not a directory"
    afile = tmp_path / "afile"
    afile.write_text("not a lake")
    (tmp_path / "data").mkdir()
    args = ["reconcile", "--data", str(tmp_path / "data"), "--since", "1d", "--lake", str(afile)]
    result = CliRunner().invoke(app, args, env={"KIRIM_KEY": "kdv_live_" + "A" * 24})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --lake {afile} is a file, not a folder")
    assert afile.read_text() == "not a lake"


@pytest.mark.parametrize("command", ["bulk-replay", "replay"])
def test_replays_to_a_disabled_subscription_say_they_wait(tmp_path: Path, command: str) -> None:
    # "25 deliveries enqueued in 1 call(s)", and nothing more: Kirim sends nothing to a
    # disabled subscription (kirim-api.md §3), so the replays only wait in its queue.
    # `deliveries replay` said nothing of it even after bulk-replay learned to.
    w = World(tmp_path / "collector", seed=5, events=80)
    try:
        dead = [r for r in w.emu.store.deliveries if r.status == "dead"]
        assert len(dead) > 1
        sub = dead[0].subscription_id
        w.emu.store.subscriptions[sub].status = "disabled"  # as after its auto-disable
        with serve(create_app(w.emu.store, api_keys=w.emu.api_keys), log_level="error") as url:
            env = {"KIRIM_KEY": w.emu.api_keys[0].reveal(), "KIRIM_API_URL": url}
            if command == "bulk-replay":
                args = ["deliveries", "bulk-replay", "--subscription-id", sub, "--since", "3650d"]
                first, waiting = f"{len(dead)} deliveries enqueued in 1 call", "these replays"
            else:
                args = ["deliveries", "replay", dead[0].id, dead[1].id]
                first, waiting = f"{dead[0].id} -> ", "these 2 replays"
            result = CliRunner().invoke(app, args, env={**env, "COLUMNS": "200"})
            if command == "replay":  # one replay: said in the singular
                one = CliRunner().invoke(app, ["deliveries", "replay", dead[0].id],
                                         env={**env, "COLUMNS": "200"})  # fmt: skip
                assert one.exit_code == 0, one.output
                assert "so this replay waits in its queue" in one.stdout
    finally:
        w.close()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(first)
    (note,) = [line for line in lines if line.startswith("note:")]
    assert note == lines[-1]
    assert note.startswith(
        f"note: subscription {sub} is disabled: Kirim sends nothing to it, so {waiting} wait"
        " in its queue"
    )
    assert '{"status": "active"}' in note


def test_deliveries_list_says_when_nothing_matches_and_when_limit_cut_the_list(
    env: dict[str, str],
) -> None:
    # it printed an empty table without a word, and 25 rows without saying there were more
    runner = CliRunner()
    none = runner.invoke(app, ["deliveries", "list", "--event-id", "evt_nothing"], env=env)
    assert none.exit_code == 0, none.output
    assert none.stdout == ""
    # the server's faults may add a retry note first: which requests they hit depends on
    # how many the tests before sent, which depends on when their signals landed
    notes = [line for line in none.stderr.splitlines() if "retrying in" not in line]
    assert notes[0].startswith("note: no delivery in Kirim's history matches")
    for extra in ([], ["--json"]):
        cut = runner.invoke(app, ["deliveries", "list", "--limit", "2", *extra], env=env)
        assert cut.exit_code == 0, cut.output
        assert "note: the newest 2 deliveries are shown; Kirim has more" in cut.stderr
    one = runner.invoke(app, ["deliveries", "list", "--limit", "1", "--json"], env=env)
    assert "note: the newest delivery is shown; Kirim has more" in one.stderr  # not "1 ... are"
    rows = runner.invoke(app, ["deliveries", "list", "--limit", "100000", "--json"], env=env)
    assert rows.stdout.count("\n") > 2
    assert "Kirim has more" not in rows.stderr  # all of them shown


@pytest.mark.parametrize(
    "args",
    [
        ["backfill", "--subscription-id", "wbs_\udcff"],
        ["backfill", "--event-type", "message.st\udce9tus"],
        ["deliveries", "list", "--status", "d\udce9ad"],
        ["deliveries", "bulk-replay", "--subscription-id", "wbs_x", "--event-type", "\udce9"],
    ],
)
def test_a_filter_that_is_no_utf8_is_a_clear_error_not_a_traceback(
    tmp_path: Path, args: list[str]
) -> None:
    # Python reads a command-line byte that is no UTF-8 (é typed in a Latin-1 terminal) as
    # a lone surrogate, which httpx cannot put in a URL or a JSON body: UnicodeEncodeError
    # and a traceback, before any request went out.
    argv = window_args(tmp_path, args, "2026-11-01", "2026-11-30")
    result = CliRunner().invoke(app, argv, env={"KIRIM_KEY": "kdv_live_" + "A" * 24})
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, UnicodeError)
    assert "is no Unicode text" in result.output
