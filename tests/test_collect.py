"""collect end to end: emulator deliveries, loopback server, SIGTERM drain, SIGKILL crashes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from localzone import local_zone
from loopback import closed_by_peer, free_port, server_side_open
from nosecrets import places_holding
from typer.testing import CliRunner
from waiting import wait_until

import kirim_events as ke
from kirim_events import testing
from kirim_events.cli import app
from kirim_events.emulator import Emulator, EngineConfig
from kirim_events.events import parse_delivery
from kirim_events.journal import Journal
from kirim_events.lake import Lake
from kirim_events.receiver import Receiver

SECRET = "whsec_collect_test"
PATH = "/webhooks/kirim"


class Collector:
    """``kirim-events collect`` in a child process on a loopback port; a thread collects
    its stderr as it comes, so a test can wait for a line."""

    def __init__(
        self,
        data: Path,
        port: int,
        *,
        flush_interval: float = 3600.0,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.data, self.port, self.flush_interval = data, port, flush_interval
        self.env, self.args = env or {}, args
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> Collector:
        env = {**os.environ, "KIRIM_WEBHOOK_SECRET": f"whsec_old,{SECRET}", **self.env}
        cmd = [sys.executable, "-m", "kirim_events", "collect", "--data", str(self.data)]
        cmd += ["--port", str(self.port), "--flush-interval", str(self.flush_interval)]
        cmd += self.args
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self.lines = []  # a new list: the reader of a killed run may still add to its own
        self._reader = threading.Thread(
            target=_read_lines, args=(self.proc.stderr, self.lines), daemon=True
        )
        self._reader.start()
        STARTED.append(self)
        wait_until(self._healthy, interval=0.05, what="a healthy collector")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.ended()
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success
        except httpx.TransportError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        return self.proc.returncode, self.ended()

    def stderr(self) -> str:
        """What the collector wrote on stderr so far."""
        return "".join(self.lines)

    def ended(self) -> str:
        """All it wrote on stderr, once it has ended."""
        if self._reader is not None:
            self._reader.join(timeout=10)
        return self.stderr()


def _read_lines(stream: IO[bytes], lines: list[str]) -> None:
    with stream:  # closed at its end: the pipe is the reader's alone
        for line in stream:
            lines.append(line.decode())


STARTED: list[Collector] = []


@pytest.fixture(autouse=True)
def no_collector_left() -> Iterator[None]:
    """Kill what a test started and did not stop (it failed half way): a collector left
    running outlives the test run."""
    yield
    while STARTED:
        c = STARTED.pop()
        if c.proc is not None and c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


@pytest.fixture
def collector(tmp_path: Path) -> Collector:
    return Collector(tmp_path, free_port())


def test_emulator_deliveries_land_in_the_lake_exactly_once(tmp_path: Path) -> None:
    # At-least-once with 30 % duplicate deliveries and disorder, through real HTTP in-process.
    config = EngineConfig(duplicate_rate=0.3, disorder=0.3, time_compression=1000)
    emu = Emulator(seed=11, engine=config)
    with Journal(tmp_path) as journal:
        app = Receiver(journal, emu.webhook_secrets)
        report = asyncio.run(
            emu.send(300, url=f"http://c{PATH}", transport=httpx.ASGITransport(app))
        )
        assert report.duplicates > 0
        assert emu.unacknowledged_event_keys() == set()
        journal.flush(Lake(tmp_path))
    truth = set(emu.truth.log().collect()["event_key"])
    events = Lake(tmp_path).events().collect()
    assert events.height == len(truth) == 300
    assert set(events["event_key"]) == truth


def test_loopback_server_sigterm_drains_flushes_and_exits_0(collector: Collector) -> None:
    # The flush interval is an hour: only the shutdown flush can put events in the lake.
    collector.start()
    config = EngineConfig(
        duplicate_rate=0.2, time_compression=1_000_000
    )  # 31 h of retries in 0.1 s
    emu = Emulator(seed=4, secrets=SECRET, engine=config)
    asyncio.run(emu.send(120, url=collector.url))
    assert emu.unacknowledged_event_keys() == set()
    with httpx.Client() as c:
        assert c.get(collector.url).status_code == 405
        assert c.post(collector.url, content=b"{}").status_code == 401
        metrics = c.get(f"http://127.0.0.1:{collector.port}/metrics").text
    assert "kirim_events_journal_backlog 120" in metrics
    code, stderr = collector.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert SECRET not in stderr
    assert "KIRIM_TOLERANCE is off" not in stderr
    assert places_holding(collector.data, SECRET, "whsec_old") == []  # journal, lake, state
    events = Lake(collector.data).events().collect()
    assert set(events["event_key"]) == set(emu.truth.log().collect()["event_key"])
    assert events.height == 120
    assert "rejected" in Lake(collector.data).deliveries().collect()["outcome"].to_list()


def test_a_collector_without_the_freshness_check_says_so(tmp_path: Path) -> None:
    """Replays of captured deliveries pass when KIRIM_TOLERANCE is off: a warning at start."""
    c = Collector(tmp_path, free_port(), env={"KIRIM_TOLERANCE": "off"}).start()
    stale = testing.signed_request(testing.kirim_event(), SECRET, timestamp=1_700_000_000)
    assert httpx.post(c.url, content=stale.body, headers=stale.headers).status_code == 200
    code, stderr = c.stop()
    assert code == 0, stderr
    assert "KIRIM_TOLERANCE is off" in stderr


def test_a_request_in_flight_at_sigterm_is_finished_and_flushed(collector: Collector) -> None:
    collector.start()
    req = testing.signed_request(testing.kirim_event(), SECRET)
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(req.body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    metrics = f"http://127.0.0.1:{collector.port}/metrics"
    with socket.create_connection(("127.0.0.1", collector.port)) as sock:
        sock.sendall(head.encode() + req.body[:10])
        # the request is in flight once the receiver counted it (it reads the body next)
        wait_until(lambda: "kirim_events_received_total 1" in httpx.get(metrics).text)
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGINT)
        wait_until(lambda: not accepting(collector.port))  # the shutdown has begun
        sock.sendall(req.body[10:])
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    code, stderr = collector.stop(signal.SIGINT)
    assert code == 0, stderr
    assert Lake(collector.data).events().collect().height == 1


def test_connections_beyond_the_limit_get_a_503_that_kirim_retries(tmp_path: Path) -> None:
    # Each open connection may hold a body of up to --max-body bytes: the limit bounds memory.
    c = Collector(tmp_path, free_port(), args=("--max-connections", "2")).start()
    req = testing.signed_request(testing.kirim_event(), SECRET)
    address = ("127.0.0.1", c.port)

    def posted() -> int:
        return httpx.post(c.url, content=req.body, headers=req.headers).status_code

    with socket.create_connection(address):  # open, silent: one of the two
        # the second connection is served: the limit counts the asking one (uvicorn's own
        # limit does, and served one connection fewer than asked)
        assert posted() == 200
        with socket.create_connection(address):  # both taken: a third gets 503
            wait_until(lambda: posted() == 503)
    wait_until(lambda: posted() == 200)
    code, stderr = c.stop()
    assert code == 0, stderr
    assert Lake(tmp_path).events().collect().height == 1


def test_one_connection_at_a_time_is_served(tmp_path: Path) -> None:
    # --max-connections 1 answered every webhook 503, its own connection counted as over
    c = Collector(tmp_path, free_port(), args=("--max-connections", "1")).start()
    req = testing.signed_request(testing.kirim_event(), SECRET)
    with httpx.Client() as client:  # one kept-alive connection, three webhooks
        for _ in range(3):
            assert client.post(c.url, content=req.body, headers=req.headers).status_code == 200
    with socket.create_connection(("127.0.0.1", c.port)):  # the one slot taken: 503
        wait_until(
            lambda: httpx.post(c.url, content=req.body, headers=req.headers).status_code == 503
        )
    code, stderr = c.stop()
    assert code == 0, stderr
    assert Lake(tmp_path).events().collect().height == 1


def test_a_silent_or_trickling_request_head_is_cut_off_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    # uvicorn times out only idle kept-alive connections: one that never sent a whole
    # request head held a --max-connections slot for ever, so a few hundred of them turned
    # every webhook away with 503.
    c = Collector(tmp_path, free_port(), args=("--max-connections", "2", "--body-timeout", "1"))
    c.start()
    req = testing.signed_request(testing.kirim_event(), SECRET)
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(req.body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    trickle = b"POST /webhooks/kirim HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000
    address = ("127.0.0.1", c.port)
    with socket.create_connection(address) as silent, socket.create_connection(address) as slow:
        slow.sendall(trickle[:5])
        # both slots are taken: a webhook now gets 503
        assert httpx.post(c.url, content=req.body, headers=req.headers).status_code == 503
        assert closed_by_peer(silent)
        assert closed_by_peer(slow, trickle)
    # the slots are free again
    assert httpx.post(c.url, content=req.body, headers=req.headers).status_code == 200
    with socket.create_connection(address) as kept:
        kept.sendall(head.encode() + req.body)  # a whole request: answered, kept alive ...
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        # ... then the next head trickles in: cut off too
        assert closed_by_peer(kept, trickle)
    # an answer given before the body was read (404 here; 405, 408 and 413 alike) closes
    # the connection at once, rather than wait on the rest of the body
    with socket.create_connection(address) as early:
        early.sendall(b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        answer = early.recv(4096)
        assert answer.startswith(b"HTTP/1.1 404")
        assert b"connection: close" in answer
        assert closed_by_peer(early, b"x" * 100, within=1)
    code, stderr = c.stop()
    assert code == 0, stderr
    assert stderr.count("closed the connection of") == 3, stderr
    assert Lake(tmp_path).events().collect().height == 1


def test_a_client_that_never_reads_its_answers_loses_its_connection(tmp_path: Path) -> None:
    # Pipelined requests whose answers are never read fill the send buffer: the answer waited
    # for the client with no deadline, and the connection held its slot for ever (served all
    # 5,000 answers, some 9.6 MB, once the client read again).
    c = Collector(tmp_path, free_port(), args=("--body-timeout", "1")).start()
    with socket.socket() as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.connect(("127.0.0.1", c.port))
        ends = (c.port, greedy.getsockname()[1])
        assert server_side_open(*ends)
        greedy.settimeout(0.5)
        with contextlib.suppress(OSError):  # the server stops reading once its buffer is full
            for _ in range(50):
                greedy.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
        # not reading: the collector lets it go once its answers wait past the deadline ...
        wait_until(lambda: "closed the connection of" in c.stderr(), 15, what="it let go")
        # ... at once, its answers still unread: a close() would wait for them to drain, and
        # keep its end open and its slot taken for as long as the client does not read
        wait_until(lambda: not server_side_open(*ends), 5, what="the server's end closed")
        greedy.settimeout(30)
        received = 0
        with contextlib.suppress(ConnectionResetError):  # closed with answers unread
            while chunk := greedy.recv(65536):
                received += len(chunk)
    one = len(httpx.get(f"http://127.0.0.1:{c.port}/metrics").content)
    assert received < 5000 * one / 2  # cut off, not served to the end
    code, stderr = c.stop()
    assert code == 0, stderr
    assert stderr.count("closed the connection of") == 1, stderr


def test_a_request_head_in_time_is_served_however_long_the_connection_lives(
    tmp_path: Path,
) -> None:
    # the deadline is per request head, not per connection: a kept-alive client that sends
    # a whole request every 0.6 s for longer than the timeout keeps being answered
    c = Collector(tmp_path, free_port(), args=("--body-timeout", "1")).start()
    with httpx.Client() as client:
        for _ in range(5):
            req = testing.signed_request(testing.kirim_event(), SECRET)
            assert client.post(c.url, content=req.body, headers=req.headers).status_code == 200
            # real seconds on purpose: the connection must outlive the deadline, and no clock
            # reaches into the child process
            time.sleep(0.6)
    code, stderr = c.stop()
    assert code == 0, stderr
    assert "closed the connection of" not in stderr
    assert Lake(tmp_path).events().collect().height == 5


@pytest.mark.parametrize("flush", ["final", "periodic"])
def test_a_second_signal_during_a_last_flush_still_exits_0_with_everything_flushed(
    tmp_path: Path, flush: str
) -> None:
    # A lake whose write sends the process SIGTERM: a second signal had killed the final
    # flush, or the wait for a periodic flush running when the server stopped (exit -15).
    script = f'''
import importlib, os, signal, sys, threading, time, httpx
import kirim_events as ke
from kirim_events import testing
collect_module = importlib.import_module("kirim_events.collect")  # ke.collect is the function
PERIODIC = {flush == "periodic"}

class Outside(collect_module._SignalsOutsideServing):
    """collect's own signal handler, counting the signals it took once serving stopped."""
    def __init__(self):
        super().__init__()
        self.while_stopping = 0
        OUTSIDE.append(self)
    def __call__(self, sig, frame):
        super().__call__(sig, frame)
        self.while_stopping += self.stopping
OUTSIDE = []
collect_module._SignalsOutsideServing = Outside

def wait_until(condition):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "never came"
        time.sleep(0.01)

class SignalledLake:
    def __init__(self):
        self.lake = ke.Lake({str(tmp_path)!r})
        self.writes = 0
    def write_events(self, table):
        self.writes += 1
        os.kill(os.getpid(), signal.SIGTERM)
        if PERIODIC and self.writes == 1:  # the server stops while this flush runs...
            wait_until(lambda: OUTSIDE[0].stopping)
            os.kill(os.getpid(), signal.SIGTERM)  # ... and a second signal comes
            wait_until(lambda: OUTSIDE[0].while_stopping)  # taken before the flush ends
        return self.lake.write_events(table)
    def write_deliveries(self, rows):
        return self.lake.write_deliveries(rows)

def ready(url):
    def post_then_stop():
        req = testing.signed_request(testing.kirim_event(), "{SECRET}")
        print("answer", httpx.post(url, content=req.body, headers=req.headers).status_code)
        if not PERIODIC:
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=post_then_stop).start()

report = ke.collect({str(tmp_path)!r}, port=0, secrets=["{SECRET}"],
                    flush_interval=0.3 if PERIODIC else 3600, lake=SignalledLake(),
                    on_ready=ready)
print("backlog", report.backlog)
'''
    done = _python(script)
    assert done.returncode == 0, done.stderr
    assert "answer 200" in done.stdout
    assert "backlog 0" in done.stdout
    assert Lake(tmp_path).events().collect().height == 1


@pytest.mark.parametrize(
    ("where", "patched"),
    [
        ("opening the journal", "kirim_events.journal.Journal.__init__"),
        ("opening the lake", "kirim_events.lake.Lake.__init__"),
        ("closing, after the last flush", "kirim_events.collect.Collector.close"),
    ],
)
def test_a_signal_while_collect_starts_or_ends_stops_it_cleanly(
    tmp_path: Path, where: str, patched: str
) -> None:
    # Outside uvicorn's serving, SIGTERM had killed the process (exit -15).
    module, cls, method = patched.rsplit(".", 2)
    script = f'''
import importlib, os, signal
import kirim_events as ke

owner = getattr(importlib.import_module({module!r}), {cls!r})
original = getattr(owner, {method!r})
def signalled(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # {where}
    return original(self, *args, **kwargs)
setattr(owner, {method!r}, signalled)

stop = lambda url: os.kill(os.getpid(), signal.SIGTERM)  # the stop itself, once serving
report = ke.collect({str(tmp_path)!r}, port=0, secrets=["{SECRET}"], flush_interval=3600,
                    on_ready=stop if "closing" in {where!r} else None)
print("stopped, received", report.received)
'''
    done = _python(script)
    assert done.returncode == 0, done.stderr
    assert "stopped, received 0" in done.stdout


def _python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def accepting(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class RetryingSender:
    """Kirim-like sender: posts events from several threads and retries all unacknowledged."""

    def __init__(self, url: str, n: int, seed: int) -> None:
        rng = random.Random(seed)
        self.url = url
        self.requests = [
            testing.signed_request(
                testing.kirim_event(rng=rng) if i % 2 else testing.meta_status(rng=rng), SECRET
            )
            for i in range(n)
        ]
        self.acked: set[int] = set()
        self.pending = list(range(n))
        self.lock = threading.Lock()
        self.rng = rng
        self.failures = 0  # requests that got no 200 (the collector was down or dying)

    def _next(self) -> int | None:
        with self.lock:
            if self.pending:
                return self.pending.pop(0)
            if len(self.acked) < len(self.requests):
                return -1  # others are in flight and may fail: wait
            return None

    def worker(self) -> None:
        with httpx.Client(timeout=5) as client:
            while (i := self._next()) is not None:
                if i < 0:
                    time.sleep(0.02)
                    continue
                req = self.requests[i]
                try:
                    ok = client.post(self.url, content=req.body, headers=req.headers).status_code
                except httpx.TransportError:
                    ok = 0
                with self.lock:
                    if ok == 200:
                        self.acked.add(i)
                        if self.rng.random() < 0.1:  # at-least-once: re-send some acked ones
                            self.pending.append(i)
                    else:
                        self.failures += 1
                        if i not in self.acked:
                            self.pending.append(i)
                time.sleep(0.05)  # pacing: the traffic spans the kills, as Kirim's would


def test_sigkill_at_random_instants_loses_no_acknowledged_event(collector: Collector) -> None:
    # Flush every 0.3 s so kills also land inside lake writes and journal marks.
    collector.flush_interval = 0.3
    sender = RetryingSender(collector.url, n=600, seed=20261129)
    kills = random.Random(7)
    collector.start()
    threads = [threading.Thread(target=sender.worker) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(4):
        # real, random instants on purpose: a kill may land anywhere in a request or a flush
        time.sleep(kills.uniform(0.2, 1.2))
        assert collector.proc is not None
        collector.proc.kill()  # SIGKILL: no handler runs
        collector.proc.wait()
        collector.start()
    for t in threads:
        t.join(timeout=120)
    assert len(sender.acked) == 600
    assert sender.failures > 0  # the kills did interrupt traffic
    code, stderr = collector.stop(signal.SIGTERM)
    assert code == 0, stderr
    events = Lake(collector.data).events().collect()
    expected = {
        r.event_key for req in sender.requests for r in parse_delivery(req.body, req.headers)
    }
    assert events.height == len(expected) == 600
    assert set(events["event_key"]) == expected
    with Journal(collector.data) as journal:
        assert journal.backlog == 0


def test_cli_refuses_to_start_without_a_secret_or_on_a_busy_port(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "kirim_events", "collect", "--data", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "KIRIM_WEBHOOK_SECRET"}
    run = subprocess.run(base, env=env, capture_output=True, timeout=60)
    assert run.returncode == 2
    assert b"KIRIM_WEBHOOK_SECRET" in run.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env["KIRIM_WEBHOOK_SECRET"] = SECRET
        run = subprocess.run([*base, "--port", str(port)], env=env, capture_output=True, timeout=60)
        assert run.returncode == 2
        assert b"cannot listen" in run.stderr
        # a secret that looks wrong is named (never shown) before anything is listened to
        env["KIRIM_WEBHOOK_SECRET"] = "kdv_live_hunter2"
        run = subprocess.run([*base, "--port", str(port)], env=env, capture_output=True, timeout=60)
    assert b"note: secret 1 of 1 in KIRIM_WEBHOOK_SECRET is an API key" in run.stderr
    assert b"hunter2" not in run.stderr
    # --host "$HOST" with HOST unset: bind() takes "" for every interface
    env["KIRIM_WEBHOOK_SECRET"] = SECRET
    run = subprocess.run([*base, "--host", "", "--port", str(free_port())], env=env,
                         capture_output=True, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert b"the host to listen on is empty" in run.stderr
    run = subprocess.run([*base, "--path", "/a b", "--port", str(free_port())], env=env,
                         capture_output=True, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert b"is no URL path Kirim could post to" in run.stderr


def test_flusher_runs_in_the_background_and_survives_lake_failures(tmp_path: Path) -> None:
    class BrokenLake:
        def write_events(self, records: object) -> int:
            raise OSError("disk full")

        def write_deliveries(self, rows: object) -> int:
            raise OSError("disk full")

    async def scenario(collector: ke.Collector, done: Callable[[], bool]) -> None:
        stop = asyncio.Event()
        flusher = asyncio.create_task(collector.run_flusher(stop))
        req = testing.signed_request(testing.kirim_event(), SECRET)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(collector.receiver)) as c:
            resp = await c.post(f"http://c{PATH}", content=req.body, headers=req.headers)
        assert resp.status_code == 200
        # Wait for the outcome itself, not for any flush: a tick that started while the
        # request was being committed flushes nothing. Up to 20 s on a busy machine.
        for _ in range(2000):
            if done():
                break
            await asyncio.sleep(0.01)
        stop.set()
        await flusher

    broken = ke.Collector(tmp_path, SECRET, lake=BrokenLake(), flush_interval=0.01)
    try:
        asyncio.run(scenario(broken, lambda: broken.metrics.flush_errors >= 1))
        assert broken.metrics.flush_errors >= 1
        assert broken.journal.backlog == 1  # still safe in the journal
    finally:
        broken.close()
    working = ke.Collector(tmp_path, SECRET, flush_interval=0.01)
    try:
        asyncio.run(scenario(working, lambda: working.journal.backlog == 0))
        assert working.metrics.flushes >= 1
        assert working.journal.backlog == 0
    finally:
        working.close()
    assert Lake(tmp_path).events().collect().height == 2


def test_the_flusher_says_how_many_rejection_warnings_were_held_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver logs at most REJECT_LOG_BURST rejections a reason a minute; the count
    of the rest comes at the first flush tick after the minute, and at the stop."""
    import logging

    from kirim_events import receiver as receiver_module

    clock = [1_779_531_500.0]
    caplog.set_level(logging.WARNING, logger="kirim_events.receiver")
    held = "rejected deliveries (missing) not logged in the last 60 s: 3"

    async def scenario(collector: ke.Collector) -> None:
        stop = asyncio.Event()
        flusher = asyncio.create_task(collector.run_flusher(stop))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(collector.receiver)) as c:
            for _ in range(receiver_module.REJECT_LOG_BURST + 3):
                assert (await c.post(f"http://c{PATH}", content=b"{}")).status_code == 401
            clock[0] += receiver_module.REJECT_LOG_EVERY  # the minute is over
            for _ in range(2000):  # a tick comes within 0.01 s; up to 20 s on a busy machine
                if held in caplog.text:
                    break
                await asyncio.sleep(0.01)
            assert held in caplog.text  # said by a tick, not by a next rejection
            for _ in range(receiver_module.REJECT_LOG_BURST + 2):
                await c.post(f"http://c{PATH}", content=b"{}")
        stop.set()
        await flusher

    collector = ke.Collector(tmp_path, SECRET, flush_interval=0.01, now=lambda: clock[0])
    try:
        asyncio.run(scenario(collector))
    finally:
        collector.close()
    lines = [r.getMessage() for r in caplog.records]
    assert sum(held in m for m in lines) == 1
    assert lines[-1] == "rejected deliveries (missing) not logged in the last 0 s: 2"


def test_json_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from kirim_events.cli.collect import JsonFormatter

    record = logging.LogRecord(
        "kirim_events.x", logging.WARNING, "f", 1, "hello %s", ("you",), None
    )
    record.created = 1_777_626_000.1239  # 2026-05-01T09:00:00.123Z, whatever the local zone
    doc = json.loads(JsonFormatter().format(record))
    assert doc["time"] == "2026-05-01T09:00:00.123Z"  # was local time, with no zone
    assert doc["level"] == "warning"
    assert doc["message"] == "hello you"
    assert doc["logger"] == "kirim_events.x"


def test_text_log_lines_carry_the_time_in_utc_as_json_lines_do() -> None:
    """Text lines carried local time with no zone (``2026-05-01 18:00:00,123`` in Tokyo),
    while JSON lines say UTC: the same moment read two ways, and one of them ambiguous."""
    import logging

    from kirim_events.cli.collect import TextFormatter

    with local_zone("Asia/Tokyo"):
        record = logging.LogRecord(
            "kirim_events.x", logging.WARNING, "f", 1, "hello %s", ("you",), None
        )
        record.created = 1_777_626_000.1239
        line = TextFormatter().format(record)
    assert line == "2026-05-01T09:00:00.123Z WARNING kirim_events.x: hello you"


def test_log_formatting_is_the_clis_not_the_librarys() -> None:
    # the library leaves logging to its host: formatters and handlers live with the command
    import importlib

    from kirim_events.cli import collect as cli_collect

    library = importlib.import_module("kirim_events.collect")  # ke.collect is the function
    for name in ("JsonFormatter", "TextFormatter", "configure_logging"):
        assert name not in library.__all__
        assert not hasattr(library, name)
        assert callable(getattr(cli_collect, name))


def test_with_json_logs_a_secret_that_looks_wrong_is_a_json_warning(tmp_path: Path) -> None:
    """The notes about a wrong-looking secret were plain ``note:`` lines amid the JSON ones,
    which a log pipeline reading JSON lines could not parse, or dropped."""
    import json

    env = {"KIRIM_WEBHOOK_SECRET": f"{SECRET},kdv_live_hunter2"}
    c = Collector(tmp_path, free_port(), env=env, args=("--log-format", "json")).start()
    code, stderr = c.stop()
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    [note] = [line for line in lines if "KIRIM_WEBHOOK_SECRET" in line["message"]]
    assert note["level"] == "warning"
    assert note["message"].startswith("secret 2 of 2 in KIRIM_WEBHOOK_SECRET is an API key")
    assert "hunter2" not in stderr


def test_with_json_logs_every_line_on_stderr_is_json(tmp_path: Path) -> None:
    import json

    c = Collector(tmp_path, free_port(), args=("--log-format", "json")).start()
    assert httpx.post(c.url, content=b"{}").status_code == 401  # one warning line
    code, stderr = c.stop()
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    messages = " | ".join(line["message"] for line in lines)
    assert "listening on http://127.0.0.1:" in messages
    assert "rejected delivery" in messages


def test_two_collectors_on_one_data_folder_keep_one_copy_of_a_retried_bad_body(
    tmp_path: Path,
) -> None:
    """Two collectors behind one load balancer, one --data: retries of one signed but
    unparseable delivery reach both at once. The quarantine's lock held within a process
    only, so each could keep a copy, or both count n + 1 and lose one."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    both = [Collector(tmp_path, free_port()).start() for _ in range(2)]
    attempts = 16

    def post(attempt: int) -> int:
        req = testing.signed_request(
            b"{not json", SECRET, delivery_id="wbd_BAD", event_id="evt_BAD", attempt=attempt
        )
        url = both[attempt % 2].url
        return httpx.post(url, content=req.body, headers=req.headers, timeout=30).status_code

    with ThreadPoolExecutor(attempts) as pool:
        assert list(pool.map(post, range(1, attempts + 1))) == [200] * attempts
    for c in both:
        code, stderr = c.stop()
        assert code == 0, stderr
    (kept,) = (tmp_path / "quarantine").rglob("*.body")
    assert kept.read_bytes() == b"{not json"
    assert json.loads(kept.with_suffix(".json").read_text())["count"] == attempts
    outcomes = Lake(tmp_path).deliveries().collect()["outcome"].to_list()
    assert outcomes == ["quarantined"] * attempts  # a receipt each, from either collector


def test_rejected_and_quarantined_lines_name_the_event_and_the_answer(tmp_path: Path) -> None:
    """An operator reading the log of a 401 or a quarantined body had the delivery id and
    the reason, not the event id (nor, for a quarantined one, the status sent back)."""
    import json

    c = Collector(tmp_path, free_port(), args=("--log-format", "json")).start()
    good = testing.signed_request(b'{"BODY_TEXT": 1}', SECRET, event_id="evt_QUARANTINED")
    assert httpx.post(c.url, content=good.body, headers=good.headers).status_code == 200
    bad = testing.signed_request(b"{}", "whsec_another", event_id="evt_REFUSED")
    assert httpx.post(c.url, content=bad.body, headers=bad.headers).status_code == 401
    code, stderr = c.stop()
    assert code == 0, stderr
    lines = [json.loads(line)["message"] for line in stderr.splitlines()]
    [quarantined] = [m for m in lines if m.startswith("quarantined delivery")]
    [rejected] = [m for m in lines if m.startswith("rejected delivery")]
    assert "event evt_QUARANTINED" in quarantined
    assert quarantined.endswith("(unknown_shape): 200")
    assert "event evt_REFUSED" in rejected
    assert rejected.endswith("(mismatch): 401")
    assert "whsec_" not in stderr  # no secret
    assert "BODY_TEXT" not in stderr  # no body


def test_log_level_debug_logs_each_accepted_delivery_and_a_bad_level_is_one_line(
    tmp_path: Path,
) -> None:
    """The line per accepted delivery was logged at DEBUG, which the CLI could not turn on."""
    import json

    c = Collector(tmp_path, free_port(), args=("--log-format", "json", "--log-level", "DEBUG"))
    c.start()
    req = testing.signed_request(testing.kirim_event(), SECRET, event_id="evt_ACCEPTED")
    assert httpx.post(c.url, content=req.body, headers=req.headers).status_code == 200
    code, stderr = c.stop()
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    [accepted] = [r for r in lines if r["message"].endswith("1 of 1 events new")]
    assert accepted["level"] == "debug"
    assert "event evt_ACCEPTED" in accepted["message"]
    env = {"KIRIM_WEBHOOK_SECRET": SECRET}
    result = CliRunner().invoke(
        app, ["collect", "--data", str(tmp_path), "--log-level", "loud"], env=env
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: --log-level must be one of debug, info, warning, error, got 'loud'"
    )


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"flush_interval": 0}, "flush interval must be 0.01 s to a day, got 0"),
        ({"flush_interval": 1e-300}, "flush interval must be 0.01 s to a day, got 1e-300"),
        ({"flush_interval": float("nan")}, "flush interval must be 0.01 s to a day, got nan"),
        ({"flush_interval": 1e9}, "flush interval must be 0.01 s to a day, got 1000000000"),
        ({"max_body": 0}, "max body must be at least 1 byte, got 0"),
        ({"body_timeout": 0}, "body timeout must be above 0 and at most 3600 s, got 0"),
        (
            {"body_timeout": float("nan")},
            "body timeout must be above 0 and at most 3600 s, got nan",
        ),
    ],
)
def test_bad_collector_options_are_config_errors(
    tmp_path: Path, bad: dict[str, float], says: str
) -> None:
    with pytest.raises(ke.ConfigError, match=says):
        ke.Collector(tmp_path, SECRET, **bad)  # type: ignore[arg-type]


def test_the_library_leaves_logging_to_its_host(tmp_path: Path) -> None:
    # collect() replaced the host's handlers on kirim_events and wrote to stderr; without a
    # NullHandler a rejected delivery printed through Python's last-resort handler
    script = f'''
import asyncio, logging, os, signal, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="HOST %(name)s: %(message)s")
import kirim_events as ke
ke.collect({str(tmp_path)!r}, port=0, secrets=["{SECRET}"], flush_interval=3600,
           on_ready=lambda url: os.kill(os.getpid(), signal.SIGTERM))
logging.getLogger().handlers.clear()  # no handler at all: the library must stay quiet
import httpx
with ke.Journal({str(tmp_path / "other")!r}) as journal:
    app = ke.Receiver(journal, ["{SECRET}"])
    async def post():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as c:
            return (await c.post("/webhooks/kirim", content=b"{{}}")).status_code
    print("answer", asyncio.run(post()))
'''
    done = _python(script)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "HOST kirim_events.collect: listening on http://127.0.0.1:" in done.stdout
    assert "answer 401" in done.stdout
    assert "rejected delivery" not in done.stdout  # logged after the host removed its handler


def test_logs_go_to_stderr_as_it_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that swaps stderr (a test runner, a notebook) after the CLI configured logging
    does not leave the logs writing to a closed stream ("--- Logging error ---")."""
    import io
    import logging
    import sys

    from kirim_events.cli.collect import configure_logging

    configure_logging()  # undone after the test (conftest's _library_logging)
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("kirim_events.x").warning("one")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("kirim_events.x").warning("two")
    assert second.getvalue().rstrip().endswith("WARNING kirim_events.x: two")
