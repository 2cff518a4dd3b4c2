"""``kirim-events emulate``: sends signed webhooks to a real loopback server, serves the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from loopback import fails_then_hangs, free_port, serve, server_side_open
from typer.testing import CliRunner
from virtualtime import run
from waiting import wait_until

import kirim_events
from kirim_events.cli import app
from kirim_events.cli import emulate as emulate_cli
from kirim_events.events import parse_delivery

SECRET = "whsec_cli_test_secret"
KEY = "kdv_live_" + "cli" * 8
runner = CliRunner()


class Receiver:
    def __init__(self, answer: int = 200) -> None:
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        self.bad = 0
        self.answer = answer  # the status of a well-signed delivery

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            kirim_events.verify(body, headers.get("x-kirim-signature"), SECRET)
            status = self.answer
            self.bodies.append((headers, body))
        except kirim_events.SignatureError:
            self.bad += 1
            status = 401
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def event_keys(self) -> set[str]:
        """The event keys of the well-signed deliveries received."""
        return {r.event_key for h, b in self.bodies for r in parse_delivery(b, h)}


def emulate_into(receiver: Receiver, *options: str, env: dict[str, str] | None = None) -> Any:
    """``kirim-events emulate --no-api`` sending to ``receiver`` (served on loopback) with
    ``options``; the CliRunner result."""
    with serve(receiver) as base:
        return runner.invoke(
            app,
            ["emulate", "--no-api", "--send-to", f"{base}/webhooks/kirim", *options],
            env={"KIRIM_WEBHOOK_SECRET": SECRET, **(env or {})},
        )


def test_emulate_sends_signed_webhooks_to_a_loopback_receiver(tmp_path: Path) -> None:
    receiver = Receiver()
    result = emulate_into(
        receiver, "--events", "150", "--seed", "3", "--duplicate-rate", "0.1",
        "--time-compression", "1000", "--truth", str(tmp_path / "truth"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert receiver.bad == 0
    keys = receiver.event_keys()
    truth = pl.read_parquet(tmp_path / "truth" / "events.parquet")
    assert keys == set(truth["event_key"])
    assert truth.height == 150
    assert "events never acknowledged" in result.output


def test_no_api_ignores_kirim_key_whatever_its_form() -> None:
    # --no-api serves no API, so KIRIM_KEY is not used (only checked when the API is
    # served); ce7c207 made the Emulator refuse a key of another form, and the key set for
    # the real Kirim (a test key, a newer form) then stopped emulate --no-api with exit 2
    receiver = Receiver()
    result = emulate_into(
        receiver, "--events", "3", "--time-compression", "1000", env={"KIRIM_KEY": "other-key"}
    )
    assert result.exit_code == 0, result.output
    assert receiver.bad == 0
    assert len(receiver.event_keys()) == 3


def test_the_truth_holds_the_events_sent_and_not_those_never_sent(tmp_path: Path) -> None:
    # --truth held every world event, those never sent too: here the subscription is
    # disabled after 24 failed deliveries (a 404 is permanent), and Kirim sends the later
    # events nowhere (and the deliveries queued meanwhile are held, never sent)
    receiver = Receiver(answer=404)
    result = emulate_into(
        receiver, "--events", "80", "--duplicate-rate", "0", "--disorder", "0",
        "--concurrency", "1", "--truth", str(tmp_path / "truth"), env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent = receiver.event_keys()
    truth = pl.read_parquet(tmp_path / "truth" / "events.parquet")
    assert 0 < len(sent) < 80
    assert set(truth["event_key"]) == sent
    assert truth.height == len(sent)
    timelines = pl.read_parquet(tmp_path / "truth" / "message_timelines.parquet")
    assert timelines["n_events"].sum() == truth.filter(pl.col("type") == "message.status").height
    said = " ".join(result.output.split())
    assert f"{80 - len(sent)} world events never sent are left out of the ground truth" in said


def test_emulate_sends_the_third_body_shape_when_asked(tmp_path: Path) -> None:
    # kirim-api.md §4.3: a shape one of Kirim's pages documents; the command could not send
    # it (only the library could), so a handler could not be tried on it
    receiver = Receiver()
    result = emulate_into(
        receiver, "--events", "60", "--third-shape-rate", "1", "--disorder", "0",
        "--duplicate-rate", "0", "--truth", str(tmp_path / "truth"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    events = {h["x-kirim-event"] for h, _ in receiver.bodies}
    assert {"message.received", "message.status_updated"} <= events
    third = [b for h, b in receiver.bodies if h["x-kirim-event"] == "message.status_updated"]
    assert all(json.loads(b)["id"].startswith("wbd_") for b in third)
    keys = receiver.event_keys()
    assert keys == set(pl.read_parquet(tmp_path / "truth" / "events.parquet")["event_key"])


def test_meta_bodies_carry_the_kirim_block_only_with_kirim_block() -> None:
    # kirim-api.md §4.2: the emulator adds the optional `kirim` object "only when asked"
    def meta_bodies(*options: str) -> list[dict[str, Any]]:
        receiver = Receiver()
        result = emulate_into(
            receiver, "--events", "80", "--disorder", "0", "--duplicate-rate", "0", *options
        )
        assert result.exit_code == 0, result.output
        return [json.loads(b) for h, b in receiver.bodies if h["x-kirim-source"] == "meta"]

    plain = meta_bodies()
    assert plain
    assert not any("kirim" in body for body in plain)
    assert not any("kirim" in body for body in meta_bodies("--no-kirim-block"))
    asked = meta_bodies("--kirim-block")
    assert asked
    assert all(body["kirim"]["conversation_id"].startswith("cnv_") for body in asked)
    result = emulate_into(Receiver(), "--events", "2", "--kirim-block", "--no-kirim-block")
    assert result.exit_code == 2
    assert "--kirim-block and --no-kirim-block contradict each other" in result.output


def test_emulate_refuses_to_run_without_its_secrets() -> None:
    result = runner.invoke(app, ["emulate", "--no-api", "--send-to", "http://127.0.0.1:9/"], env={})
    assert result.exit_code == 2
    assert "KIRIM_WEBHOOK_SECRET" in result.output
    result = runner.invoke(app, ["emulate", "--events", "3"], env={"KIRIM_KEY": ""})
    assert result.exit_code == 2
    assert "KIRIM_KEY" in result.output
    result = runner.invoke(app, ["emulate", "--events", "3"], env={"KIRIM_KEY": "kdv_live_short"})
    assert result.exit_code == 2
    assert "24 url-safe" in result.output
    assert "kdv_live_short" not in result.output
    result = runner.invoke(app, ["emulate", "--no-api"], env={})
    assert result.exit_code == 2
    assert "nothing to do: pass --send-to URL, or serve the API" in result.output


@pytest.mark.parametrize(
    ("events", "says"),
    [
        ("-1", "greater than or equal to 0"),
        ("99999999999999999999", "less than or equal to 1000000000"),
        ("1000000001", "less than or equal to 1000000000"),
        ("many", "a valid integer"),
    ],
)
def test_emulate_refuses_a_bad_events_count(
    events: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the key and the secret are set, so the refusal can only be about --events
    env = {"KIRIM_KEY": KEY, "KIRIM_WEBHOOK_SECRET": SECRET, "COLUMNS": "200"}

    async def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the emulator started")  # rather than serve until stopped

    monkeypatch.setattr(emulate_cli, "_run", started)
    result = runner.invoke(app, ["emulate", "--port", "0", "--events", events], env=env)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--events': Input should be {says}" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--send-to", "http://127.0.0.1:99999/hook"], "--send-to's port 99999 is no TCP port"),
        (["--send-to", "http://127.0.0.1:0/hook"], "--send-to's port 0 is no TCP port"),
        (["--send-to", "http://"], "--send-to must be"),
        (["--send-to", "ftp://example.com/x"], "--send-to must be"),
        (["--send-to", "http://[PASSW0RD/x"], "--send-to must be"),
        (["--send-to", "http://host with blanks/x"], "--send-to must be"),
        (["--send-to", "ftp://hook:S3CRET@example.com/x?token=S3CRET"], "ftp://example.com/x"),
        (["--send-to", "http://127.0.0.1:9/x", "--start", "9999-12-31T23:59:59Z"], "--start"),
        (["--send-to", "http://127.0.0.1:9/x", "--start", "1969-01-01T00:00:00Z"], "--start"),
        # digits are a mistake, not unix seconds (1970-08-23), as for --since and as_of
        (["--send-to", "http://127.0.0.1:9/x", "--start", "20260101"], "--start"),
    ],
)
def test_emulate_refuses_what_cannot_run_before_it_starts(args: list[str], says: str) -> None:
    result = runner.invoke(
        app, ["emulate", "--no-api", "--events", "2", *args], env={"KIRIM_WEBHOOK_SECRET": SECRET}
    )
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert "S3CRET" not in result.output


def test_emulate_send_to_without_a_scheme_says_to_write_it() -> None:
    # it said only "got 'localhost:3000'": the path is not shown (it may hold a secret), so
    # what was wrong with the URL was left to guess
    args = ["emulate", "--no-api", "--events", "2", "--send-to", "localhost:3000/hooks/S3CRET"]
    result = runner.invoke(app, args, env={"KIRIM_WEBHOOK_SECRET": SECRET, "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "got 'localhost:3000'" in said
    assert "write http:// or https:// in front of it" in said
    assert "hooks" not in said
    assert "S3CRET" not in said


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/webhooks",
        "http://localhost:{port}/",
        "https://[::1]:{port}/x",
        "http://0.0.0.0:{port}/webhooks",  # the unspecified address: a client reaches this host
        "http://[::]:{port}/webhooks",
    ],
)
def test_emulate_refuses_to_send_webhooks_to_its_own_api(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --send-to on the API's own port (the README's example serves it on 8765): every
    # delivery went to the API, which answered 404 (permanent), and the run reported a
    # disabled subscription, not the mix-up
    async def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the emulator started")

    monkeypatch.setattr(emulate_cli, "_run", started)
    port = free_port()
    env = {"KIRIM_KEY": KEY, "KIRIM_WEBHOOK_SECRET": SECRET, "COLUMNS": "200"}
    args = ["emulate", "--port", str(port), "--events", "2", "--send-to", target.format(port=port)]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"--send-to is this emulator's own API (127.0.0.1:{port})" in said
    # another port, or --no-api, is fine
    other = ["--send-to", f"http://127.0.0.1:{port + 1}/webhooks"]
    with pytest.raises(AssertionError, match="the emulator started"):
        runner.invoke(app, [*args[:-2], *other], env=env, catch_exceptions=False)
    with pytest.raises(AssertionError, match="the emulator started"):
        runner.invoke(app, [*args, "--no-api"], env=env, catch_exceptions=False)


@pytest.mark.parametrize("start", ["2026-01-01", "2026-01-01T00:00:00Z", "2026-01-01T07:00+07:00"])
def test_emulate_reads_start_as_the_other_commands_read_times(start: str) -> None:
    assert emulate_cli._start(start, 10) == 1_767_225_600  # 2026-01-01T00:00:00Z


def test_emulate_reads_a_span_ago_for_start() -> None:
    # --since 1d was read everywhere else; --start 1d was refused

    assert emulate_cli._start("1d", 10, now=1_767_225_600.5) == 1_767_225_600 - 86_400
    assert emulate_cli._start(None, 10, now=1_767_225_600.5) == (
        1_767_225_600 - 10 - emulate_cli._END_MARGIN
    )


@pytest.mark.parametrize(("seed", "events"), [(1, 1000), (7, 3000)])
def test_the_default_start_ends_the_history_before_now(seed: int, events: int) -> None:
    """Kirim cannot have delivered an event before it happened, nor record it ahead of now."""

    from kirim_events.emulator import Emulator, WorldConfig

    world = WorldConfig()
    start = emulate_cli._start(None, emulate_cli._world_span(world, seed, events))
    emu = Emulator(seed=seed, world=world, start=start)
    emu.subscribe("https://example.invalid/hook")
    for _ in emu.iter_deliveries(events):  # the history, as emulate records it
        pass
    now = time.time()
    newest = max(r.created_at for r in emu.store.deliveries)
    assert len(emu.truth) == events
    assert now - 5 * 60 <= newest <= now  # ends about now, not after it


def test_emulate_on_a_port_in_use_says_so_in_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "kirim_events", "emulate", "--port", str(port), "--events",
             "2"],
            env={**os.environ, "KIRIM_KEY": KEY, "COLUMNS": "200"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr  # as collect's: a setting to change
    assert f"could not serve the API: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # not uvicorn's line too


def test_emulate_sends_and_serves_the_api_until_sigterm() -> None:
    receiver = Receiver()
    with serve(receiver) as target:
        _send_andserve(target, receiver)


def _run_emulate(
    argv: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """``kirim-events <argv>`` in a process of its own, its output (stderr too) collected line
    by line into the returned list by a reader thread, as it comes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kirim_events", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    return proc, lines, reader


def _send_andserve(target: str, receiver: Receiver) -> None:
    # --port 0: a free port, which the first line names (no race for a port picked before)
    env = dict(os.environ, KIRIM_KEY=KEY, KIRIM_WEBHOOK_SECRET=SECRET)
    argv = ["emulate", "--port", "0", "--events", "120", "--send-to", f"{target}/hook"]
    proc, lines, reader = _run_emulate([*argv, "--time-compression", "1000"], env)

    def full_page() -> list[Any] | None:
        with contextlib.suppress(httpx.TransportError):
            r = httpx.get(
                f"{base}/v1/webhook_deliveries",
                params={"limit": 100},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            if r.status_code == 200 and len(r.json()["data"]) == 100:
                return list(r.json()["data"])
        return None

    try:
        wait_until(lambda: any("sending done" in line for line in lines), 20, interval=0.05,
                   what=f"'sending done' {lines}")  # fmt: skip
        (serving,) = [line for line in lines if line.startswith("Kirim API emulator on")]
        port = int(serving.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert port > 0
        base = f"http://127.0.0.1:{port}"
        rows = wait_until(full_page, 15, interval=0.05, what=f"full page of history {lines}")
        assert len(rows) == 100, lines
        assert all(row["payload"] for row in rows)
        denied = httpx.get(f"{base}/v1/webhook_deliveries")
        assert denied.status_code == 401
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=5)
        out = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert receiver.bad == 0
    assert len(receiver.event_keys()) == 120
    assert "emulator stopped" in out
    assert SECRET not in out
    assert KEY not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_ends_emulate_while_an_api_request_waits_out_its_fault_latency(
    sig: signal.Signals,
) -> None:
    # uvicorn waited for every request in flight: one slowed by --fault-latency 3600 kept the
    # command running through Ctrl-C and SIGTERM alike, for the hour
    argv = ["emulate", "--port", "0", "--events", "5", "--fault-latency", "3600",
            "--fault-latency-rate", "1"]  # fmt: skip
    proc, lines, reader = _run_emulate(argv, dict(os.environ, KIRIM_KEY=KEY, COLUMNS="200"))
    try:
        wait_until(lambda: any("Ctrl+C stops" in line for line in lines), 20, interval=0.05,
                   what=f"the API serving {lines}")  # fmt: skip
        (serving,) = [line for line in lines if line.startswith("Kirim API emulator on")]
        port = int(serving.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"GET /v1/webhook_deliveries HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n"
            )
            client_port = sock.getsockname()[1]
            wait_until(lambda: server_side_open(port, client_port), 10, interval=0.01,
                       what="the request accepted")  # fmt: skip
            time.sleep(0.5)  # read and handed to the app, which waits out its latency
            proc.send_signal(sig)
            proc.wait(timeout=60)  # not the hour
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "emulator stopped" in out


def test_emulate_without_send_to_reports_the_history_it_serves() -> None:
    # It had printed the sending table: "succeeded 0" for a history served as succeeded.
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kirim_events", "emulate", "--port", str(port), "--events", "40"],
        env=dict(os.environ, KIRIM_KEY=KEY, COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def served() -> int:
        with contextlib.suppress(httpx.TransportError):
            r = httpx.get(
                f"http://127.0.0.1:{port}/v1/webhook_deliveries",
                params={"limit": 100},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            if r.status_code == 200:
                return len(r.json()["data"])
        return 0

    try:
        # the API answers while the history grows: wait for all of it (one row per event)
        wait_until(lambda: served() == 40, 20, interval=0.05, what="history of 40 rows served")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "recorded 40 world events as delivery history (not sent)" in out
    assert "rows with status succeeded" in out
    assert "sending done" not in out
    assert "retries scheduled" not in out  # the sending table is for runs that send


def test_emulate_serves_only_the_last_30_days_of_history() -> None:
    # kirim-api.md §3: Kirim purges delivery rows 30 days after creation; a history that
    # started 45 days ago was served whole (and could be replayed)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kirim_events", "emulate", "--port", str(port), "--events", "40",
         "--start", "45d"],
        env=dict(os.environ, KIRIM_KEY=KEY, COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:  # the history is recorded before this line
            lines.append(line)
            if "the API serves it" in line:
                break
        r = httpx.get(
            f"http://127.0.0.1:{port}/v1/webhook_deliveries",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "recorded 40 world events" in "".join(lines)
    assert r.status_code == 200
    assert r.json()["data"] == []
    # and the summary says so: it counted 40 delivery rows and nothing else
    assert "rows older than 30 days (purged: not served) │ 40" in "".join(lines)


def refuse(request: httpx.Request) -> httpx.Response:
    """A receiver nobody listens at, without the network: every connection is refused."""
    raise httpx.ConnectError("connection refused", request=request)


def test_sending_to_an_unreachable_receiver_says_so_while_it_retries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It printed nothing for as long as Kirim keeps retrying (about 31 hours, compressed).
    # On virtual time, the watch's turns come at 0.3 s and 0.6 s exactly; the test looks
    # between them.
    from kirim_events.cli.emulate import _watch
    from kirim_events.emulator import Emulator, EngineConfig

    async def main() -> list[tuple[int, str]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        emu = Emulator(seed=1, secrets="whsec_x", engine=EngineConfig(time_compression=3600),
                       clock=loop.time)  # fmt: skip
        emu.subscribe("http://receiver.test/hook")
        sending = asyncio.ensure_future(emu.send(5, transport=httpx.MockTransport(refuse)))
        watch = asyncio.ensure_future(_watch(emu, api=False, every=0.3))
        seen = []
        for at in (0.45, 0.75):
            await asyncio.sleep(start + at - loop.time())
            seen.append((len(emu.store.attempts), capsys.readouterr().out))
        emu.stop()
        watch.cancel()
        await asyncio.gather(sending, watch, return_exceptions=True)
        return seen

    (n, first), (m, second) = run(main(), start=1_790_000_000.0)
    assert n > 0
    # and, once, how long that goes on: nothing said the run would last Kirim's ~31 h of
    # retries (at --time-compression 1, a day and more for a handler that is down)
    assert " ".join(first.split()) == (
        f"{n} attempts, 0 acknowledged; {n} failed in the last 0.3 s, "
        "the last: ConnectError: connection refused "
        "note: Kirim tries a failing delivery 8 times over about 31 h, here about 31 s "
        "(--time-compression 3600); Ctrl+C stops sooner"
    )
    assert (m, " ".join(second.split())) == (n, f"{n} attempts, 0 acknowledged")  # no new


def test_a_handler_refusing_every_delivery_401_gets_no_note_of_31_hours_of_retries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A wrong secret answers 401, which Kirim takes as final: each delivery ends `failed` at
    # its first attempt. The note said "Kirim tries a failing delivery 8 times over about
    # 31 h" all the same, as though the 401s would be retried.
    from kirim_events.cli.emulate import _watch
    from kirim_events.emulator import Emulator

    async def main() -> str:
        emu = Emulator(seed=1, secrets=SECRET, clock=asyncio.get_running_loop().time)
        emu.subscribe("http://receiver.test/hook")
        watch = asyncio.ensure_future(_watch(emu, api=False, every=0.3))
        await emu.send(5, transport=httpx.ASGITransport(Receiver(answer=401)))
        await asyncio.sleep(0.5)  # virtual time: the watch's first turn, at 0.3 s
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        assert {a.outcome for a in emu.store.attempts} == {"failed"}  # each one final
        return " ".join(capsys.readouterr().out.split())

    said = run(main(), start=1_790_000_000.0)
    assert "failed in the last 0.3 s, the last: HTTP 401" in said  # the failures are shown
    assert "note:" not in said


def test_the_retry_note_says_how_to_shorten_the_wait() -> None:
    from kirim_events.cli.emulate import _retry_note

    assert _retry_note(1.0) == (
        "Kirim tries a failing delivery 8 times over about 31 h; --time-compression 3600"
        " makes that about 31 s, and Ctrl+C stops sooner"
    )
    assert "here about 52 min (--time-compression 36)" in _retry_note(36)
    assert "here about 2.5 h (--time-compression 12.5)" in _retry_note(12.5)


def test_the_summary_after_a_stop_counts_deliveries_still_waiting_to_retry() -> None:
    """A stop between attempts left them out of every line (succeeded 0, failed 0, dead 0)."""
    from kirim_events.cli.emulate import _summary
    from kirim_events.emulator import Emulator, EngineConfig, EngineReport

    async def main() -> tuple[Emulator, EngineReport]:
        loop = asyncio.get_running_loop()
        emu = Emulator(seed=1, secrets="whsec_x", engine=EngineConfig(time_compression=1.0),
                       clock=loop.time)  # fmt: skip
        emu.subscribe("http://receiver.test/hook")  # every attempt is refused
        sending = asyncio.ensure_future(emu.send(5, transport=httpx.MockTransport(refuse)))
        await asyncio.sleep(1.0)  # virtual: the first attempts fail; retries are minutes away
        emu.stop()
        return emu, await sending

    emu, report = run(main(), start=1_790_000_000.0)
    waiting = sum(1 for row in emu.store.deliveries if row.status == "pending")
    assert waiting >= 1
    table = _summary(report, emu)
    rows = dict(zip(table.columns[0]._cells, table.columns[1]._cells, strict=True))
    retrying = sum(1 for r in emu.store.deliveries if r.status == "pending" and r.attempt)
    assert retrying >= 1
    assert rows["deliveries awaiting a retry not yet due"] == str(retrying)
    untried = int(rows.get("deliveries not yet attempted", "0"))
    assert retrying + untried == waiting  # nothing held: no subscription was disabled


def test_the_summary_says_why_attempts_failed_and_counts_one_cut_short_once() -> None:
    """An attempt cut short by the stop showed as "awaiting a retry" too (and not in
    "attempts"), and why attempts failed was only in the progress line, every 5 s."""
    from kirim_events.cli.emulate import _summary
    from kirim_events.emulator import Emulator, EngineConfig

    arrived = asyncio.Event()
    hung = fails_then_hangs(503, b"busy", arrived)  # the first attempt fails; the retry hangs

    async def main() -> Any:
        emu = Emulator(seed=2, secrets=SECRET, engine=EngineConfig(time_compression=10_000))
        emu.subscribe("http://receiver.test/hook")
        sending = asyncio.ensure_future(
            emu.send(1, transport=httpx.ASGITransport(app=hung), forever=True)
        )
        await asyncio.wait_for(arrived.wait(), 10)
        emu.stop()
        return emu, await asyncio.wait_for(sending, 10)

    emu, report = asyncio.run(main())
    table = _summary(report, emu)
    rows = dict(zip(table.columns[0]._cells, table.columns[1]._cells, strict=True))
    assert rows["attempts"] == "2"
    assert rows["attempts cut short by the stop"] == "1"
    assert "deliveries awaiting a retry not yet due" not in rows
    assert "deliveries not yet attempted" not in rows
    assert rows["failed attempts by reason"] == "HTTP 503 x1"
    assert rows["the last failure"] == "HTTP 503"


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_an_unreadable_ssl_cert_file_is_one_error_line_before_anything_starts(
    tmp_path: Path, scheme: str
) -> None:
    # It was read when the first delivery went out: a traceback after "sending...". Now an
    # https --send-to is refused before anything starts, and an http one is not stopped.
    args = [
        "emulate",
        "--events",
        "3",
        "--seed",
        "1",
        "--no-api",
        "--send-to",
        f"{scheme}://127.0.0.1:1/x",
        "--time-compression",
        "1000000",
        "--timeout",
        "0.2",
    ]
    env = {"KIRIM_WEBHOOK_SECRET": SECRET, "SSL_CERT_FILE": str(tmp_path / "missing.pem")}
    result = runner.invoke(app, args, env=env)  # fmt: skip
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    if scheme == "https":
        assert result.exit_code == 2, result.output
        assert "SSL_CERT_FILE / SSL_CERT_DIR cannot be read" in result.output
        assert "sending" not in result.output
    else:
        assert result.exit_code == 0, result.output
        assert "sending 3 world events" in result.output


def test_a_quoted_secret_gets_a_note_before_sending() -> None:
    # collect said so and emulate did not: it signed with the quotes, and every delivery
    # then failed 401 at a handler holding the secret without them.
    result = runner.invoke(
        app,
        ["emulate", "--no-api", "--send-to", "http://127.0.0.1:1/x", "--events", "1",
         "--time-compression", "1000000", "--timeout", "0.2"],
        env={"KIRIM_WEBHOOK_SECRET": '"whsec_quoted"'},
    )  # fmt: skip
    assert "holds a blank or a quote" in result.output
    assert "whsec_quoted" not in result.output


@pytest.mark.parametrize("secret", ["", SECRET])
def test_a_history_without_webhook_secret_says_its_replays_cannot_be_verified(
    secret: str,
) -> None:
    # without --send-to, the history's subscription was signed with a secret made from the
    # seed and never shown: after PATCHing its url to a handler, every replay got a 401
    proc = subprocess.Popen(
        [sys.executable, "-m", "kirim_events", "emulate", "--port", "0", "--events", "3"],
        env=dict(os.environ, KIRIM_KEY=KEY, KIRIM_WEBHOOK_SECRET=secret, COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "the API serves it" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = " ".join("".join(lines).split())
    assert proc.returncode == 0, said + out
    note = "without KIRIM_WEBHOOK_SECRET, replays are signed with a secret no handler holds"
    assert (note in said) is (not secret)


def test_a_large_world_without_start_says_why_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # --events 100000000 printed nothing for minutes while the world's span was measured
    monkeypatch.setattr(emulate_cli, "_SLOW_SPAN", 5)
    result = runner.invoke(
        app,
        ["emulate", "--no-api", "--send-to", "http://127.0.0.1:1/x", "--events", "5",
         "--time-compression", "1000000", "--timeout", "0.2"],
        env={"KIRIM_WEBHOOK_SECRET": SECRET},
    )  # fmt: skip
    assert "working out when a world of 5 events starts" in result.output
    assert "--start T skips this" in result.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_a_large_world_is_worked_out_ends_it_as_a_later_stop_does(
    sig: signal.Signals,
) -> None:
    # the span of 3,000,000 events takes most of a minute, and a note says so: SIGTERM then
    # killed the command without a word (-15) and Ctrl+C ended it with 130, where a stop
    # ends emulate with exit 0 (docs/cli.md)
    env = dict(os.environ, KIRIM_WEBHOOK_SECRET=SECRET)
    argv = ["emulate", "--no-api", "--send-to", "http://127.0.0.1:9/hook", "--events", "3000000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kirim_events", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        note = proc.stderr.readline()  # printed once the command runs, before the long part
        assert "working out when a world of 3,000,000 events starts" in note
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"received {sig.name} while starting: stopped before anything began" in err
    assert "sending" not in out
    assert "Traceback" not in err


def test_while_serving_after_sending_a_line_comes_only_with_new_attempts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # replays and released held deliveries went out without a word once sending had ended
    from kirim_events.cli.emulate import _watch
    from kirim_events.emulator import Emulator
    from kirim_events.emulator.store import AttemptRecord

    emu = Emulator(seed=1, secrets="whsec_x")

    def attempt(outcome: str, code: int) -> AttemptRecord:
        return AttemptRecord("wbd_1", 1, "wbs_1", "evt_1", "contact.updated", 0.0, 0, outcome,
                             code, None, None)  # fmt: skip

    emu.store.attempts.append(attempt("succeeded", 200))  # from the sending, already told

    async def main() -> list[str]:
        # on virtual time the watch's turns come every 0.05 s exactly; the test looks between
        watch = asyncio.ensure_future(_watch(emu, api=True, every=0.05, when_busy=True))
        seen = []
        await asyncio.sleep(0.125)  # two turns, idle
        seen.append(capsys.readouterr().out)
        emu.store.attempts.append(attempt("failed", 401))
        await asyncio.sleep(0.05)  # the turn at 0.15 s
        seen.append(capsys.readouterr().out)
        await asyncio.sleep(0.2)  # four more turns, idle again
        seen.append(capsys.readouterr().out)
        watch.cancel()
        return seen

    idle, busy, idle_again = (" ".join(out.split()) for out in run(main()))
    assert (idle, idle_again) == ("", "")  # idle: no line
    assert busy == "2 attempts, 1 acknowledged; 1 failed in the last 0.05 s, the last: HTTP 401"


def test_a_disabled_subscription_is_announced_once_across_both_phases(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kirim_events.cli.emulate import _watch
    from kirim_events.emulator import Emulator
    from kirim_events.emulator.store import AttemptRecord

    emu = Emulator(seed=1, secrets="whsec_x")
    sub = emu.subscribe("http://127.0.0.1:9/hook")
    sub.status = "disabled"
    told: set[str] = set()

    async def phase(when_busy: bool) -> str:
        watch = asyncio.ensure_future(
            _watch(emu, api=True, every=0.05, when_busy=when_busy, told=told)
        )
        await asyncio.sleep(0.02)  # virtual time: before the first turn, at 0.05 s
        emu.store.attempts.append(AttemptRecord("wbd_1", 1, sub.id, "evt_1", "contact.updated",
                                                0.0, 0, "failed", 401, None, None))  # fmt: skip
        await asyncio.sleep(0.2)  # four turns
        watch.cancel()
        return " ".join(capsys.readouterr().out.split())

    sending = run(phase(False))
    serving = run(phase(True))  # after it
    said = f"subscription {sub.id} disabled after"
    assert (sending.count(said), serving.count(said)) == (1, 0)
    assert sending.count("attempts") == 4  # every turn while sending, the notice only once
    assert serving.count("attempts") == 1  # the new attempt, once
