"""Run the webhook receiver with a background flusher into the lake, until told to stop.

:class:`Collector` wires one data folder's journal, receiver and lake together and can be
used in-process (tests, notebooks). :func:`collect` serves it with uvicorn on a loopback
address by default: the flusher moves journaled events into the lake every
``flush_interval`` seconds; on SIGINT or SIGTERM the server stops accepting connections,
finishes the requests in flight, the journal is flushed one last time, and the function
returns (so the CLI exits 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from kirim_events.config import SecretLike, Settings
from kirim_events.errors import ConfigError
from kirim_events.journal import FlushReport, Journal, LakeSink
from kirim_events.journal_index import data_folder, refuse_foreign_folder
from kirim_events.listen import listen_socket
from kirim_events.receiver import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_PATH,
    Metrics,
    Receiver,
    check_body_timeout,
    check_options,
)
from kirim_events.serving import Served
from kirim_events.stopsignals import handling

__all__ = ["CollectReport", "Collector", "collect"]

log = logging.getLogger("kirim_events.collect")
DEFAULT_FLUSH_INTERVAL = 5.0
DEFAULT_MAX_CONNECTIONS = 512


@dataclass(frozen=True)
class CollectReport:
    """What a :func:`collect` run did, for the CLI to render."""

    url: str
    received: int
    events_new: int
    duplicates: int
    quarantined: int
    rejected: dict[str, int]
    flushes: int
    backlog: int


class Collector:
    """A data folder's journal, receiver and lake, with a flusher.

    Parameters
    ----------
    data_dir
        The data folder; the journal goes in ``_journal/``, the lake around it.
    secrets
        The accepted webhook secrets (rotation: several).
    lake
        Where flushes go; ``kirim_events.Lake(data_dir)`` when omitted.
    path, max_body, tolerance, body_timeout, now
        Passed to :class:`kirim_events.receiver.Receiver`.
    flush_interval
        Seconds between background flushes.
    """

    def __init__(
        self,
        data_dir: str | Path,
        secrets: SecretLike | Iterable[SecretLike],
        *,
        lake: LakeSink | None = None,
        path: str = DEFAULT_PATH,
        max_body: int = DEFAULT_MAX_BODY,
        tolerance: int | None = 300,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not 0.01 <= flush_interval <= 86_400:  # NaN, or 1e-300, made the flusher spin
            raise ConfigError(f"flush interval must be 0.01 s to a day, got {flush_interval}")
        if max_body < 1:
            raise ConfigError(f"max body must be at least 1 byte, got {max_body}")
        check_body_timeout(body_timeout)
        # what the receiver refuses, refused before the journal opens: refused after it, the
        # journal's writer thread and connection stayed open, and a new journal stayed in
        # the folder (which then reads as a lake)
        keys, path, tolerance = check_options(secrets, path, tolerance)
        # absolute: the lake opens at the first flush, after a notebook may have changed its
        # working folder; a relative path then made a lake in another folder than the journal
        # ("~" expanded, as the journal and Lake do)
        self.data_dir = data_folder(data_dir)
        refuse_foreign_folder(self.data_dir)  # before its journal makes it look like a lake
        self._lake = lake
        self.flush_interval = flush_interval
        self._now = now
        self.metrics = Metrics()
        self.journal = Journal(self.data_dir, now=now)
        # One dedicated, lower-priority thread for flushes: when the CPU is short, the event
        # loop (acknowledgements) goes first and the lake write waits.
        self._flusher = ThreadPoolExecutor(1, "kirim-flusher", initializer=_lower_priority)
        self.receiver = Receiver(
            self.journal,
            keys,
            path=path,
            max_body=max_body,
            tolerance=tolerance,
            body_timeout=body_timeout,
            now=now,
            metrics=self.metrics,
        )

    @property
    def lake(self) -> LakeSink:
        """The lake flushes write into (opened on first use)."""
        if self._lake is None:
            from kirim_events.lake import Lake  # the lake pulls in duckdb/polars: load lazily

            self._lake = Lake(self.data_dir)
        return self._lake

    def flush(self) -> FlushReport:
        """Move everything journaled into the lake now; updates the flush metrics."""
        try:
            report = self.journal.flush(self.lake)
        except Exception:
            self.metrics.flush_errors += 1
            raise
        self.metrics.flushed(report.seconds, self._now())
        if report.events or report.receipts:
            log.info(
                "flushed %d events and %d receipts in %.3fs",
                report.events,
                report.receipts,
                report.seconds,
            )
        return report

    async def run_flusher(self, stop: asyncio.Event) -> None:
        """Flush every ``flush_interval`` seconds until ``stop`` is set (no final flush).
        Each tick also logs how many rejection warnings the receiver held back (all of them
        at the stop)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.flush_interval)
            if stop.is_set():
                break
            self.receiver.log_held()
            try:
                await asyncio.get_running_loop().run_in_executor(self._flusher, self.flush)
            except Exception as exc:
                # Keep serving: the events are safe in the journal; the next tick retries.
                log.error("flush failed, will retry: %s: %s", type(exc).__name__, exc)
        self.receiver.log_held(final=True)

    def report(self, url: str = "") -> CollectReport:
        """Summarise the counters so far."""
        m = self.metrics
        return CollectReport(
            url=url,
            received=m.received,
            events_new=m.events_new,
            duplicates=m.duplicates,
            quarantined=m.quarantined,
            rejected=dict(m.rejected),
            flushes=m.flushes,
            backlog=self.journal.backlog,
        )

    def close(self) -> None:
        """Stop the journal's writer thread (does not flush)."""
        self._flusher.shutdown(wait=True)
        self.journal.close()


def _lower_priority() -> None:
    # ten steps nicer than the thread that started it (a Linux thread starts with its
    # starter's nice), not nice 10: that was no lower under `nice -n 10`, and higher than the
    # event loop under `nice -n 15` when run as root
    with contextlib.suppress(AttributeError, OSError):  # per-thread nice: Linux only
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + 10))


class _SignalsOutsideServing:
    """SIGINT and SIGTERM while uvicorn is not serving (it has its own handlers then).

    Before it serves, a stop is kept: the server stops as soon as it has started. Once it
    has stopped, during the last flushes, a signal is noted, not obeyed: a second Ctrl-C had
    killed them (exit -15, acknowledged events left in the journal for the next start).
    """

    def __init__(self) -> None:
        self.asked = False
        self.stopping = False

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.stopping:
            log.warning(
                "received %s while the last flush runs: exiting when it ends (a kill -9 "
                "loses nothing either: the next start flushes the journal)",
                name,
            )
        else:
            self.asked = True
            log.info("received %s while starting: stopping as soon as the server is up", name)


def collect(
    data_dir: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = DEFAULT_PATH,
    secrets: SecretLike | Iterable[SecretLike] | None = None,
    settings: Settings | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    lake: LakeSink | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> CollectReport:
    """Receive Kirim webhooks at ``http://host:port/path`` until SIGINT/SIGTERM.

    Parameters
    ----------
    data_dir
        The data folder (default: ``settings.data_dir``).
    host, port, path
        Where to listen; loopback by default (put a TLS proxy in front for Kirim).
    secrets
        Accepted webhook secrets; default ``settings.webhook_secrets`` (KIRIM_WEBHOOK_SECRET).
    settings
        Resolved settings (``Settings.load(os.environ)`` when omitted): the tolerance.
        Logging is left to the host (the CLI sets it up from ``log_format``).
    max_body
        Largest accepted body in bytes (413 above).
    max_connections
        Open connections served at once; beyond it, requests get 503 (Kirim retries). It
        bounds the memory of bodies being received to about ``max_connections * max_body``.
    body_timeout
        Seconds a connection has to send each request head (from its opening, or from its
        first byte after an answer; else it is closed) and then its body (else 408). A silent or
        trickling client therefore cannot hold a connection slot for long. A stop waits up
        to this plus 10 s for requests in flight.
    flush_interval
        Seconds between flushes into the lake.
    lake
        Flush target; ``Lake(data_dir)`` when omitted.
    on_ready
        Called with the webhook URL once the server listens.

    Returns
    -------
    CollectReport
        Counters of the run, after the final flush.

    Raises
    ------
    ConfigError
        No webhook secret configured, a bad option, or the port cannot be bound.
    StorageError
        The journal cannot be opened.
    """
    outside = _SignalsOutsideServing()
    # One handler from here to the end (uvicorn's own go on top while it serves): a signal
    # while this sets up, or while it flushes and closes, never kills the run half way.
    with handling(outside):
        from kirim_events.headdeadline import head_deadline_protocol

        if max_connections < 1:
            raise ConfigError(f"max connections must be at least 1, got {max_connections}")
        s = settings or Settings.load(os.environ)
        keys = secrets if secrets is not None else s.require_secrets()
        folder = Path(data_dir) if data_dir is not None else s.data_dir
        collector = Collector(
            folder,
            keys,
            lake=lake,
            path=path,
            max_body=max_body,
            tolerance=s.tolerance,
            body_timeout=body_timeout,
            flush_interval=flush_interval,
        )
        try:
            sock = listen_socket(host, port)
        except ConfigError:
            collector.close()
            raise
        try:
            served = Served(
                collector.receiver,
                sock,
                on_signal=_draining,
                # uvicorn answers 503 once the open connections, the asking one included,
                # reach its limit: so max_connections + 1 serves max_connections at once
                # (with the limit itself, --max-connections 1 answered every request 503)
                limit_concurrency=max_connections + 1,
                # above the body timeout: a request in flight at the signal can finish
                timeout_graceful_shutdown=math.ceil(collector.receiver.body_timeout) + 10,
                http=head_deadline_protocol(collector.receiver.body_timeout),
            )
        except BaseException:  # uvicorn's import or its Config: nothing may stay open
            sock.close()
            collector.close()
            raise
        url = f"{served.url}{collector.receiver.path}"

        async def main() -> None:
            stop = asyncio.Event()
            flusher = asyncio.create_task(collector.run_flusher(stop))
            try:
                await served.start()
                if outside.asked:  # a signal came before uvicorn's handlers were in place
                    served.request_stop()
                log.info("listening on %s", url)
                if collector.receiver.tolerance is None:
                    log.warning(
                        "KIRIM_TOLERANCE is off: signatures of any age are accepted, so a "
                        "captured delivery can be replayed"
                    )
                if on_ready is not None:
                    on_ready(url)
                await served.wait()
            finally:
                outside.stopping = True
                stop.set()
                await flusher

        try:
            # The server's long-lived objects (modules, the lake's libraries) leave the
            # garbage collector's view: full collections then walk only what requests
            # allocate, not the ~10^5 import-time objects, on the loop's thread.
            collector.lake  # noqa: B018 (opened now, so its imports are frozen with the rest)
            gc.collect()
            gc.freeze()
            asyncio.run(main())
            # uvicorn has stopped accepting and drained in-flight requests: flush what
            # they wrote.
            outside.stopping = True
            collector.flush()
            log.info("stopped; journal flushed into the lake")
            return collector.report(url)
        finally:
            gc.unfreeze()
            sock.close()
            collector.close()


def _draining(sig: int) -> None:
    log.info("received %s: draining requests, then flushing", signal.Signals(sig).name)
