"""collect()'s option checks (a case found by mutation testing)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from loopback import free_port
from test_collect import PATH, SECRET, Collector, accepting
from waiting import wait_until

import kirim_events as ke
from kirim_events import testing
from kirim_events.collect import collect
from kirim_events.lake import Lake


def test_zero_connections_is_refused_before_anything_is_opened(tmp_path: Path) -> None:
    # (an unusable host: were the check missing, the run would fail there, not serve)
    with pytest.raises(ke.ConfigError, match="max connections must be at least 1, got 0"):
        collect(tmp_path, host="256.0.0.1", port=0, secrets="whsec_x", max_connections=0)
    assert not (tmp_path / "_journal").exists()


def test_a_request_in_flight_at_sigterm_may_take_seconds_to_finish(tmp_path: Path) -> None:
    # the graceful stop waits longer than the body timeout: a slow sender still gets its 200
    collector = Collector(tmp_path, free_port()).start()
    req = testing.signed_request(testing.kirim_event(), SECRET)
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(req.body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    metrics = f"http://127.0.0.1:{collector.port}/metrics"
    with socket.create_connection(("127.0.0.1", collector.port)) as sock:
        sock.sendall(head.encode() + req.body[:10])
        wait_until(lambda: "kirim_events_received_total 1" in httpx.get(metrics).text)
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not accepting(collector.port))  # the shutdown has begun
        time.sleep(2.5)  # a sender slower than a short grace (not a measurement)
        sock.sendall(req.body[10:])
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    code, stderr = collector.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert Lake(tmp_path).events().collect().height == 1


def test_no_webhook_secret_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    settings = ke.Settings.load({})
    with pytest.raises(ke.ConfigError, match="no webhook secret: set KIRIM_WEBHOOK_SECRET"):
        collect(tmp_path, host="256.0.0.1", port=0, settings=settings)
    assert not (tmp_path / "_journal").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice: Linux")
@pytest.mark.parametrize("nicer_by", [0, 4, 15])
def test_flushes_run_on_a_thread_of_lower_priority(tmp_path: Path, nicer_by: int) -> None:
    # when the CPU is short, acknowledgements (the event loop) go before lake writes: ten
    # steps below the thread that starts the collector, however nice that one already is
    # (an absolute nice 10 was no lower under `nice -n 10`, and higher under `nice -n 15`)
    def start_and_ask() -> tuple[int, int]:
        me = threading.get_native_id()  # a thread of its own: its nice is its own (Linux)
        nicer = min(19, os.getpriority(os.PRIO_PROCESS, me) + nicer_by)
        os.setpriority(os.PRIO_PROCESS, me, nicer)  # lowering one's priority needs no right
        collector = ke.Collector(tmp_path, SECRET)
        try:
            flusher = collector._flusher.submit(
                lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            ).result()
        finally:
            collector.close()
        return os.getpriority(os.PRIO_PROCESS, me), flusher

    with ThreadPoolExecutor(1) as starter:
        own, flusher = starter.submit(start_and_ask).result()
    assert own == min(19, os.getpriority(os.PRIO_PROCESS, 0) + nicer_by)
    assert flusher == min(19, own + 10)


def _journal_threads() -> int:
    return sum(t.name == "kirim-journal" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"path": "/a b"}, ke.ConfigError, "is no URL path Kirim could post to"),
        ({"secrets": []}, ValueError, "needs at least one webhook secret"),
        ({"secrets": " , "}, ValueError, "needs at least one webhook secret"),
        ({"tolerance": -1}, ValueError, "tolerance must be None or a finite number"),
    ],
)
def test_options_the_receiver_refuses_leave_no_journal_behind(
    tmp_path: Path, options: dict[str, object], error: type[Exception], says: str
) -> None:
    # they were checked once the journal was open: each refusal left its writer thread and
    # database connection running, and a new journal in the folder (which then reads as a
    # lake: a data folder inside it is refused)
    before = _journal_threads()
    with pytest.raises(error, match=says):
        ke.Collector(tmp_path, **{"secrets": SECRET, **options})  # type: ignore[arg-type]
    given = {"secrets": SECRET, **options}
    settings = ke.Settings(tolerance=given.pop("tolerance", 300))  # type: ignore[arg-type]
    with pytest.raises(error, match=says):
        collect(tmp_path, port=0, settings=settings, **given)  # type: ignore[arg-type]
    assert not (tmp_path / "_journal").exists()
    assert _journal_threads() == before


def _one_event_and_one_quarantined(collector: ke.Collector) -> str:
    """POST a new event and a signed body that cannot be parsed to an in-process collector,
    check their answers, flush; return the event's id."""
    good = testing.signed_request(testing.kirim_event(), SECRET)
    bad = testing.signed_request(b'{"not": "a kirim body"}', SECRET)

    async def post() -> list[str]:
        transport = httpx.ASGITransport(collector.receiver)
        async with httpx.AsyncClient(transport=transport) as client:
            answers = [
                await client.post(f"http://c{PATH}", content=r.body, headers=r.headers)
                for r in (good, bad)
            ]
        return [a.json()["outcome"] for a in answers]

    assert asyncio.run(post()) == ["new", "quarantined"]
    assert collector.flush().events == 1
    return good.headers["X-Kirim-Event-Id"]


def test_a_relative_data_folder_stays_the_same_folder_after_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A notebook opens ke.Collector("data", ...) and later changes its working folder: the
    # journal kept its absolute path, but the lake (opened at the first flush) and the
    # quarantine were made in the new folder's "data", so acknowledged events were flushed
    # out of the journal into a lake the data folder does not hold.
    (tmp_path / "first").mkdir()
    (tmp_path / "later").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    collector = ke.Collector("data", SECRET)
    try:
        monkeypatch.chdir(tmp_path / "later")
        event_id = _one_event_and_one_quarantined(collector)
    finally:
        collector.close()
    data = tmp_path / "first" / "data"
    assert Lake(data).events().collect()["event_id"].to_list() == [event_id]
    assert len(list((data / "quarantine").rglob("*.body"))) == 1
    assert not (tmp_path / "later" / "data").exists()


def test_a_data_folder_under_the_home_folder_holds_the_journal_and_the_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ke.Collector("~/kirim") took "~" literally for its journal and quarantine (a folder
    # named "~" in the working folder) while Lake("~/kirim") expands it: the events were
    # flushed out of that journal into a lake in another folder.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    collector = ke.Collector("~/kirim", SECRET)
    try:
        _one_event_and_one_quarantined(collector)
    finally:
        collector.close()
    data = tmp_path / "home" / "kirim"
    assert Lake(data).events().collect().height == 1
    assert (data / "_journal" / "journal.sqlite3").is_file()
    assert len(list((data / "quarantine").rglob("*.body"))) == 1
    assert not (tmp_path / "~").exists()
