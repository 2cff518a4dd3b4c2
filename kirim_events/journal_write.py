"""The journal's write path: queued jobs, group inserts, and settling callers' futures.

:class:`kirim_events.journal.Journal` decides *when* a group commits (on its writer thread:
one group per event-loop pass or per queue drain); this module builds the rows of a group and
writes them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kirim_events.events import EventRecord
from kirim_events.journal_rows import (
    EVENT_COLUMNS,
    OUTCOME,
    RECEIPT_COLUMNS,
    RECEIVED,
    event_row,
    receipt_row,
)

__all__ = ["CHUNK", "Job", "Result", "append_job", "forget", "prune", "settle", "write_appends"]

CHUNK = 500  # keys per "IN (...)" lookup, below SQLite's parameter limit


@dataclass(eq=False)
class Job:
    """One queued unit of work and where its result goes."""

    future: Future[Any] | asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop | None
    work: Callable[[sqlite3.Connection], Any] | None = None  # an internal operation, or ...
    keys: list[str] = field(default_factory=list)  # ... an append (rows built by the caller)
    events: list[list[Any]] = field(default_factory=list)
    body_of: list[int] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)
    receipts: list[list[Any]] = field(default_factory=list)
    backlog_delta: int = 0
    recounts_backlog: bool = False  # count the inbox after this work, in its transaction


def settle(items: list[Result]) -> None:
    for job, value, error in items:
        if job.future.done():
            continue  # the caller gave up (an asyncio task was cancelled)
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)


Result = tuple[Job, Any, BaseException | None]


def append_job(
    job: Job, records: Sequence[EventRecord], receipts: Iterable[Mapping[str, Any]]
) -> Job:
    # Rows are built in the caller's thread: bad input fails there, alone.
    index: dict[str, int] = {}
    for record in records:
        job.events.append(event_row(record))
        job.keys.append(record.event_key)
        body = index.get(record.payload)
        if body is None:
            body = index[record.payload] = len(job.payloads)
            job.payloads.append(record.payload)
        job.body_of.append(body)
    job.receipts = [receipt_row(receipt) for receipt in receipts]
    return job


def write_appends(conn: sqlite3.Connection, jobs: list[Job], seen_at: int) -> list[Result]:
    wanted = list({key for job in jobs for key in job.keys})
    known: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT event_key FROM keys WHERE event_key IN ({marks})"
        known.update(row[0] for row in conn.execute(sql, chunk))
    next_body = (conn.execute("SELECT max(id) FROM bodies").fetchone()[0] or 0) + 1
    key_rows: list[tuple[str, int]] = []
    body_rows: list[tuple[int, str]] = []
    inbox_rows: list[tuple[Any, ...]] = []
    receipt_rows: list[list[Any]] = []
    results: list[Result] = []
    for job in jobs:
        flags: list[bool] = []
        body_ids: dict[int, int] = {}
        for key, row, body in zip(job.keys, job.events, job.body_of, strict=True):
            is_new = key not in known
            flags.append(is_new)
            if not is_new:
                continue
            known.add(key)  # a second copy later in this same batch is a duplicate
            key_rows.append((key, seen_at))
            if body not in body_ids:
                body_ids[body] = next_body
                body_rows.append((next_body, job.payloads[body]))
                next_body += 1
            inbox_rows.append((body_ids[body], *row))
        for asked in job.receipts:
            receipt = list(asked)  # a copy: a job retried alone decides its outcome anew
            if receipt[OUTCOME] is None:
                receipt[OUTCOME] = "new" if any(flags) else "duplicate"
            if receipt[RECEIVED] is None:
                receipt[RECEIVED] = seen_at
            receipt_rows.append(receipt)
        job.backlog_delta = sum(flags)
        results.append((job, flags, None))
    insert(conn, "keys", ("event_key", "seen_at"), key_rows)
    insert(conn, "bodies", ("id", "payload"), body_rows)
    insert(conn, "inbox", ("body_id", *EVENT_COLUMNS), inbox_rows)
    insert(conn, "receipts", RECEIPT_COLUMNS, receipt_rows)
    return results


def insert(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Insert ``rows`` with one cached prepared statement (``executemany``).

    Measured against one multi-row ``VALUES`` statement per group: that must be parsed anew
    for every group size and cost more CPU per row on the event loop.
    """
    marks = ",".join("?" * len(columns))
    conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def forget(table: str, last_seq: int) -> Callable[[sqlite3.Connection], None]:
    """Delete the rows up to ``last_seq`` (those a flush wrote)."""

    def work(conn: sqlite3.Connection) -> None:
        conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (last_seq,))
        if table == "inbox":
            conn.execute("DELETE FROM bodies WHERE id NOT IN (SELECT body_id FROM inbox)")

    return work


def prune(cutoff: int) -> Callable[[sqlite3.Connection], None]:
    def work(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM keys WHERE seen_at < ?", (cutoff,))

    return work
