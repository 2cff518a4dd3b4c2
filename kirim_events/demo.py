"""The end-to-end demo: a local Kirim sends a day of traffic through the whole pipeline.

Steps, in one process on loopback ports (free ones unless ``port=`` names the collector's):

1. the emulator serves Kirim's REST API and subscribes the collector's URL;
2. the collector receives signed webhooks (duplicates, out-of-order statuses, batches; Meta
   bodies with Kirim's optional ``kirim`` block, asked for, so messages link to conversations);
3. half way, the webhook secret is rotated through the API (``POST .../secrets``) and the
   collector is restarted: Kirim sends a few events while it is down and (its retry schedule
   compressed) gives up on them; it comes back accepting the new and the old secret;
4. reconcile pages the delivery history, finds the events the lake lacks and recovers them;
5. the journal is flushed and the lake compacted; the caller renders the report.

The library never prints: progress goes to ``on_progress(stage, done, total)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import math
import shlex
import shutil
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from kirim_events import stopsignals
from kirim_events.atomicfile import replace_file
from kirim_events.client import KirimClient
from kirim_events.collect import Collector
from kirim_events.config import Secret
from kirim_events.emulator import EngineConfig, FaultConfig, WorldConfig
from kirim_events.emulator.emulator import Emulator
from kirim_events.emulator.engine import EngineReport
from kirim_events.emulator.model import Bundle
from kirim_events.errors import ConfigError
from kirim_events.filelock import file_lock
from kirim_events.journal_index import data_folder, journal_path
from kirim_events.lake import LAKE_ENTRIES, Lake
from kirim_events.lake.reader import reread
from kirim_events.listen import listen_socket
from kirim_events.reconcile import reconcile
from kirim_events.serving import Served

__all__ = ["DemoReport", "ProgressCallback", "run_demo"]

ProgressCallback = Callable[[str, int, int], None]
WEBHOOK_PATH = "/webhooks/kirim"
HOST = "127.0.0.1"  # both servers listen on loopback only
# quiet (the progress display owns the terminal); a stop waits 5 s at most for a request
SERVER_CONFIG: dict[str, Any] = {"log_level": "error", "timeout_graceful_shutdown": 5}
# One simulated day of a small support team (the emulator measures ~4.3 s between events at a
# 30 s session interval; 160 s gives about 4 000 events a day).
DAY_SECONDS = 86_400
BASE_EVENTS = 4_000
# The demo holds its whole world in memory and sends it in real time: 25 is about 100 000
# events and a quarter of an hour. Larger loads belong to `kirim-events emulate` and
# benchmarks/, which stream.
MAX_SCALE = 25.0
# Kirim's 8 attempts span ~31 h; compressed 100 000x they take ~1.1 s, so Kirim gives up on
# the deliveries it tries while the collector is down (dead letters) within a second or two.
TIME_COMPRESSION = 100_000.0
# One event in this many is sent while the collector is down (at least 5).
OUTAGE_SHARE = 100


@dataclass
class DemoReport:
    """What the demo did, for the CLI to render."""

    data_dir: Path
    world_events: int = 0
    deliveries: int = 0
    attempts: int = 0
    duplicates_sent: int = 0
    dead_or_failed: int = 0
    outage_events: int = 0
    unacknowledged_events: int = 0
    reconcile_missing: int = 0
    reconcile_recovered: int = 0
    reconcile_found_exactly: bool = False
    lake_events: int = 0
    lake_matches_truth: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _take(bundles: Iterator[Bundle], events: int) -> Iterator[Bundle]:
    """The next bundles of ``bundles`` until they hold ``events`` world events (the last one
    may go past); drawn one at a time as the engine asks, so the rest stay in ``bundles``."""
    taken = 0
    while taken < events:
        bundle = next(bundles, None)
        if bundle is None:
            return
        taken += len(bundle.events)
        yield bundle


async def _deliver(
    emu: Emulator,
    bundles: Iterator[Bundle],
    client: httpx.AsyncClient,
    progress: ProgressCallback,
    total: int,
) -> EngineReport:
    """Send ``bundles`` and return once every delivery of theirs is acknowledged or given up
    on (Kirim's compressed retry schedule has run out), reporting progress meanwhile."""
    run = asyncio.ensure_future(emu.engine.run(bundles, client=client))
    try:
        while not run.done():
            progress("sending", len(emu.truth), total)
            await asyncio.wait({run}, timeout=0.25)
    except asyncio.CancelledError:
        # stopped (Ctrl-C): the engine settles its requests in flight before the servers go
        run.cancel()
        await asyncio.wait({run})
        raise
    return run.result()


async def _serve(
    collector: Collector, sock: socket.socket, stops: contextlib.AsyncExitStack
) -> Callable[[], Awaitable[None]]:
    """Serve ``collector`` on ``sock`` and run its flusher; return what stops both, which
    ``stops`` calls too on the way out (a second call does nothing)."""
    served = Served(collector.receiver, sock, **SERVER_CONFIG)
    await served.start()
    stop_flusher = asyncio.Event()
    flusher = asyncio.ensure_future(collector.run_flusher(stop_flusher))

    async def stop() -> None:
        await served.stop()  # the requests in flight are answered first
        stop_flusher.set()
        await flusher

    stops.push_async_callback(stop)
    return stop


async def _run(
    data_dir: Path,
    *,
    scale: float,
    seed: int,
    progress: ProgressCallback,
    api_sock: socket.socket,
    collector_sock: socket.socket,
    opened: list[Collector | socket.socket],
    stops: contextlib.AsyncExitStack,
) -> DemoReport:
    started = time.monotonic()
    report = DemoReport(data_dir=data_dir)
    n_events = max(200, int(BASE_EVENTS * scale))
    old_secret = Secret("whsec_demo_" + "a" * 24)
    api_key = Secret("kdv_live_" + "demoDEMOdemoDEMOdemoDEMO")
    emu = Emulator(
        seed=seed,
        # Sessions come often enough that the traffic spans about 22 of the 24 simulated
        # hours before now at any scale, so no event is stamped after it was received.
        # Meta bodies carry Kirim's optional `kirim` block (off unless asked, kirim-api.md
        # §4.2), so the lake links messages and their statuses to conversations.
        world=WorldConfig(session_interval=134.0 * BASE_EVENTS / n_events, kirim_block=True),
        engine=EngineConfig(
            concurrency=16,
            timeout=5.0,
            duplicate_rate=0.03,
            disorder=0.1,
            disorder_delay=30.0,
            time_compression=TIME_COMPRESSION,
            # Real Kirim disables a subscription after 24 dead deliveries in a row; the outage
            # below may kill more than that, and a disabled subscription gets no delivery
            # rows, which nothing could recover. The demo's Kirim is more patient.
            auto_disable_after=1_000_000,
        ),
        faults=FaultConfig(),
        start=int(time.time()) - DAY_SECONDS,
        secrets=[old_secret],
        api_keys=[api_key],
        read_limit=6000,
        write_limit=600,
    )
    api = Served(emu.app, api_sock, **SERVER_CONFIG)
    await api.start()
    stops.push_async_callback(api.stop)
    api_url = api.url

    port = collector_sock.getsockname()[1]
    url = f"http://{HOST}:{port}{WEBHOOK_PATH}"
    collector = Collector(data_dir, [old_secret], flush_interval=1.0)
    opened.append(collector)
    stop_collector = await _serve(collector, collector_sock, stops)
    sub = emu.subscribe(url)

    history_since = datetime.fromtimestamp(time.time() - 60, UTC)
    world = emu.bundles(n_events)
    # The traffic goes in three parts, each sent until all its deliveries are settled, so
    # what the outage costs is the same on any machine: the events Kirim sends while the
    # collector is down, and only those, are never acknowledged. (Timing the outage against
    # traffic that kept flowing made it depend on the machine's speed: on a busy one the
    # first half could all be delivered before the collector stopped, and the only
    # deliveries to die were re-sends of lost acknowledgements, already acknowledged.)
    outage_events = max(5, n_events // OUTAGE_SHARE)
    async with emu.webhook_client() as client:
        progress("sending", 0, n_events)
        await _deliver(emu, _take(world, n_events // 2), client, progress, n_events)

        # Rotate the secret the way the setup guide says: mint a new one through the API;
        # the old one stays valid for a while, so the receiver accepts both.
        async with httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {api_key.reveal()}"}
        ) as api_client:
            minted = await api_client.post(
                f"/v1/webhook_subscriptions/{sub.id}/secrets", json={"expires_in_hours": 24}
            )
            minted.raise_for_status()
            new_secret = Secret(minted.json()["data"]["secret"])

        # Restart the collector: graceful stop (drain, flush), an outage, then start again.
        progress("collector restart", 0, 1)
        await stop_collector()
        # The port stays bound through the outage, not listening: it refuses connections as
        # a closed port does, and a program that does not ask to share it cannot take it.
        collector_sock = listen_socket(HOST, port)
        opened.append(collector_sock)
        collector.flush()
        collector.close()
        # The outage: Kirim sends the next events to the closed port and, with its retry
        # schedule compressed, gives up on each of them after 8 attempts (about 1 s).
        before = len(emu.truth)
        await _deliver(emu, _take(world, outage_events), client, progress, n_events)
        report.outage_events = len(emu.truth) - before
        collector = Collector(data_dir, [new_secret, old_secret], flush_interval=1.0)
        opened.append(collector)
        stop_collector = await _serve(collector, collector_sock, stops)
        progress("collector restart", 1, 1)
        engine_report = await _deliver(emu, world, client, progress, n_events)
    progress("sending", n_events, n_events)
    report.world_events = len(emu.truth)
    report.deliveries = len(emu.store.deliveries)
    report.attempts = engine_report.attempts
    report.duplicates_sent = engine_report.duplicates
    report.dead_or_failed = engine_report.dead + engine_report.failed
    report.unacknowledged_events = len(emu.unacknowledged_event_keys())

    await stop_collector()
    collector.flush()
    collector.close()

    # Reconcile: page Kirim's delivery history, find what the lake lacks, recover it. The
    # client is synchronous and the API is served by this event loop, so it runs on a thread.
    progress("reconciling", 0, 1)
    with KirimClient(api_url, api_key) as client:
        rec = await asyncio.to_thread(
            reconcile, data_dir, client=client, since=history_since, warn_days=3.0
        )
    report.reconcile_missing = len(rec.missing)
    found = {m.key for m in rec.missing}
    report.reconcile_found_exactly = found == emu.unacknowledged_event_keys()
    report.reconcile_recovered = rec.imported + rec.replayed + rec.bulk_enqueued
    report.notes.extend(rec.errors)
    if rec.replayed or rec.bulk_enqueued:
        # Replays come back as webhooks: receive them before judging the lake.
        report.notes.append("reconcile asked Kirim for replays; the demo imported payloads only")
    progress("reconciling", 1, 1)
    await api.stop()

    progress("compacting", 0, 1)
    lake = Lake(data_dir)
    await asyncio.to_thread(lake.compact)
    progress("compacting", 1, 1)
    # one read, planned again if a compaction (a user's `kirim-events compact` on this folder)
    # deletes the files it planned before it reads them: a failure then judged nothing
    held = reread(lambda: lake.events().select("event_key").collect(), storage=lake.storage)
    report.lake_events = held.height
    truth_keys = set(emu.truth.log().select("event_key").collect()["event_key"].to_list())
    lake_keys = set(held["event_key"].to_list())
    report.lake_matches_truth = lake_keys == truth_keys
    if not report.lake_matches_truth:
        report.notes.append(
            f"lake lacks {len(truth_keys - lake_keys)} of the world's events, "
            f"has {len(lake_keys - truth_keys)} the world never emitted"
        )
    report.seconds = time.monotonic() - started
    return report


DEMO_MARKER = Path("_state") / "demo.json"


# How to give the demo another folder, from wherever it was started: its refusals reach
# the CLI, a script and the notebooks' first cell (which runs it on KIRIM_DATA_DIR, read
# when the cell runs), and "--data DIR" alone meant nothing in a notebook.
ELSEWHERE = (
    "kirim-events demo --data DIR; in Python run_demo(DIR); in the notebooks"
    " %env KIRIM_DATA_DIR=DIR, then run the first cell again"
)


def _not_the_demos(folder: Path) -> str:
    """Why the demo refuses ``folder``, a non-empty folder it did not write, and what to do.

    A folder holding only a collector's journal (the notebooks' first cell ran before the
    collector's first flush) is the user's own data on its way into the lake: flushing it is
    what they want, not a demo beside it."""
    refusal = f"{folder} is not empty and was not written by the demo"
    lake_files = any(
        path.is_file() for part in ("events", "deliveries") for path in (folder / part).rglob("*")
    )
    if journal_path(folder).is_file() and not lake_files:
        return (
            f"{refusal}: it holds a collector's journal, events received but not flushed into"
            f" the lake yet. To read them, wait for the collector's next flush or run"
            f" `kirim-events compact --data {shlex.quote(str(folder))}`, then read the lake"
            f" again (in the notebooks: run the first cell again). For the demo instead, give"
            f" it an empty folder ({ELSEWHERE})"
        )
    return (
        f"{refusal}; run the demo on an empty folder so it cannot mix with real data ({ELSEWHERE})"
    )


def _prepare(folder: Path, held: contextlib.ExitStack) -> bool:
    """Make ``folder`` ready for a demo run, never touching data the demo did not write.

    A folder the demo wrote before (it holds the marker) is cleared, so each run starts
    from an empty lake; any other non-empty folder is refused. The folder is locked on
    ``held`` for the run: a second demo on it at once is refused (it cleared the first's
    lake under it, the notebooks' first cell and ``kirim-events demo`` alike). Returns
    whether an earlier demo's lake was cleared.
    """
    if folder.exists() and not folder.is_dir():  # mkdir would say only "File exists"
        raise ConfigError(f"{folder} is a file, not a folder: give the demo a folder ({ELSEWHERE})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use {folder} for the demo's lake: {exc.strerror}") from None
    if not held.enter_context(file_lock(folder, wait=False)):
        raise ConfigError(
            f"a demo is running on {folder} now: let it finish, or run this one on another"
            f" folder ({ELSEWHERE})"
        )
    try:
        present = [p for p in folder.iterdir() if p.name != ".gitkeep"]
    except OSError as exc:
        raise ConfigError(f"cannot use {folder} for the demo's lake: {exc.strerror}") from None
    if not present:
        return False
    marker = folder / DEMO_MARKER
    if not marker.is_file():
        raise ConfigError(_not_the_demos(folder))
    try:
        sealed = json.loads(marker.read_text()).get("contents")
    except (OSError, ValueError, AttributeError):
        sealed = None
    if sealed is not None and sealed != _contents(folder):
        raise ConfigError(
            f"{folder} was written by the demo, but events were added since (a collector or a"
            f" backfill?), so the demo will not clear it; run the demo on another folder"
            f" ({ELSEWHERE})"
        )
    # The marker unsealed first and its folder cleared last: a run stopped half way through
    # (Ctrl-C) leaves a folder the next one still takes as the demo's (it was refused, its
    # contents no longer those sealed, or with the marker gone).
    replace_file(marker, "{}\n")
    for path in sorted(present, key=lambda path: path.name == DEMO_MARKER.parts[0]):
        if path.name in LAKE_ENTRIES and path.is_dir():
            shutil.rmtree(path)
    return True


def _contents(folder: Path) -> dict[str, Any]:
    """What the demo left, to check before it clears the folder again: the names of the
    lake's and the quarantine's files and the journal's number of dedup keys. A collector,
    a backfill or a compaction changes them; reading the lake does not."""
    names = sorted(
        str(path.relative_to(folder))
        for part in ("events", "deliveries", "quarantine")
        for path in (folder / part).rglob("*")
        if path.is_file()
    )
    keys = 0
    journal = journal_path(folder)
    if journal.is_file():
        uri = f"{journal.resolve().as_uri()}?mode=ro"  # as_uri() refuses a relative path
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            keys = int(conn.execute("SELECT count(*) FROM keys").fetchone()[0])
    return {"files": hashlib.sha256("\n".join(names).encode()).hexdigest(), "keys": keys}


def _result(
    future: concurrent.futures.Future[DemoReport], running: list[asyncio.Task[DemoReport]]
) -> DemoReport:
    """The result of a run on another thread. A KeyboardInterrupt while waiting (a notebook
    kernel's interrupt) stops that run as Ctrl-C stops one, then goes on: it took effect
    only once the whole demo had run."""
    try:
        while not future.done():  # woken often: a signal taken by another thread of the
            concurrent.futures.wait([future], timeout=0.1)  # kernel wakes no blocked wait
        return future.result()
    except KeyboardInterrupt:
        asked = False
        while not future.done():
            if running and not asked:  # once: a second cancel would cut its stop short
                asked = True
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    running[0].get_loop().call_soon_threadsafe(running[0].cancel)
            concurrent.futures.wait([future], timeout=0.05)
        raise


def run_demo(
    data_dir: str | Path = "data",
    *,
    scale: float = 1.0,
    seed: int = 7,
    port: int = 0,
    on_progress: ProgressCallback | None = None,
) -> DemoReport:
    """Run the whole pipeline against the local emulator; return what happened.

    Parameters
    ----------
    data_dir
        Where the lake is written: an empty or missing folder, or one a previous demo wrote
        (it is cleared first, and the report's notes say so). Any other non-empty folder,
        or one another demo is writing at that moment, raises ConfigError.
    scale
        Multiplies the amount of traffic (1.0: about 4 000 world events), up to
        ``MAX_SCALE`` (25).
    seed
        Seeds the emulated world: the same seed gives the same traffic.
    port
        The collector's port on 127.0.0.1 (0: a free one). A port in use raises ConfigError
        before anything is written.
    on_progress
        Called as ``on_progress(stage, done, total)``.

    In the main thread, a SIGINT or SIGTERM cancels the run, whose servers then finish the
    requests in flight and stop; the signal then goes to the handler before (SIGINT's
    raises KeyboardInterrupt; a SIGTERM nothing catches ends the process). A signal
    ignored as the run starts stays ignored.
    """
    # all checked before anything is written: NaN passed `scale <= 0` and, like infinity,
    # failed only once the folder was prepared and marked
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be a positive number (1.0: about 4 000 events), got {scale}")
    if scale > MAX_SCALE:
        raise ConfigError(
            f"scale must be at most {MAX_SCALE:g} (about {int(BASE_EVENTS * MAX_SCALE):,} events),"
            f" got {scale:g}: for larger loads run `kirim-events emulate` against a collector"
        )
    if not str(data_dir).strip():  # "" is the current folder to Path
        raise ConfigError("the demo's data folder name is blank: give a folder (default: data)")
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0 (a free one) to 65535, got {port}")
    # "~" expanded as the collector and the lake expand it: the folder checked, locked and
    # marked must be the one written (it was a folder named "~" where the demo ran)
    folder = data_folder(data_dir)
    with contextlib.ExitStack() as held:
        # bound first: a busy port is refused before the folder is touched
        collector_sock = held.enter_context(listen_socket(HOST, port))
        api_sock = held.enter_context(listen_socket(HOST, 0))
        cleared = _prepare(folder, held)
        marker = folder / DEMO_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        replace_file(marker, json.dumps({"seed": seed, "scale": scale}) + "\n")
        progress = on_progress or (lambda stage, done, total: None)
        opened: list[Collector | socket.socket] = []
        running: list[asyncio.Task[DemoReport]] = []  # for a stop from another thread
        stopped: list[int] = []  # the stop signal that came (see go)

        async def main() -> DemoReport:
            task = asyncio.current_task()
            if task is not None:
                running.append(task)
            if stopped:  # a stop came before this task was there to cancel
                raise asyncio.CancelledError
            # However the run ends (Ctrl-C cancels it), its servers stop while the loop still
            # runs: left to asyncio.run's teardown, each request in flight died with a traceback.
            async with contextlib.AsyncExitStack() as stops:
                return await _run(
                    folder,
                    scale=scale,
                    seed=seed,
                    progress=progress,
                    api_sock=api_sock,
                    collector_sock=collector_sock,
                    opened=opened,
                    stops=stops,
                )

        def stop(sig: int) -> None:
            stopped.append(sig)
            if running:
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    running[0].get_loop().call_soon_threadsafe(running[0].cancel)

        def go() -> DemoReport:
            try:
                # Ctrl-C and SIGTERM cancel the run, which stops its servers in order, and are
                # raised again once it has, for the handlers before (SIGTERM kills a process
                # that does not catch it, as it would have at once). A second Ctrl-C while
                # the servers drain waits too: asyncio.run's own handler raised it wherever
                # the loop was, the servers' shutdown was cut short, and each request in
                # flight died with a traceback. The drain is bounded (SERVER_CONFIG).
                with stopsignals.held(first=stop, force=3):
                    try:
                        return asyncio.run(main())
                    except asyncio.CancelledError:
                        if not stopped:
                            raise
                        # what a handler before that does not raise leaves: a stop, still
                        raise KeyboardInterrupt from None
            finally:
                # a run that failed half way leaves no journal thread, database or port
                # open behind it (a notebook kernel lives on); closing twice is harmless
                for thing in reversed(opened):
                    thing.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            report = go()
        else:
            # Called from a running event loop (a Jupyter kernel): a thread with its own loop.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                report = _result(pool.submit(go), running)
        if cleared:
            report.notes.insert(
                0,
                f"{data_dir} held an earlier demo's lake: it was cleared, so this run started"
                " afresh",
            )
        sealed = {"seed": seed, "scale": scale, "contents": _contents(folder)}
        # whole or not at all: a torn marker reads as unsealed, and the next run would clear
        # the folder without checking what came in since
        replace_file(marker, json.dumps(sealed) + "\n")
    return report
