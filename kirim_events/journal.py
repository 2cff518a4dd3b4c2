"""Durable inbox and persistent dedup index between the receiver (or backfill) and the lake.

Files live under ``DATA/_journal/``: one SQLite database in WAL mode with
``synchronous=FULL``, so a commit is on disk (fsync'd) when it returns. One writer thread owns
the write connection: it drains a queue of appends and commits everything waiting in one
transaction (group commit), so N concurrent deliveries pay one fsync, not N. A caller's future
resolves only after the commit that holds its rows, hence "acknowledged" implies "durable"; a
SIGKILL at any instant loses nothing that was acknowledged (SQLite's WAL recovery on reopen).

Tables:

* ``keys``: the dedup index, one row per ``event_key`` ever accepted, with its first-seen
  time; kept for ``retention`` (35 days by default, above Kirim's 30-day replay horizon).
  Backfill and replay append through the same journal, so they share this one index.
* ``inbox`` + ``bodies``: new events not yet in the lake. The raw body is stored once per
  delivery (a Meta batch of three statuses keeps one body, three records).
* ``receipts``: one row per POST for the lake's ``deliveries`` table (DELIVERY_SCHEMA).

:meth:`Journal.flush` copies the inbox and receipts into a lake, then deletes them. A crash
between the lake write and the delete re-flushes the same rows later; the lake deduplicates
events on ``event_key`` when read and at compaction, so a re-flush is harmless.
Signed bodies that cannot be parsed go to ``DATA/quarantine/`` (:meth:`Journal.quarantine`),
byte-exact, with their headers and the reason, fsync'd before the caller acknowledges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from kirim_events.errors import StorageError
from kirim_events.events import EventRecord

__all__ = ["FlushReport", "Journal", "LakeSink"]

JOURNAL_VERSION = 1
DEFAULT_RETENTION = timedelta(days=35)
_TIME_FIELDS = ("occurred_at", "received_at", "created_at")
_RECORD_FIELDS = tuple(f.name for f in fields(EventRecord) if f.name != "payload")

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (event_key TEXT PRIMARY KEY, seen_at INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_seen_at ON keys (seen_at);
CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY, event_key TEXT NOT NULL,
    body_id INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_body ON inbox (body_id);
CREATE TABLE IF NOT EXISTS receipts (seq INTEGER PRIMARY KEY, row TEXT NOT NULL);
"""


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LakeSink(Protocol):
    """What :meth:`Journal.flush` needs from a lake (``kirim_events.Lake`` provides it)."""

    def write_events(self, records: Sequence[EventRecord]) -> int: ...

    def write_deliveries(self, rows: Sequence[Mapping[str, Any]]) -> int: ...


@dataclass(frozen=True)
class FlushReport:
    """What one :meth:`Journal.flush` moved: event and receipt counts, and seconds taken."""

    events: int
    receipts: int
    seconds: float


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    return (value.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _dump(row: Mapping[str, Any], names: Iterable[str]) -> str:
    out: dict[str, Any] = {}
    for name in names:
        value = row.get(name)
        out[name] = _micros(value) if isinstance(value, datetime) else value
    return json.dumps(out, separators=(",", ":"))


def _load(text: str) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(text)
    for name in _TIME_FIELDS:
        if isinstance(row.get(name), int):
            row[name] = _from_micros(row[name])
    return row


@dataclass
class _Job:
    work: Callable[[sqlite3.Connection], Any]
    future: Future[Any]


class Journal:
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
        Most appends committed in one transaction.

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
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "_journal" / "journal.sqlite3"
        self.retention = retention
        self._now = now
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._flush_lock = threading.Lock()
        self._closed = False
        self.commits = 0
        """Transactions committed by this instance (one per group of appends)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            self._conn.executescript(_DDL)
            self._check_version(self._conn)
            self._backlog: int = self._conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open journal at {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name="kirim-journal", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: every commit fsyncs the WAL, so a returned commit survives power loss.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _check_version(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('version', ?)", (str(JOURNAL_VERSION),))
        elif int(row[0]) > JOURNAL_VERSION:
            raise StorageError(f"journal version {row[0]} is newer than this kirim-events")

    def _run(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                break
            batch = [job]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                # A savepoint per job: one bad append fails alone, not the whole group.
                conn.execute("SAVEPOINT job")
                try:
                    results.append((job, job.work(conn), None))
                    conn.execute("RELEASE job")
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = StorageError(f"journal write failed: {exc}")
            with contextlib.suppress(sqlite3.Error):
                self._backlog = conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
            for job in batch:
                job.future.set_exception(err)
            return
        for job, value, error in results:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(value)

    def _submit(self, work: Callable[[sqlite3.Connection], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        if self._closed or not self._thread.is_alive():
            future.set_exception(StorageError("journal is closed"))
            return future
        self._queue.put(_Job(work, future))
        return future

    # ------------------------------------------------------------------ appends

    def _append_work(
        self, records: Sequence[EventRecord], receipts: Sequence[Mapping[str, Any]]
    ) -> Callable[[sqlite3.Connection], list[bool]]:
        def work(conn: sqlite3.Connection) -> list[bool]:
            seen_at = int(self._now() * 1_000_000)
            flags: list[bool] = []
            body_ids: dict[str, int] = {}
            for record in records:
                cur = conn.execute(
                    "INSERT INTO keys VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (record.event_key, seen_at),
                )
                is_new = cur.rowcount == 1
                flags.append(is_new)
                if not is_new:
                    continue
                body_id = body_ids.get(record.payload)
                if body_id is None:
                    cur = conn.execute("INSERT INTO bodies (payload) VALUES (?)", (record.payload,))
                    body_id = body_ids[record.payload] = int(cur.lastrowid or 0)
                row = {name: getattr(record, name) for name in _RECORD_FIELDS}
                conn.execute(
                    "INSERT INTO inbox (event_key, body_id, record) VALUES (?, ?, ?)",
                    (record.event_key, body_id, _dump(row, _RECORD_FIELDS)),
                )
            for receipt in receipts:
                row = dict(receipt)
                if row.get("received_at") is None:
                    row["received_at"] = _from_micros(seen_at)
                if row.get("outcome") is None:
                    row["outcome"] = "new" if any(flags) else "duplicate"
                conn.execute("INSERT INTO receipts (row) VALUES (?)", (_dump(row, row),))
            self._backlog += sum(flags)
            return flags

        return work

    def submit(
        self, records: Sequence[EventRecord], receipts: Sequence[Mapping[str, Any]] = ()
    ) -> Future[list[bool]]:
        """Queue an append; the future resolves with per-record "was new" after the commit.

        A receipt whose ``outcome`` is None gets ``new`` if any record was new, else
        ``duplicate``; one without ``received_at`` gets the commit time. The future fails
        with :class:`StorageError` when the disk write fails.
        """
        return self._submit(self._append_work(list(records), [dict(r) for r in receipts]))

    def append(
        self, records: Sequence[EventRecord], receipts: Sequence[Mapping[str, Any]] = ()
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
        self, records: Sequence[EventRecord], receipts: Sequence[Mapping[str, Any]] = ()
    ) -> list[bool]:
        """:meth:`append` for asyncio callers; concurrent callers share one commit."""
        result: list[bool] = await asyncio.wrap_future(self.submit(records, receipts))
        return result

    async def ping_async(self) -> None:
        """Commit a tiny write, proving the journal is writable (for ``/healthz``)."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('health', ?)", (str(self._now()),))

        await asyncio.wrap_future(self._submit(work))

    # ------------------------------------------------------------------ reads

    @property
    def backlog(self) -> int:
        """Events journaled but not yet flushed to the lake."""
        return self._backlog

    def seen(self, event_keys: Iterable[str]) -> set[str]:
        """Return which of ``event_keys`` the dedup index already holds."""
        keys = list(dict.fromkeys(event_keys))
        found: set[str] = set()
        with self._reader() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT event_key FROM keys WHERE event_key IN ({marks})", chunk
                )
                found.update(row[0] for row in rows)
        return found

    @contextlib.contextmanager
    def _reader(self) -> Any:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read journal: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            yield conn
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read journal: {exc}") from exc
        finally:
            conn.close()

    # ------------------------------------------------------------------ flush

    def flush(self, lake: LakeSink, *, batch_size: int = 50_000) -> FlushReport:
        """Move journaled events and receipts into ``lake``, then forget them here.

        Events go first, then receipts; each batch is deleted from the journal only after the
        lake write returned (the lake's writes are durable on return). The dedup index keeps
        the keys. Safe to call from any thread; concurrent flushes run one after another.

        Returns
        -------
        FlushReport
        """
        started = time.perf_counter()
        n_events = n_receipts = 0
        with self._flush_lock:
            while True:
                with self._reader() as conn:
                    rows = conn.execute(
                        "SELECT i.seq, i.record, b.payload FROM inbox i "
                        "JOIN bodies b ON b.id = i.body_id ORDER BY i.seq LIMIT ?",
                        (batch_size,),
                    ).fetchall()
                if not rows:
                    break
                records = [EventRecord(**_load(rec), payload=payload) for _, rec, payload in rows]
                lake.write_events(records)
                self._submit(self._forget_events(rows[-1][0], len(rows))).result()
                n_events += len(rows)
            while True:
                with self._reader() as conn:
                    got = conn.execute(
                        "SELECT seq, row FROM receipts ORDER BY seq LIMIT ?", (batch_size,)
                    ).fetchall()
                if not got:
                    break
                lake.write_deliveries([_load(text) for _, text in got])
                self._submit(self._forget_receipts(got[-1][0])).result()
                n_receipts += len(got)
            self._prune()
        return FlushReport(n_events, n_receipts, time.perf_counter() - started)

    def _forget_events(self, last_seq: int, count: int) -> Callable[[sqlite3.Connection], None]:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM inbox WHERE seq <= ?", (last_seq,))
            conn.execute("DELETE FROM bodies WHERE id NOT IN (SELECT body_id FROM inbox)")
            self._backlog -= count

        return work

    @staticmethod
    def _forget_receipts(last_seq: int) -> Callable[[sqlite3.Connection], None]:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM receipts WHERE seq <= ?", (last_seq,))

        return work

    def _prune(self) -> None:
        cutoff = int((self._now() - self.retention.total_seconds()) * 1_000_000)
        self._submit(lambda c: c.execute("DELETE FROM keys WHERE seen_at < ?", (cutoff,))).result()

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

        Writes ``<day>/<time>-<sha256 prefix>-<random>.body`` (the exact bytes) and a ``.json``
        beside it (reason, receipt time, size, sha256 and the ``X-Kirim-*``, content-type and
        user-agent headers). Both are written under a temporary name, fsync'd and renamed, and
        the folder is fsync'd, before this returns.

        Returns
        -------
        Path
            The ``.body`` file.

        Raises
        ------
        StorageError
            The files could not be written.
        """
        when = (received_at or datetime.fromtimestamp(self._now(), UTC)).astimezone(UTC)
        digest = hashlib.sha256(body).hexdigest()
        folder = self.data_dir / "quarantine" / when.strftime("%Y-%m-%d")
        stem = f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{digest[:16]}-{uuid.uuid4().hex[:8]}"
        kept = {
            k.lower(): v
            for k, v in headers.items()
            if k.lower().startswith("x-kirim-") or k.lower() in {"content-type", "user-agent"}
        }
        meta = {
            "reason": reason,
            "received_at": when.isoformat(),
            "size": len(body),
            "sha256": digest,
            "headers": kept,
        }
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_durably(folder / f"{stem}.body", body)
            _write_durably(folder / f"{stem}.json", json.dumps(meta, indent=1).encode())
            _fsync_dir(folder)
            _fsync_dir(folder.parent)
        except OSError as exc:
            raise StorageError(f"cannot write quarantine file: {exc}") from exc
        return folder / f"{stem}.body"

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Finish queued appends, stop the writer thread and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.data_dir)!r}, backlog={self._backlog})"
