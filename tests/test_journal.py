"""Journal: dedup flags, durability across reopen, group commit, flush, retention, quarantine."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import random
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from kirim_events import testing
from kirim_events.errors import ConfigError, StorageError
from kirim_events.events import EventRecord, parse_delivery
from kirim_events.journal import Journal
from kirim_events.journal_write import CHUNK
from kirim_events.lake import Lake

SECRET = "whsec_test_secret"
RECEIVED = datetime(2026, 5, 23, 10, 0, tzinfo=UTC)


def records(body: Mapping[str, Any] | bytes) -> list[EventRecord]:
    req = testing.signed_request(body, SECRET)
    return parse_delivery(req.body, req.headers, received_at=RECEIVED)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path)
    yield j
    j.close()


def test_append_says_which_records_are_new(journal: Journal) -> None:
    first = records(testing.kirim_event())
    second = records(testing.meta_status("delivered"))
    assert journal.append(first) == [True]
    assert journal.append(first + second) == [False, True]
    assert journal.backlog == 2


def test_statuses_of_one_message_are_distinct_events(journal: Journal) -> None:
    wamid = "wamid.SAME"
    got = [journal.append(records(testing.meta_status(s, wamid=wamid))) for s in ("sent", "read")]
    assert got == [[True], [True]]
    assert journal.append(records(testing.meta_status("sent", wamid=wamid))) == [False]


def test_index_and_inbox_survive_reopen(tmp_path: Path) -> None:
    recs = records(testing.kirim_event())
    with Journal(tmp_path) as j:
        assert j.append(recs) == [True]
    with Journal(tmp_path) as j:
        assert j.backlog == 1
        assert j.append(recs) == [False]
        assert j.seen([recs[0].event_key, "evt_other"]) == {recs[0].event_key}


def test_receipt_outcome_is_filled_from_the_flags(tmp_path: Path) -> None:
    recs = records(testing.kirim_event())
    lake = Lake(tmp_path)
    with Journal(tmp_path) as j:
        j.append(recs, [{"delivery_id": "wbd_1", "outcome": None}])
        j.append(recs, [{"delivery_id": "wbd_2", "outcome": None}])
        j.append([], [{"delivery_id": "wbd_3", "outcome": "rejected", "reason": "mismatch"}])
        report = j.flush(lake)
    assert (report.events, report.receipts) == (1, 3)
    rows = lake.deliveries().sort("delivery_id").collect()
    assert rows["outcome"].to_list() == ["new", "duplicate", "rejected"]
    assert rows["reason"].to_list() == [None, None, "mismatch"]


def test_flush_moves_events_into_the_lake_byte_exact(tmp_path: Path) -> None:
    body = testing.encode(testing.meta_status("read"))
    recs = records(body)
    lake = Lake(tmp_path)
    with Journal(tmp_path) as j:
        j.append(recs)
        assert j.flush(lake).events == 1
        assert j.backlog == 0
        assert j.flush(lake).events == 0  # nothing left to move
        assert j.append(recs) == [False]  # the index remembers after the flush
    events = lake.events().collect()
    assert events["event_key"].to_list() == [recs[0].event_key]
    assert events["payload"][0].encode() == body
    assert events["occurred_at"][0] == recs[0].occurred_at


def test_the_signature_is_not_journaled_and_an_older_journal_with_it_still_works(
    tmp_path: Path,
) -> None:
    """The lake does not keep the signature, so the inbox does not either; a journal made
    when it had that column keeps working (the column just stays null)."""
    first, second = records(testing.meta_status("sent")), records(testing.meta_status("read"))
    assert first[0].signature
    with Journal(tmp_path) as j:
        j.append(first)
    with sqlite3.connect(tmp_path / "_journal" / "journal.sqlite3") as conn:
        inbox = [row[1] for row in conn.execute("PRAGMA table_info(inbox)")]
        assert "signature" not in inbox
        conn.execute("ALTER TABLE inbox ADD COLUMN signature TEXT")  # the older layout
    conn.close()
    lake = Lake(tmp_path)
    with Journal(tmp_path) as j:
        assert j.append(second) == [True]
        assert j.flush(lake).events == 2
    assert sorted(lake.events().collect()["status"]) == ["read", "sent"]


def test_flush_keeps_every_character_of_bodies_and_ids(tmp_path: Path) -> None:
    # The flush reads batches as NDJSON built by SQLite: escapes must round-trip exactly.
    odd = 'q"uote \\back\\slash\ttab \u00e9\u4e2d \U0001f600 \x7f \u2028 nul:\x00 end'
    bodies = [
        # pretty-printed (raw newlines outside strings), unicode left unescaped
        json.dumps(testing.kirim_event(event_id="evt_" + odd), indent=2, ensure_ascii=False),
        # every non-ASCII character escaped, a surrogate pair among them
        json.dumps(testing.kirim_event(event_id="evt_ascii_" + odd), ensure_ascii=True),
        # a large body: one NDJSON line of several megabytes
        json.dumps(testing.kirim_event(data={"blob": "x\\" * 1_500_000, "contact": {}})),
    ]
    recs = [r for body in bodies for r in records(body.encode())]
    receipt = {"delivery_id": "wbd_" + odd, "attempt": 2, "reason": odd, "outcome": "new"}
    lake = Lake(tmp_path)
    with Journal(tmp_path) as j:
        assert j.append(recs, [receipt]) == [True, True, True]
        report = j.flush(lake)
    assert (report.events, report.receipts) == (3, 1)
    events = lake.events().sort("received_at", "event_key").collect()
    by_key = dict(zip(events["event_key"].to_list(), events["payload"].to_list(), strict=True))
    assert by_key == {r.event_key: r.payload for r in recs}
    assert {r.payload for r in recs} == set(bodies)
    assert "evt_" + odd in by_key
    row = lake.deliveries().collect().row(0, named=True)
    assert (row["delivery_id"], row["attempt"], row["reason"]) == ("wbd_" + odd, 2, odd)


class _Sink:
    """A lake in front of which a test runs ``before`` at each write of events."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    def before(self, table: Any) -> None:
        pass

    def write_events(self, table: Any) -> int:
        self.before(table)
        return self.lake.write_events(table)

    def write_deliveries(self, table: Any) -> int:
        return self.lake.write_deliveries(table)


class _AppendDuringWrite(_Sink):
    """A lake that, while a flush writes, sees one more event journaled (a webhook arriving)."""

    def __init__(self, lake: Lake, journal: Journal, late: list[EventRecord]) -> None:
        super().__init__(lake)
        self.journal, self.late = journal, late

    def before(self, table: Any) -> None:
        if self.late:
            self.journal.append(self.late, [{"delivery_id": "wbd_late", "outcome": None}])
            self.late = []


def test_a_flush_moves_what_was_journaled_when_it_started(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    early = [r for i in range(3) for r in records(testing.kirim_event(rng=random.Random(i)))]
    late = records(testing.kirim_event(rng=random.Random(99)))
    with Journal(tmp_path) as j:
        j.append(early, [{"delivery_id": "wbd_early", "outcome": None}])
        report = j.flush(_AppendDuringWrite(lake, j, late))
        assert (report.events, report.receipts) == (3, 1)
        assert j.backlog == 1  # the late event waits for the next flush, it is not lost
        assert (j.flush(lake).events, j.backlog) == (1, 0)
    keys = sorted(lake.events().collect()["event_key"].to_list())
    assert keys == sorted(r.event_key for r in early + late)
    assert sorted(lake.deliveries().collect()["delivery_id"].to_list()) == ["wbd_early", "wbd_late"]


class _SecondFlusherDuringWrite(_Sink):
    """While journal ``a`` writes its batch to the lake, a second journal on the same folder
    (another process: a ``compact``, a second ``collect``) flushes, then a webhook arrives."""

    def __init__(self, lake: Lake, a: Journal, b: Journal, late: list[EventRecord]) -> None:
        super().__init__(lake)
        self.a, self.late = a, late
        self.other = threading.Thread(target=lambda: b.flush(lake))
        self.other_locking = threading.Event()  # b asks for the lock a holds: it will wait

    def flock(self, fd: int, operation: int) -> None:
        """``fcntl.flock``, noting when the other flusher asks for an exclusive lock."""
        if threading.current_thread() is self.other and operation == fcntl.LOCK_EX:
            self.other_locking.set()
        FLOCK(fd, operation)

    def before(self, table: Any) -> None:
        if self.late:
            self.other.start()
            # b waits for the lock, or (with no lock across processes) empties the inbox
            wait_until(lambda: self.other_locking.is_set() or not self.other.is_alive(),
                       what="the other flusher at the lock or done")  # fmt: skip
            assert self.a.append(self.late) == [True]  # acknowledged: must reach the lake
            self.late = []


FLOCK = fcntl.flock


def test_two_flushers_on_one_journal_lose_no_acknowledged_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path)
    early = [r for i in range(3) for r in records(testing.kirim_event(rng=random.Random(i)))]
    late = records(testing.kirim_event(rng=random.Random(99)))
    with Journal(tmp_path) as a, Journal(tmp_path) as b:
        a.append(early)
        sink = _SecondFlusherDuringWrite(lake, a, b, late)
        monkeypatch.setattr(fcntl, "flock", sink.flock)
        assert a.flush(sink).events == 3
        sink.other.join(timeout=30)
        assert not sink.other.is_alive()
        assert b.backlog == 0  # b's flush, which waited for a's, moved the late event
        assert (a.flush(lake).events, a.backlog) == (0, 0)
    keys = set(lake.events().collect()["event_key"].to_list())
    assert keys == {r.event_key for r in early + late}


class _CountingLake(_Sink):
    def __init__(self, lake: Lake) -> None:
        super().__init__(lake)
        self.batches: list[int] = []

    def before(self, table: Any) -> None:
        self.batches.append(table.num_rows)


def test_a_flush_bounds_the_payload_bytes_of_each_lake_write(tmp_path: Path) -> None:
    # Each record of a batched Meta body carries the whole body: 300 statuses in one body
    # are 300 copies of it. Bounded by rows alone, one large batch took gigabytes.
    statuses = [testing.meta_status("delivered", rng=random.Random(i)) for i in range(300)]
    body = statuses[0]
    value = body["entry"][0]["changes"][0]["value"]
    value["statuses"] = [s["entry"][0]["changes"][0]["value"]["statuses"][0] for s in statuses]
    recs = records(body)
    size = len(testing.encode(body))
    lake = _CountingLake(Lake(tmp_path))
    with Journal(tmp_path) as j:
        assert j.append(recs) == [True] * 300
        report = j.flush(lake, max_bytes=10 * size)
    assert report.events == 300
    assert lake.batches == [10] * 30  # ten copies of the body per write
    events = lake.lake.events().collect().sort("event_key")
    assert events["event_key"].to_list() == sorted(r.event_key for r in recs)
    assert set(events["payload"]) == {recs[0].payload}  # the whole body on every record


def test_every_record_leaves_the_journal_with_its_own_body(tmp_path: Path) -> None:
    # bodies are read apart from the rows and matched back by id: batched and single bodies
    # interleaved, across several lake writes, each record must keep exactly its own
    rng = random.Random(5)
    bodies = []
    for i in range(40):
        body = testing.meta_status("sent", rng=rng) if i % 3 else testing.kirim_event(rng=rng)
        if i % 5 == 0 and i % 3:
            value = body["entry"][0]["changes"][0]["value"]
            value["statuses"].append(dict(value["statuses"][0], status="delivered"))
        bodies.append(body)
    recs = [r for body in bodies for r in records(body)]
    with Journal(tmp_path) as j:
        for body in bodies:
            j.append(records(body))
        assert j.flush(Lake(tmp_path), batch_size=7).events == len(recs)
    got = dict(Lake(tmp_path).events().select("event_key", "payload").collect().iter_rows())
    assert got == {r.event_key: r.payload for r in recs}


def test_a_meta_batch_stores_its_body_once(journal: Journal) -> None:
    body = testing.meta_status("sent")
    value = body["entry"][0]["changes"][0]["value"]
    value["statuses"].append(dict(value["statuses"][0], status="delivered"))
    recs = records(body)
    assert len(recs) == 2
    assert journal.append(recs) == [True, True]
    import sqlite3

    with sqlite3.connect(journal.path) as conn:
        assert conn.execute("SELECT count(*) FROM bodies").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 2


class _CrashAfterWrite(_Sink):
    """A lake whose write succeeds and then the process "dies" before the journal marks it."""

    def write_events(self, table: Any) -> int:
        self.lake.write_events(table)
        raise KeyboardInterrupt("simulated crash after the lake write")


def test_crash_between_lake_write_and_mark_creates_no_visible_duplicate(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    recs = [r for i in range(5) for r in records(testing.kirim_event(rng=random.Random(i)))]
    with Journal(tmp_path) as j:
        assert j.append(recs) == [True] * 5
        with pytest.raises(KeyboardInterrupt, match="simulated crash after the lake write"):
            j.flush(_CrashAfterWrite(lake))
        assert j.backlog == 5  # not marked: it will be written again
    with Journal(tmp_path) as j:
        assert j.flush(lake).events == 5  # the re-flush writes a second copy on disk
    keys = lake.events().collect()["event_key"].to_list()
    assert sorted(keys) == sorted(r.event_key for r in recs)  # ... which readers never see


def test_concurrent_appends_share_commits(journal: Journal) -> None:
    # Hold the writer inside a transaction so that the appends below pile up in its queue.
    gate, blocker = _hold(journal)
    futures = [journal.submit(records(testing.kirim_event())) for _ in range(200)]
    commits_before = journal.commits
    gate.set()
    blocker.result()
    assert all(f.result() == [True] for f in futures)
    assert journal.commits - commits_before <= 2  # 200 appends, one or two fsyncs


def test_threads_appending_one_event_store_it_once(journal: Journal) -> None:
    recs = records(testing.kirim_event())
    with ThreadPoolExecutor(8) as pool:
        flags = list(pool.map(lambda _: journal.append(recs)[0], range(100)))
    assert flags.count(True) == 1
    assert journal.backlog == 1


def test_bad_input_fails_at_once_and_alone(journal: Journal) -> None:
    good = records(testing.kirim_event())
    with pytest.raises(TypeError, match="expected EventRecord, got object"):
        journal.submit([object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown receipt columns"):
        journal.submit(good, [{"not_a_column": 1}])
    assert journal.append(good) == [True]


def _hold(journal: Journal) -> tuple[threading.Event, Any]:
    """Park the journal's writer thread in a job, so that what is submitted next commits
    as one group once the returned gate is set. Returns the gate and the job's future."""
    entered, gate = threading.Event(), threading.Event()

    def park(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    future = journal._submit(park)
    assert entered.wait(10)
    return gate, future


def _bad_job(conn: sqlite3.Connection) -> None:
    raise ValueError("a bug in an internal job")


def test_a_failing_write_fails_alone_with_storage_error(journal: Journal) -> None:
    gate, blocker = _hold(journal)
    pending = journal.submit(records(testing.kirim_event()))
    failing = journal._submit(_bad_job)
    gate.set()  # the three commit as one group, which fails, then each alone
    blocker.exception()
    with pytest.raises(StorageError, match="journal write failed: a bug in an internal job"):
        failing.result()
    assert pending.result() == [True]  # grouped with the failure, committed all the same
    assert journal.backlog == 1
    assert journal.append(records(testing.kirim_event())) == [True]  # the next group is fine


def test_a_database_error_fails_the_group_without_retrying_each_job(journal: Journal) -> None:
    # SQLite's OperationalError (locked past the busy timeout, disk full, I/O) would fail
    # each job again, after another wait: the group fails once, each caller gets a 503.
    gate, blocker = _hold(journal)
    pending = journal.submit(records(testing.kirim_event()))
    journal._submit(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"))
    commits = journal.commits
    gate.set()
    blocker.exception()
    with pytest.raises(StorageError, match="journal write failed: no such table: no_such_table"):
        pending.result()
    assert journal.commits == commits + 1  # the blocker's own commit, no retries
    assert journal.backlog == 0


def test_retention_forgets_keys_only_after_the_horizon(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    recs = records(testing.kirim_event())
    lake = Lake(tmp_path)
    with Journal(tmp_path, now=lambda: clock[0], retention=timedelta(days=35)) as j:
        j.append(recs)
        clock[0] += 34 * 86400
        j.flush(lake)  # flush prunes keys older than the retention
        assert j.append(recs) == [False]
        clock[0] += 2 * 86400
        j.flush(lake)
        assert j.seen([recs[0].event_key]) == set()
    with pytest.raises(ValueError, match="30 days"):
        Journal(tmp_path, retention=timedelta(days=29))


def test_quarantine_keeps_bytes_headers_and_reason(journal: Journal, tmp_path: Path) -> None:
    body = b'\xff\xfe{"not": json'
    headers = {
        "X-Kirim-Delivery-Id": "wbd_9",
        "Authorization": "Bearer no",
        "X-Kirim-Signature": "t",
    }
    path = journal.quarantine(body, headers, "invalid_json", received_at=RECEIVED)
    assert path.parent.parent == tmp_path / "quarantine"
    assert path.read_bytes() == body
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["reason"] == "invalid_json"
    assert meta["headers"] == {"x-kirim-delivery-id": "wbd_9", "x-kirim-signature": "t"}
    assert meta["size"] == len(body)


def test_closed_journal_raises_storage_error(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.close()
    with pytest.raises(StorageError, match="journal is closed"):
        j.append(records(testing.kirim_event()))


def test_unwritable_folder_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "_journal").write_text("a file where the folder should be")
    with pytest.raises(StorageError, match=r"cannot open journal at .*File exists"):
        Journal(tmp_path)


def test_async_appends_group_commit(tmp_path: Path) -> None:
    import asyncio

    recs = [records(testing.kirim_event(rng=random.Random(i))) for i in range(100)]

    async def burst(journal: Journal) -> list[bool]:
        flags = await asyncio.gather(*(journal.append_async(r) for r in recs * 3))
        return [f[0] for f in flags]

    with Journal(tmp_path) as journal:
        flags = asyncio.run(burst(journal))
        assert flags.count(True) == 100
        assert flags[:100] == [True] * 100  # the first copy of each event wins
        assert journal.backlog == 100
        assert journal.commits < 300  # grouped, not one commit per append


def test_one_unstorable_append_fails_alone_not_its_group(tmp_path: Path) -> None:
    import asyncio
    import dataclasses

    good = [records(testing.kirim_event(rng=random.Random(i))) for i in range(20)]
    # A string SQLite cannot encode (half a UTF-16 pair); the parser refuses such bodies,
    # and whatever else makes one insert fail must not fail the deliveries grouped with it.
    bad = [dataclasses.replace(good[0][0], event_key="evt_\ud800", event_id="evt_\ud800")]

    async def burst(journal: Journal) -> list[Any]:
        appends = [journal.append_async(r) for r in [*good[:10], bad, *good[10:]]]
        return await asyncio.gather(*appends, return_exceptions=True)

    with Journal(tmp_path) as journal:
        results = asyncio.run(burst(journal))
        assert isinstance(results[10], StorageError)
        assert results[:10] + results[11:] == [[True]] * 20
        assert journal.backlog == 20
        assert journal.flush(Lake(tmp_path)).events == 20


def test_journals_opened_at_once_on_a_new_folder_all_open(tmp_path: Path) -> None:
    # Two collectors started together: one switching the new database to WAL, or both
    # writing its version row, made the other fail with "locked" or a UNIQUE error.
    for trial in range(10):
        folder = tmp_path / str(trial)
        start = threading.Barrier(6)

        def open_one(folder: Path = folder, start: threading.Barrier = start) -> None:
            start.wait()
            Journal(folder).close()

        with ThreadPoolExecutor(6) as pool:
            for future in [pool.submit(open_one) for _ in range(6)]:
                future.result()


def test_a_job_retried_alone_decides_its_receipt_anew(journal: Journal) -> None:
    # A failed group is retried job by job; the receipt of B kept the outcome "duplicate"
    # that the failed attempt had given it (A, the same event, came first in the group).
    (good,) = records(testing.kirim_event())
    bad = dataclasses.replace(good, team_id="x\ud800")  # a value SQLite cannot bind
    gate, blocker = _hold(journal)
    first = journal.submit([bad], [{"delivery_id": "wbd_A", "outcome": None}])
    second = journal.submit([good], [{"delivery_id": "wbd_B", "outcome": None}])
    gate.set()  # A and B commit as one group, which fails, then each alone
    blocker.result()
    with pytest.raises(
        StorageError,
        match=r"journal write failed: 'utf-8' codec can't encode .* surrogates not allowed",
    ):
        first.result()
    assert second.result() == [True]
    with sqlite3.connect(journal.path) as conn:
        assert conn.execute("SELECT delivery_id, outcome FROM receipts").fetchall() == [
            ("wbd_B", "new")
        ]


def test_a_locked_database_fails_every_grouped_async_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group failing with a database error must settle every job (a pipelined commit path,
    # since removed, settled only the first; the others waited for ever). Busy timeout cut
    # to 0.2 s, another writer holds the lock.
    import asyncio

    setup = Journal._setup

    def quick(conn: sqlite3.Connection) -> None:
        setup(conn)
        conn.execute("PRAGMA busy_timeout = 200")

    monkeypatch.setattr(Journal, "_setup", staticmethod(quick))
    recs = [records(testing.kirim_event(rng=random.Random(i))) for i in range(3)]
    with Journal(tmp_path) as journal:
        other = sqlite3.connect(journal.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")

        async def burst() -> list[Any]:
            appends = [journal.append_async(r) for r in recs]
            return await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), 10)

        results = asyncio.run(burst())
        other.execute("ROLLBACK")
        other.close()
    assert [type(r) for r in results] == [StorageError] * 3


def test_another_writer_holding_the_lock_never_blocks_the_event_loop(tmp_path: Path) -> None:
    # A flush, a backfill or a second collector may hold SQLite's write lock for a while;
    # the loop answering webhooks must keep running meanwhile (a pipelined commit path
    # that began its transaction on the loop froze it for up to the 30 s busy timeout).
    import asyncio

    (rec,) = records(testing.kirim_event())
    with Journal(tmp_path) as journal:
        other = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        begun = threading.Event()  # the writer has started its BEGIN, and waits for the lock
        journal._conn.set_trace_callback(lambda sql: begun.set() if "BEGIN" in sql else None)

        async def run() -> tuple[int, list[bool]]:
            append = asyncio.ensure_future(journal.append_async([rec]))
            deadline = asyncio.get_running_loop().time() + 10
            while not begun.is_set():
                assert asyncio.get_running_loop().time() < deadline, "the writer never began"
                await asyncio.sleep(0.01)
            turns_while_waiting = 0
            for _ in range(5):  # the loop keeps turning while the writer waits for the lock
                await asyncio.sleep(0.01)  # real turns: a loop frozen in BEGIN would not come back
                turns_while_waiting += not append.done()
            other.execute("COMMIT")
            return turns_while_waiting, await asyncio.wait_for(append, 30)

        turns, flags = asyncio.run(run())
        journal._conn.set_trace_callback(None)
        other.close()
    assert (turns, flags) == (5, [True])


def test_seen_prefixes_answers_for_any_text(journal: Journal) -> None:
    keys = ["wamid.A:sent", "wamid.A:read", "wamid.AB:sent", "x\U0010ffff:y", "y\ud7ff:z"]
    journal._submit(
        lambda conn: conn.executemany(
            "INSERT INTO keys (event_key, seen_at) VALUES (?, 0)", [(k,) for k in keys]
        )
    ).result()
    asked = ["wamid.A:", "wamid.AB:", "wamid.B:", "wamid.", "x\U0010ffff", "y\ud7ff", "z", ""]
    # the last two ends broke a computed upper bound (past U+10FFFF; into the surrogates)
    held = {"wamid.A:", "wamid.AB:", "wamid.", "x\U0010ffff", "y\ud7ff"}
    assert journal.seen_prefixes(asked) == held


def test_the_read_only_view_sees_every_key_and_creates_nothing(tmp_path: Path) -> None:
    from kirim_events.journal_index import JournalView

    status = records(testing.meta_status("sent", wamid="wamid.V"))
    with Journal(tmp_path) as j:
        j.append(records(testing.kirim_event()) + status)
    files = sorted(p.name for p in (tmp_path / "_journal").iterdir())
    view = JournalView(tmp_path)
    assert view.seen([status[0].event_key, "evt_none"]) == {status[0].event_key}
    assert view.seen_prefixes(["wamid.V:", "wamid.W:"]) == {"wamid.V:"}
    assert sorted(p.name for p in (tmp_path / "_journal").iterdir()) == files  # no -wal/-shm
    # while a writer has it open, the view reads what is still in its WAL
    with Journal(tmp_path) as j:
        late = records(testing.kirim_event())
        j.append(late)
        assert view.seen([late[0].event_key]) == {late[0].event_key}
    with pytest.raises(StorageError, match="no journal"):
        JournalView(tmp_path / "elsewhere")


def test_the_view_raises_a_real_error_at_once_and_still_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries are for a file changing under a read; a journal that cannot answer says so."""
    from types import SimpleNamespace

    from kirim_events import journal_index
    from kirim_events.journal_index import JournalView

    folder = tmp_path / "_journal"
    folder.mkdir()
    conn = sqlite3.connect(folder / "journal.sqlite3")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE other (x)")  # no keys table
    conn.close()
    sleeps: list[float] = []
    monkeypatch.setattr(journal_index, "time", SimpleNamespace(sleep=sleeps.append))
    view = JournalView(tmp_path)
    connect = view._connect
    reads: list[None] = []

    def counted() -> sqlite3.Connection:
        reads.append(None)
        return connect()

    monkeypatch.setattr(view, "_connect", counted)
    with pytest.raises(StorageError, match="no such table: keys"):
        view.seen(["evt_1"])
    assert (len(reads), sleeps) == (1, [])  # one read, no retry, no wait
    assert sorted(p.name for p in folder.iterdir()) == ["journal.sqlite3"]


def test_the_journal_records_the_lake_its_rows_were_flushed_into(tmp_path: Path) -> None:
    # reconcile reads it: a journal flushed into another lake must not be taken for a loss
    from kirim_events.journal_index import JournalView, lake_identity

    data = tmp_path / "data"
    home, other = Lake(data), Lake(tmp_path / "other")
    body = testing.encode(testing.kirim_event(event_id="evt_1"))
    with Journal(data) as journal:
        assert journal.flush_target() is None
        journal.flush(other)  # nothing to move: says nothing
        assert journal.flush_target() is None
        journal.append(parse_delivery(body))
        journal.flush(other)
        assert journal.flush_target() == lake_identity(other, data)
        journal.flush(home)  # nothing left to move
        assert journal.flush_target() == lake_identity(other, data)
        # another process wrote another lake meanwhile: the next flush with rows says ours
        with sqlite3.connect(data / "_journal" / "journal.sqlite3") as conn:
            conn.execute("UPDATE meta SET value = 'file:/elsewhere' WHERE key = 'lake'")
        journal.append(parse_delivery(testing.encode(testing.kirim_event(event_id="evt_2"))))
        journal.flush(other)
        assert journal.flush_target() == lake_identity(other, data)
        journal.append(parse_delivery(testing.encode(testing.kirim_event(event_id="evt_3"))))
        journal.flush(home)
    assert JournalView(data).flush_target() == "data folder"
    # the data folder is the data folder wherever it is (moved, copied, mounted elsewhere)
    moved = tmp_path / "moved"
    data.rename(moved)
    assert lake_identity(Lake(moved), moved) == "data folder"
    assert lake_identity(Lake(tmp_path / "other"), moved).startswith("file:")
    assert lake_identity(object(), moved) is None


def test_an_s3_lake_is_one_identity_however_its_location_is_written() -> None:
    from types import SimpleNamespace

    from kirim_events.journal_index import lake_identity
    from kirim_events.lake.storage import open_storage

    env = {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    names = {lake_identity(SimpleNamespace(storage=open_storage(uri, env=env)), "/data")
             for uri in ("s3://acme/lake", "s3://acme/lake/", "s3://acme//lake")}  # fmt: skip
    assert names == {"s3:acme/lake"}


def test_a_journal_replaced_under_it_is_refused_and_ordinary_use_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check that catches a deleted journal (test_receiver) must also catch a new file
    put at the path, and must not fire on a relative folder after a change of working
    folder, on a second instance, or on a reopen."""
    monkeypatch.chdir(tmp_path)
    first = Journal("data")  # relative, as the default ./data
    monkeypatch.chdir(tmp_path.parent)  # a daemon's chdir("/"), a notebook's os.chdir
    assert first.append(records(testing.kirim_event(event_id="evt_1"))) == [True]
    with Journal(tmp_path / "data") as second:  # another instance on the same file
        assert second.append(records(testing.kirim_event(event_id="evt_2"))) == [True]
        assert first.append(records(testing.kirim_event(event_id="evt_2"))) == [False]
    first.flush(Lake(tmp_path / "data"))
    first.close()
    with Journal(tmp_path / "data") as again:  # reopened
        assert again.append(records(testing.kirim_event(event_id="evt_3"))) == [True]
        # a new file at the path: a copy, renamed over the open one
        path = again.path
        copy = path.with_name("copy.sqlite3")
        copy.write_bytes(path.read_bytes())
        copy.replace(path)
        with pytest.raises(StorageError, match="deleted, moved or replaced while open"):
            again.append(records(testing.kirim_event(event_id="evt_4")))
        with pytest.raises(StorageError, match="deleted, moved or replaced while open"):
            again.flush(Lake(tmp_path / "data"))


def test_a_new_journals_folders_are_fsynced_into_their_parents(
    tmp_path: Path, synced: list[Path]
) -> None:
    # SQLite syncs _journal/ and its own files, never DATA/ above it: after a power loss a
    # first start's whole journal could vanish, webhooks acknowledged to Kirim with it
    data = tmp_path / "project" / "data"
    Journal(data).close()
    assert {tmp_path, tmp_path / "project", data} <= set(synced)
    # and DATA/ again at each open: a first start may have died before its fsync
    synced.clear()
    Journal(data).close()
    assert data in synced  # each holds a new folder's name


@pytest.mark.parametrize(
    ("version", "message"),
    [("x", "is damaged: its version is 'x', not a number"), ("2", "version 2 is newer")],
)
def test_a_journal_of_an_unreadable_or_newer_version_is_one_clear_error(
    tmp_path: Path, version: str, message: str
) -> None:
    Journal(tmp_path).close()
    with sqlite3.connect(tmp_path / "_journal" / "journal.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (version,))
    conn.close()
    with pytest.raises(StorageError, match=message):
        Journal(tmp_path)


@pytest.mark.parametrize("column", ["attempt", "response_status_code", "n_events"])
def test_a_number_the_lake_cannot_hold_is_refused_at_append_not_at_every_flush(
    tmp_path: Path, column: str
) -> None:
    receipt = {"delivery_id": "d1", "received_at": RECEIVED, "outcome": "new",
               column: 3_000_000_000}  # fmt: skip
    (first,) = records(testing.kirim_event())
    (second,) = records(testing.kirim_event())
    with Journal(tmp_path) as journal:
        with pytest.raises(ValueError, match=f"{column} must be a whole number in int32 range"):
            journal.append([], [receipt])
        with pytest.raises(ValueError, match="attempt must be a whole number in int32 range"):
            journal.append([dataclasses.replace(first, attempt=2**31)])
        journal.append([second], [{**receipt, column: 2**31 - 1}])
        report = journal.flush(Lake(tmp_path))  # a refused row would have failed it
    assert (report.events, report.receipts) == (1, 1)


def test_a_data_folder_inside_a_lakes_own_folders_is_refused(tmp_path: Path) -> None:
    # collect --data DATA/events made a journal and a lake there: its events were not in
    # DATA's lake, and DuckDB on DATA/events/**/*.parquet failed (Hive partition mismatch)
    with Journal(tmp_path) as journal:
        journal.append(records(testing.kirim_event()))
        journal.flush(Lake(tmp_path))
    for inside in ("events", "deliveries/date=2026-05-23", "_journal", "_state"):
        with pytest.raises(ConfigError, match=f"inside the {inside.split('/')[0]}/ folder"):
            Journal(tmp_path / inside)
    assert not (tmp_path / "events" / "_journal").exists()
    Journal(tmp_path / "elsewhere").close()  # a folder of its own beside them is fine
    fresh = tmp_path / "fresh"
    Journal(fresh).close()  # a lake known by its journal only (never flushed) counts too
    with pytest.raises(ConfigError, match=f"of the lake at {fresh}"):
        Journal(fresh / "events")


def test_a_receipt_is_new_when_any_record_of_its_delivery_is_new(tmp_path: Path) -> None:
    """A Meta batch that repeats one known status and brings one new one is a ``new``
    delivery: the outcome asks whether *any* record was new, not whether all were."""
    known = records(testing.meta_status("sent", wamid="wamid.A"))
    fresh = records(testing.meta_status("delivered", wamid="wamid.B"))
    lake = Lake(tmp_path)
    with Journal(tmp_path) as j:
        assert j.append(known) == [True]
        assert j.append(known + fresh, [{"delivery_id": "wbd_mixed", "outcome": None}]) == [
            False,
            True,
        ]
        j.flush(lake)
    rows = lake.deliveries().collect()
    assert rows["outcome"].to_list() == ["new"]


def test_dedup_holds_for_groups_larger_than_one_index_lookup(tmp_path: Path) -> None:
    """The index is asked about keys in chunks (SQLite's parameter limit); a group of more
    keys than one chunk holds must find the known ones in every chunk, not only the first."""
    many = [rec for _ in range(2 * CHUNK + 7) for rec in records(testing.kirim_event())]
    with Journal(tmp_path) as j:
        assert j.append(many) == [True] * len(many)
        assert j.append(many) == [False] * len(many)
        assert j.backlog == len(many)


def test_the_write_connection_commits_with_fsync(journal: Journal) -> None:
    """Acknowledged implies durable: that rests on WAL with synchronous=FULL (2): with NORMAL or
    OFF, a commit returns before the WAL is fsync'd and a power loss drops acknowledged
    events. No crash test can show that on a machine that does not lose power, so the
    settings of the very connection that writes are read back."""
    conn = journal._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_forget_keys_forgets_more_keys_than_one_statement_holds(tmp_path: Path) -> None:
    """Reconcile forgets every lost key so that each is stored again when it comes back; the
    deletes go in chunks (SQLite's parameter limit), and every chunk counts."""
    many = [rec for _ in range(2 * CHUNK + 7) for rec in records(testing.kirim_event())]
    keys = [r.event_key for r in many]
    with Journal(tmp_path) as j:
        j.append(many)
        j.forget_keys(keys)
        assert j.seen(keys) == set()
        assert j.append(many) == [True] * len(many)
