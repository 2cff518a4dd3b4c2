"""Durable inbox and persistent dedup index between the receiver (or backfill) and the lake.

Files live under ``DATA/_journal/``: one SQLite database in WAL mode with
``synchronous=FULL``, so a commit is on disk (fsync'd) when it returns. Appends are group
committed, so N concurrent deliveries pay one fsync, not N:

* :meth:`Journal.append` / :meth:`Journal.submit` (any thread, e.g. backfill): a writer
  thread drains a queue and commits everything waiting in one transaction;
* :meth:`Journal.append_async` (the receiver): the appends of one event-loop pass go to
  that writer thread as one item (one hand-over per pass, one wake-up of the loop per
  commit), so the inserts, like the fsync, run off the loop that acknowledges webhooks,
  and a write lock held by another process (a flush, a backfill) never blocks the loop.

A caller's future resolves only after the commit that holds its rows, hence "acknowledged"
implies "durable"; a SIGKILL at any instant loses nothing that was acknowledged (SQLite's WAL
recovery on reopen). One lock keeps the writer thread and ``close()`` off the connection at
the same time.

Tables (layout in :mod:`kirim_events.journal_rows`):

* ``keys``: the dedup index, one row per ``event_key`` ever accepted, with its first-seen
  time; kept for ``retention`` (35 days by default, above Kirim's 30-day replay horizon).
  Backfill and replay append through the same journal, so they share this one index.
* ``inbox`` + ``bodies``: new events not yet in the lake. The raw body is stored once per
  delivery (a Meta batch of three statuses keeps one body, three records).
* ``receipts``: one row per POST for the lake's ``deliveries`` table (DELIVERY_SCHEMA).

:meth:`Journal.flush` copies the inbox and receipts into a lake, then deletes them. A crash
between the lake write and the delete re-flushes the same rows later; the lake deduplicates
events on ``event_key`` (and exact copies of receipts) when read and at compaction, so a
re-flush is harmless. Signed bodies that cannot be parsed go to ``DATA/quarantine/``
(:meth:`Journal.quarantine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from kirim_events.atomicfile import fsync_dir, make_dirs
from kirim_events.errors import StorageError
from kirim_events.events import EventRecord
from kirim_events.filelock import file_lock
from kirim_events.journal_index import (
    KeyIndex,
    data_folder,
    journal_path,
    lake_identity,
    refuse_inside_lake,
)
from kirim_events.journal_quarantine import quarantine_once, write_quarantine
from kirim_events.journal_rows import (
    EVENT_COLUMNS,
    RECEIPT_COLUMNS,
    conform,
    ddl,
    ndjson_select,
    table_from_ndjson,
)
from kirim_events.journal_write import (
    CHUNK,
    Job,
    Result,
    append_job,
    forget,
    prune,
    settle,
    write_appends,
)
from kirim_events.schema import DELIVERY_SCHEMA, EVENT_SCHEMA

__all__ = ["FlushReport", "Journal", "LakeSink"]

JOURNAL_VERSION = 1
DEFAULT_RETENTION = timedelta(days=35)
# Flushes read batches as NDJSON built by SQLite (see journal_rows). The bodies come apart,
# once each: every record of a batched Meta body shares it, and writing it into every row's
# JSON (then parsing it back) made a body of n statuses cost n times its size twice over.
_INBOX_JSON = [("seq", "seq"), ("body_id", "body_id")] + [(c, c) for c in EVENT_COLUMNS]
_SELECT_INBOX = ndjson_select("inbox", _INBOX_JSON, "seq")
_SELECT_BODIES = """SELECT id, payload FROM bodies WHERE id IN (
    SELECT body_id FROM inbox WHERE seq <= ? ORDER BY seq LIMIT ?)"""
# The last seq of the next batch such that the rows before it hold under a budget of payload
# bytes (the first row always comes). Each body's size is taken once, however many records
# share it (a Meta body of 8,000 statuses: 28.7 s -> 3.8 s to flush, with the bodies read
# apart). length() of a BLOB reads its size; of TEXT it counts characters, which made this
# query take half again as long.
_INBOX_CUT = """WITH rows AS MATERIALIZED (
    SELECT seq, body_id FROM inbox WHERE seq <= ?1 ORDER BY seq LIMIT ?2
), sizes AS MATERIALIZED (
    SELECT id, length(CAST(payload AS BLOB)) AS size FROM bodies
    WHERE id IN (SELECT body_id FROM rows)
)
SELECT max(seq) FROM (
    SELECT seq, sum(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size AS before
    FROM rows JOIN sizes ON sizes.id = rows.body_id
) WHERE before < ?3"""
FLUSH_BYTES = 64 * 1024 * 1024  # payload bytes per lake write, besides the row limit
_RECEIPTS_JSON = [("seq", "seq")] + [(c, c) for c in RECEIPT_COLUMNS]
_SELECT_RECEIPTS = ndjson_select("receipts", _RECEIPTS_JSON, "seq")


def _one_job_may_cause(exc: BaseException) -> bool:
    """Whether retrying a failed group job by job can help: not when the database itself
    failed (locked past the busy timeout, disk full, I/O error: SQLite's OperationalError),
    where each retry would wait and fail again."""
    return not isinstance(exc, (sqlite3.OperationalError, OSError))


def _identity(path: Path) -> tuple[int, int]:
    """Which file ``path`` names (device, inode): another after a delete and a new file at
    the path."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


class LakeSink(Protocol):
    """What :meth:`Journal.flush` needs from a lake (``kirim_events.Lake`` provides it).

    Both methods receive Arrow tables (EVENT_SCHEMA / DELIVERY_SCHEMA) and must be durable
    when they return.
    """

    def write_events(self, records: Any) -> int: ...

    def write_deliveries(self, rows: Any) -> int: ...


@dataclass(frozen=True)
class FlushReport:
    """What one :meth:`Journal.flush` moved: event and receipt counts, and seconds taken."""

    events: int
    receipts: int
    seconds: float


class Journal(KeyIndex):
    """The durable inbox and dedup index of one data folder.

    Parameters
    ----------
    data_dir
        The data folder (the lake); the journal lives in ``data_dir/_journal/``.
    retention
        How long the dedup index remembers a key (at least 30 days; default 35).
    now
        Clock returning unix seconds (injectable for tests of retention).
    max_batch
        Most appends committed in one transaction by the writer thread.

    Examples
    --------
    >>> j = Journal(tmp_path)  # doctest: +SKIP
    >>> j.append(records)      # doctest: +SKIP
    [True, False]
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        retention: timedelta = DEFAULT_RETENTION,
        now: Callable[[], float] = time.time,
        max_batch: int = 2000,
    ) -> None:
        if retention < timedelta(days=30):
            raise ValueError("retention must be at least 30 days (Kirim's replay horizon)")
        # absolute: the file is checked again at every commit (_check_file), the quarantine
        # is written and the lake named (_record_target) long after; a relative path would
        # name another folder once the process changes its working folder. "~" expanded, as
        # Lake (open_storage) expands it: the same words name the same folder for both
        self.data_dir = data_folder(data_dir)
        refuse_inside_lake(self.data_dir)
        self.path = journal_path(self.data_dir)
        self.retention = retention
        self._now = now
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        self._flush_lock = threading.Lock()
        self._lock = threading.Lock()  # one user of the write connection at a time
        self._closed = False
        self.commits = 0
        """Transactions committed by this instance (one per group of appends)."""
        try:
            # fsync'd into its parents when made: SQLite syncs _journal/ and its own files,
            # not DATA/ above it, and a journal's name lost to a power loss loses webhooks
            # that Kirim was told were stored
            make_dirs(self.path.parent)
            # and again at each open: a first start that died before its fsync left the
            # name of _journal/ unsynced, and make_dirs does nothing for a folder that exists
            fsync_dir(self.path.parent.parent)
            self._conn = self._open()
            self._backlog: int = self._conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
            self._file = _identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open journal at {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name="kirim-journal", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ writer thread

    def _open(self, wait: float = 30.0) -> sqlite3.Connection:
        """Connect and create the tables. Two processes opening one new journal at once
        (two collectors started together) can find it locked while the other switches it
        to WAL, which SQLite's busy timeout does not cover: try again for ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                self._setup(conn)
                conn.executescript(ddl())
                self._check_version(conn)
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except BaseException:
                conn.close()
                raise

    @staticmethod
    def _setup(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: every commit fsyncs the WAL, so a returned commit survives power loss.
        conn.execute("PRAGMA synchronous = FULL")
        # Checkpoints (copying the WAL into the database, another fsync) run in flush(), off
        # the acknowledgement path; this larger automatic threshold is only a safety net for
        # a journal that is never flushed.
        conn.execute("PRAGMA wal_autocheckpoint = 16384")

    def _check_version(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is None:
            # OR IGNORE: another process opening the new journal may have written it first
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(JOURNAL_VERSION),)
            )
            return
        version = str(row[0]).strip()
        if not (version.isascii() and version.isdigit() and len(version) < 10):
            # a damaged meta row: int() raised a ValueError, a traceback from every command
            raise StorageError(
                f"journal {self.path} is damaged: its version is {version[:20]!r}, not a number"
            )
        if int(version) > JOURNAL_VERSION:
            raise StorageError(f"journal version {version} is newer than this kirim-events")

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = list(first)
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            with self._lock:
                self._commit(batch)

    def _check_file(self) -> None:
        """StorageError unless ``path`` is still the file this journal opened. Deleted (or
        replaced) under a running collector, the open connection kept committing, with
        fsync, into a file no one could read again: acknowledged events were lost, while
        the flusher read a new, empty journal at the path."""
        try:
            same = _identity(self.path) == self._file
        except FileNotFoundError:
            same = False
        except OSError as exc:  # EIO, ESTALE on a network mount: may pass; say what it was
            raise StorageError(f"cannot check journal {self.path}: {exc}") from exc
        if not same:
            raise StorageError(
                f"journal {self.path} was deleted, moved or replaced while open: nothing "
                "more is stored there; restart to open the journal at that path"
            )

    def _connect(self) -> sqlite3.Connection:
        """A reader on this journal's file: never a new, empty database at its path."""
        self._check_file()
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        return sqlite3.connect(uri, uri=True, isolation_level=None)

    def _commit(self, batch: list[Job]) -> None:
        results: list[Result] = []
        conn = self._conn
        try:
            self._check_file()
        except StorageError as gone:
            self._deliver([(job, None, gone) for job in batch])
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            appends = [job for job in batch if job.work is None]
            if appends:
                results += write_appends(conn, appends, self._seen_at())
            for job in batch:
                if job.work is not None:
                    results.append((job, job.work(conn), None))
            count = None  # the inbox's rows, counted after this batch's appends and work
            if any(job.recounts_backlog for job in batch):
                count = int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # sqlite3.Error, OSError, or a bug in an internal job
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1 and _one_job_may_cause(exc):
                for job in batch:  # one bad job must not fail those grouped with it
                    self._commit([job])
                return
            err = StorageError(f"journal write failed: {exc}")
            results = [(job, None, err) for job in batch]
        else:
            if count is not None:
                self._backlog = count
            else:
                self._backlog += sum(job.backlog_delta for job in batch)
        self._deliver(results)

    def _seen_at(self) -> int:
        return int(self._now() * 1_000_000)

    def _deliver(self, results: list[Result]) -> None:
        # One wake-up per event loop per commit, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[Result]]
        by_loop = {}
        for item in results:
            loop = item[0].loop
            if loop is None:
                settle([item])
            else:
                by_loop.setdefault(loop, []).append(item)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, items)

    def _enqueue(self, job: Job) -> None:
        if self._closed or not self._thread.is_alive():
            raise StorageError("journal is closed")
        self._queue.put([job])

    def _enqueue_async(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        # Requests handled in one event-loop pass form one group: _hand_over runs after them
        # and hands them to the writer thread as one item, committed together.
        if self._closed or not self._thread.is_alive():
            raise StorageError("journal is closed")
        waiting = self._pending.get(loop)
        if waiting is None:
            self._pending[loop] = [job]
            loop.call_soon(self._hand_over, loop)
        else:
            waiting.append(job)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._pending.pop(loop, [])
        if self._closed:
            settle([(job, None, StorageError("journal is closed")) for job in jobs])
        elif jobs:
            self._queue.put(jobs)

    def _submit(
        self, work: Callable[[sqlite3.Connection], Any], *, recounts_backlog: bool = False
    ) -> Future[Any]:
        job = Job(Future(), None, work=work, recounts_backlog=recounts_backlog)
        self._enqueue(job)
        return job.future  # type: ignore[return-value]

    # ------------------------------------------------------------------ appends

    def submit(
        self, records: Sequence[EventRecord], receipts: Iterable[Mapping[str, Any]] = ()
    ) -> Future[list[bool]]:
        """Queue an append; the future resolves with per-record "was new" after the commit.

        A receipt whose ``outcome`` is None gets ``new`` if any record was new, else
        ``duplicate``; one without ``received_at`` gets the commit time. The future fails
        with :class:`StorageError` when the disk write fails. Raises TypeError or ValueError
        at once for a record or receipt of the wrong form.
        """
        job = append_job(Job(Future(), None), records, receipts)
        self._enqueue(job)
        return job.future  # type: ignore[return-value]

    def append(
        self, records: Sequence[EventRecord], receipts: Iterable[Mapping[str, Any]] = ()
    ) -> list[bool]:
        """Store new records and receipts durably; return, per record, whether it was new.

        Parameters
        ----------
        records
            Parsed events; one whose ``event_key`` the index already holds is not stored again.
        receipts
            Rows for the ``deliveries`` table (DELIVERY_SCHEMA column names).

        Returns
        -------
        list[bool]
            One flag per record, in order. Returns only after the data is fsync'd.

        Raises
        ------
        StorageError
            The journal could not be written (the caller should answer 503 / retry).
        """
        return self.submit(records, receipts).result()

    async def append_async(
        self, records: Sequence[EventRecord], receipts: Iterable[Mapping[str, Any]] = ()
    ) -> list[bool]:
        """:meth:`append` for asyncio callers; concurrent callers share one commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        self._enqueue_async(append_job(Job(future, loop), records, receipts), loop)
        return await future

    async def ping_async(self) -> None:
        """Commit a tiny write, proving the journal is writable (for ``/healthz``)."""
        stamp = str(self._now())

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('health', ?)", (stamp,))

        await asyncio.wrap_future(self._submit(work))

    def _record_target(self, lake: object) -> None:
        """Note which lake this journal flushes into, once per flush that moves rows there
        (reconcile checks that lake; a flush that finds nothing to move says nothing). Written
        each time, not only on a change: another process may have written another one."""
        target = lake_identity(lake, self.data_dir)
        if target is None:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('lake', ?)", (target,))

        self._submit(work).result()

    def forget_keys(self, event_keys: Iterable[str]) -> None:
        """Remove ``event_keys`` from the dedup index, so that they are stored again when
        they come (reconcile, for events the index remembers but the lake has lost)."""
        keys = list(dict.fromkeys(event_keys))

        def work(conn: sqlite3.Connection) -> None:
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start : start + CHUNK]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM keys WHERE event_key IN ({marks})", chunk)

        if keys:
            self._submit(work).result()

    # ------------------------------------------------------------------ reads

    @property
    def backlog(self) -> int:
        """Events journaled but not yet flushed to the lake.

        Counted in the journal at each flush, then kept up by this instance's appends; other
        processes' appends to the same journal show from the next flush on.
        """
        return self._backlog

    # ------------------------------------------------------------------ flush

    def flush(
        self, lake: LakeSink, *, batch_size: int = 50_000, max_bytes: int = FLUSH_BYTES
    ) -> FlushReport:
        """Move journaled events and receipts into ``lake``, then forget them here.

        Events go first, then receipts; each batch is deleted from the journal only after the
        lake write returned (the lake's writes are durable on return). The dedup index keeps
        the keys. Safe to call from any thread; concurrent flushes run one after another.

        Flushes of one journal run one after another, also across processes (a ``collect``
        and a ``compact``, ``backfill`` or second ``collect`` on the same data folder): each
        holds an exclusive lock on ``_journal/flush.lock`` from reading its first batch to
        deleting its last.

        A flush moves what was journaled when it started; rows appended meanwhile wait for
        the next one. (Chasing them under a steady stream of webhooks kept the flusher
        writing small batches without pause, each paying the lake's fixed cost per write.)

        Each lake write takes at most ``batch_size`` events and, past the first, at most
        ``max_bytes`` bytes of payload: each record of a batched Meta body carries the
        whole body, so a body of n statuses is n copies of n statuses.

        Returns
        -------
        FlushReport
        """
        started = time.perf_counter()
        n_events = n_receipts = 0
        with self._flush_lock, self._flush_file_lock():
            with self._reader() as conn:
                top_inbox = conn.execute("SELECT max(seq) FROM inbox").fetchone()[0] or 0
                top_receipts = conn.execute("SELECT max(seq) FROM receipts").fetchone()[0] or 0
            while (
                batch := self._read_batch(
                    _SELECT_INBOX,
                    _INBOX_JSON,
                    (top_inbox, batch_size),
                    (_INBOX_CUT, max_bytes),
                    with_bodies=True,
                )
            ) is not None:
                last, events = batch
                if not n_events:
                    self._record_target(lake)  # before the rows leave: reconcile reads it
                lake.write_events(conform(events, EVENT_SCHEMA))
                self._submit(forget("inbox", last), recounts_backlog=True).result()
                n_events += events.num_rows
            while batch := self._read_batch(
                _SELECT_RECEIPTS, _RECEIPTS_JSON, (top_receipts, batch_size)
            ):
                last, receipts = batch
                if not n_events and not n_receipts:
                    self._record_target(lake)
                lake.write_deliveries(conform(receipts, DELIVERY_SCHEMA))
                self._submit(forget("receipts", last)).result()
                n_receipts += receipts.num_rows
            cutoff = int((self._now() - self.retention.total_seconds()) * 1_000_000)
            self._submit(prune(cutoff), recounts_backlog=True).result()
            with self._reader() as conn:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return FlushReport(n_events, n_receipts, time.perf_counter() - started)

    @contextlib.contextmanager
    def _flush_file_lock(self) -> Iterator[None]:
        """Exclusive across processes: a flush deletes "every row up to the last one it read",
        and SQLite reuses row numbers once a table is empty, so a second flusher emptying the
        inbox meanwhile would let that delete take a newly acknowledged event."""
        with file_lock(self.path.parent / "flush.lock"):  # waits for another's flush to end
            yield

    def _read_batch(
        self,
        sql: str,
        columns: Sequence[tuple[str, str]],
        params: tuple[int, int],
        budget: tuple[str, int] | None = None,
        *,
        with_bodies: bool = False,
    ) -> tuple[int, pa.Table] | None:
        """The next rows (``params``: up to which seq, how many) as an Arrow table, and their
        last seq; ``budget`` (a query and its limit) first moves that seq down so that the
        rows hold at most so many payload bytes. ``with_bodies``: inbox rows, whose
        ``body_id`` becomes the ``payload`` column (each body read once)."""
        top, limit = params
        with self._reader() as conn:
            if budget is not None:
                cut = conn.execute(budget[0], (top, limit, budget[1])).fetchone()[0]
                top = top if cut is None else min(top, int(cut))
            data = conn.execute(sql, (top, limit)).fetchone()[0]
            bodies = conn.execute(_SELECT_BODIES, (top, limit)).fetchall() if with_bodies else []
        if data is None:
            return None
        table = table_from_ndjson(data, [name for name, _ in columns])
        if with_bodies:
            ids = pa.array([row[0] for row in bodies], pa.int64())
            texts = pa.array([row[1] for row in bodies], pa.string())
            at = pc.index_in(table.column("body_id"), value_set=ids)
            if at.null_count:  # a record whose body is gone: never write it without one
                raise StorageError(f"journal {self.path}: {at.null_count} records lack a body")
            table = table.drop_columns(["body_id"]).append_column("payload", texts.take(at))
        return int(pc.max(table.column("seq")).as_py()), table

    # ------------------------------------------------------------------ quarantine

    def quarantine(
        self,
        body: bytes,
        headers: Mapping[str, str],
        reason: str,
        *,
        received_at: datetime | None = None,
    ) -> Path:
        """Keep a signed but unparseable body byte-exact under ``DATA/quarantine/``.

        Writes ``<day>/<time>-<sha256 prefix>-<key>.body`` (the exact bytes) and a ``.json``
        beside it (reason, receipt time, size, sha256 and the ``X-Kirim-*``, content-type and
        user-agent headers, ``count`` and ``last_received_at``), each fsync'd and renamed into
        place, before returning. One copy per body and delivery: a retry (the same bytes, the
        same ``X-Kirim-Delivery-Id`` and ``X-Kirim-Event-Id``) only counts one more in the
        ``.json`` of the copy kept (:func:`~kirim_events.journal_quarantine.write_quarantine`),
        whichever process on this data folder takes it (they take turns on a lock).

        Returns
        -------
        Path
            The ``.body`` file.

        Raises
        ------
        StorageError
            The files could not be written.
        """
        when = received_at or datetime.fromtimestamp(self._now(), UTC)
        return write_quarantine(self.data_dir, body, headers, reason, when)

    def quarantine_once(self, body: bytes, headers: Mapping[str, str], reason: str) -> bool:
        """:meth:`quarantine` unless the same bytes are kept already (a history walked twice,
        by backfill and reconcile or by two runs); True when it wrote them now
        (:func:`~kirim_events.journal_quarantine.quarantine_once`)."""
        when = datetime.fromtimestamp(self._now(), UTC)
        return quarantine_once(self.data_dir, body, headers, reason, when)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Finish queued appends, stop the writer thread and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.data_dir)!r}, backlog={self._backlog})"
