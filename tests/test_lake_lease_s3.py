"""The S3 compaction lease with conditional writes: exclusive even for two compactions that
start at the same instant (both read "free", then both write), and its best-effort fallback
where conditional writes are not available. Against moto's threaded server on loopback."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs
import pytest
from motos3 import moto_s3, s3_client
from test_lake import ev

import kirim_events as ke
from kirim_events.lake.compact import CompactionReport
from kirim_events.lake.lock import _Lease

LEASE = "_state/compact.lease"
T = 1_900_000_000.0


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with moto_s3() as (env, _server):
        yield env


def _lease_record(env: dict[str, str], prefix: str) -> dict[str, Any] | None:
    client = s3_client(env)
    try:
        body = client.get_object(Bucket="lake", Key=f"{prefix}/{LEASE}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    record: dict[str, Any] = json.loads(body)
    return record


def _race(monkeypatch: pytest.MonkeyPatch, *runs: Callable[[], object]) -> list[object]:
    """Run each in a thread; every lease's first read (the one its take() makes) waits until
    all have read, so all see the same lease before any writes: the same-instant start.
    Returns each run's result or the exception it raised.

    The writes then go one at a time: moto checks a condition and stores the object in two
    steps, not atomically as S3 does, so two PUTs at once could both pass its check."""
    barrier = threading.Barrier(len(runs), timeout=60)
    real, real_publish = _Lease._record, _Lease._publish
    waited: set[int] = set()
    one_at_a_time = threading.Lock()

    def publish_alone(self: _Lease, *args: Any) -> Any:
        with one_at_a_time:
            return real_publish(self, *args)

    def read_then_wait(self: _Lease) -> Any:
        seen = real(self)
        if id(self) not in waited:
            waited.add(id(self))
            barrier.wait()
        return seen

    outcomes: list[object] = [None] * len(runs)

    def run(i: int) -> None:
        try:
            outcomes[i] = runs[i]()
        except Exception as exc:
            outcomes[i] = exc

    with monkeypatch.context() as patch:
        patch.setattr(_Lease, "_record", read_then_wait)
        patch.setattr(_Lease, "_publish", publish_alone)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(runs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(waited) == len(runs)  # each did read the lease before any wrote
    return outcomes


def test_two_compactions_starting_at_the_same_instant_one_runs_the_other_stops(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = "s3://lake/race-free"
    writer = ke.Lake(uri, env=s3_env, writer_id="w")
    writer.write_events([ev("a"), ev("b")])
    writer.write_events([ev("a"), ev("c")])
    one = ke.Lake(uri, env=s3_env, writer_id="one")
    two = ke.Lake(uri, env=s3_env, writer_id="two")

    outcomes = _race(monkeypatch, one.compact, two.compact)

    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 1, outcomes
    assert isinstance(errors[0], ke.LakeError)
    assert "took the lease at the same moment" in str(errors[0])
    assert "renewed too late" not in str(errors[0])
    report = next(o for o in outcomes if not isinstance(o, Exception))
    assert isinstance(report, CompactionReport)
    assert report.duplicates_removed == 1
    assert sorted(ke.Lake(uri, env=s3_env).events().collect()["event_key"]) == ["a", "b", "c"]
    assert _lease_record(s3_env, "race-free") is None  # the winner released it; the loser
    # never held it, so deleted nothing of the winner's while it ran


def test_an_expired_lease_is_taken_over_by_exactly_one_of_two(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = ke.Lake("s3://lake/race-expired", env=s3_env).storage
    storage.publish(LEASE, json.dumps({"owner": "dead", "until": T - 1}).encode())
    a, b = (_Lease(storage, owner, lambda: T) for owner in ("a", "b"))

    outcomes = _race(monkeypatch, a.take, b.take)

    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 1, outcomes
    assert isinstance(errors[0], ke.LakeError)
    assert "took the lease at the same moment" in str(errors[0])
    winner = "a" if outcomes[0] is None else "b"
    record = _lease_record(s3_env, "race-expired")
    assert record is not None
    assert record == {"owner": winner, "until": T + 600}
    # the winner holds it: it renews, and releases it
    (a if winner == "a" else b).check_once()
    (a if winner == "a" else b).release()
    assert _lease_record(s3_env, "race-expired") is None


def test_an_unreadable_lease_is_replaced_by_exactly_one_of_two(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = ke.Lake("s3://lake/race-garbled", env=s3_env).storage
    storage.publish(LEASE, b'{"owner": "torn", "unt')
    a, b = (_Lease(storage, owner, lambda: T) for owner in ("a", "b"))

    outcomes = _race(monkeypatch, a.take, b.take)

    assert sum(isinstance(o, ke.LakeError) for o in outcomes) == 1, outcomes
    record = _lease_record(s3_env, "race-garbled")
    assert record is not None
    assert record["owner"] == ("a" if outcomes[0] is None else "b")


def _taken_then_replaced_after_read(
    s3_env: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> _Lease:
    """A lease taken by "mine", whose next read is followed at once by another compaction
    writing its own lease ("theirs", until T + 1200) over it."""
    storage = ke.Lake(f"s3://lake/{name}", env=s3_env).storage
    mine = _Lease(storage, "mine", lambda: T)
    mine.take()
    theirs = json.dumps({"owner": "theirs", "until": T + 1200}).encode()
    real = mine._record

    def replaced_after_read() -> Any:
        seen = real()
        storage.publish(LEASE, theirs)
        return seen

    monkeypatch.setattr(mine, "_record", replaced_after_read)
    return mine


def test_a_renewal_fails_when_the_lease_was_replaced_after_it_was_read(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal reads its own lease, then another compaction (which thought this one
    dead) replaces it before the renewal writes: the renewal must not overwrite it."""
    mine = _taken_then_replaced_after_read(s3_env, "renew-replaced", monkeypatch)
    with pytest.raises(ke.LakeError, match="took over the lease"):
        mine.check_once()
    monkeypatch.undo()
    assert _lease_record(s3_env, "renew-replaced") == {"owner": "theirs", "until": T + 1200}
    mine.release()  # not ours any more: left alone
    assert _lease_record(s3_env, "renew-replaced") == {"owner": "theirs", "until": T + 1200}


def test_a_release_leaves_a_lease_replaced_after_it_was_read(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = _taken_then_replaced_after_read(s3_env, "release-replaced", monkeypatch)
    mine.release()
    assert _lease_record(s3_env, "release-replaced") == {"owner": "theirs", "until": T + 1200}


def test_a_put_retried_after_its_answer_was_lost_still_holds_the_lease(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto retries a PUT whose answer was lost: the retry fails the If-None-Match that its
    own first attempt made false. The lease is this run's all the same."""
    from kirim_events.lake.s3failures import ConditionFailed

    storage = ke.Lake("s3://lake/lost-answer", env=s3_env).storage
    real = storage.put_if

    def written_then_refused(rel: str, data: bytes, *, etag: str | None) -> str:
        real(rel, data, etag=etag)
        raise ConditionFailed("the retry of a PUT that succeeded")

    monkeypatch.setattr(storage, "put_if", written_then_refused)
    mine = _Lease(storage, "mine", lambda: T)
    mine.take()
    assert _lease_record(s3_env, "lost-answer") == {"owner": "mine", "until": T + 600}


def _caller_made_filesystem(env: dict[str, str]) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"],
        endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
    )


def test_without_a_boto3_client_the_lease_is_best_effort_and_says_so(
    s3_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    uri = "s3://lake/no-client"
    lake = ke.Lake(uri, filesystem=_caller_made_filesystem(s3_env), writer_id="w")
    lake.write_events([ev("a")])
    lake.write_events([ev("a"), ev("b")])

    with caplog.at_level(logging.WARNING, logger="kirim_events"):
        report = lake.compact()
    assert report.duplicates_removed == 1
    warnings = [r for r in caplog.records if "best effort" in r.getMessage()]
    assert len(warnings) == 1
    assert "no boto3 client" in warnings[0].getMessage()
    assert report.warnings == [warnings[0].getMessage()]
    assert not lake.storage.conditional_writes()
    assert _lease_record(s3_env, "no-client") is None

    # and it still refuses a compaction that starts while another holds the lease
    lake.storage.publish(LEASE, json.dumps({"owner": "x", "until": 4e9}).encode())
    with pytest.raises(ke.LakeError, match="holds the lease"):
        lake.compact()


def _answer(
    client: Any,
    status: int = 501,
    code: str = "NotImplemented",
    methods: tuple[str, ...] = ("PUT", "DELETE"),
) -> list[str]:
    """Make ``client``'s requests of ``methods`` that carry If-None-Match or If-Match get
    this error answer (by default 501 NotImplemented, as stores without conditional writes
    answer). Returns the list the refused requests' methods are appended to."""
    from botocore.awsrequest import AWSResponse

    refused: list[str] = []
    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        "<Message>refused by the test</Message></Error>"
    ).encode()

    class Body:
        def stream(self) -> Iterator[bytes]:
            yield body

    def refuse(request: Any, **_kwargs: Any) -> AWSResponse | None:
        if request.method in methods and (
            "If-None-Match" in request.headers or "If-Match" in request.headers
        ):
            refused.append(request.method)
            return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, Body())
        return None

    client.meta.events.register("before-send.s3", refuse)
    return refused


def test_a_conditional_request_conflict_means_another_compaction_won(
    s3_env: dict[str, str],
) -> None:
    """S3 answers 409 ConditionalRequestConflict to a conditional PUT racing another on the
    same key (moto answers 412 only): the lease is the other's, as for a 412."""
    storage = ke.Lake("s3://lake/conflict", env=s3_env).storage
    refused = _answer(storage._s3_client(), 409, "ConditionalRequestConflict", ("PUT",))
    with pytest.raises(ke.LakeError, match="took the lease at the same moment"):
        _Lease(storage, "mine", lambda: T).take()
    assert refused == ["PUT"]


def test_a_store_answering_501_to_conditions_falls_back_to_best_effort(
    s3_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    uri = "s3://lake/no-conditions"
    lake = ke.Lake(uri, env=s3_env, writer_id="w")
    lake.write_events([ev("a")])
    lake.write_events([ev("a"), ev("b")])
    refused = _answer(lake.storage._s3_client())

    with caplog.at_level(logging.WARNING, logger="kirim_events"):
        report = lake.compact()
    assert refused[0] == "PUT"
    assert report.duplicates_removed == 1
    warnings = [r for r in caplog.records if "best effort" in r.getMessage()]
    assert len(warnings) == 1
    assert "does not implement conditional writes" in warnings[0].getMessage()
    assert report.warnings == [warnings[0].getMessage()]  # for the CLI to show, once
    assert _lease_record(s3_env, "no-conditions") is None  # released all the same
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b"]


def test_a_store_refusing_only_a_conditional_delete_still_releases_the_lease(
    s3_env: dict[str, str],
) -> None:
    storage = ke.Lake("s3://lake/no-conditional-delete", env=s3_env).storage
    mine = _Lease(storage, "mine", lambda: T)
    mine.take()
    refused = _answer(storage._s3_client(), methods=("DELETE",))
    mine.release()
    assert refused == ["DELETE"]
    assert _lease_record(s3_env, "no-conditional-delete") is None


def test_without_a_client_one_failed_read_of_the_lease_does_not_stop_a_compaction(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best-effort lease reads through pyarrow (read_bytes): its blips are tried again
    as the conditional lease's are (tests/test_lake_s3.py)."""
    from kirim_events.errors import StorageError
    from kirim_events.lake import lock

    monkeypatch.setattr(lock.time, "sleep", lambda _s: None)
    lake = ke.Lake("s3://lake/no-client-blip", filesystem=_caller_made_filesystem(s3_env))
    lake.write_events([ev("a")])
    lake.write_events([ev("b")])
    real = lake.storage.read_bytes
    reads = [0]

    def flaky(rel: str) -> bytes | None:
        if rel == LEASE:
            reads[0] += 1
            if reads[0] == 2:  # the run's own check before it publishes
                raise StorageError("lake storage failed to read: 503 SlowDown")
        return real(rel)

    monkeypatch.setattr(lake.storage, "read_bytes", flaky)
    assert lake.compact().partitions == 1
    assert reads[0] >= 3
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b"]


def test_a_boto3_too_old_for_conditional_writes_falls_back_to_best_effort(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The s3 extra allows a boto3 from before S3's conditional writes: its botocore refuses
    IfNoneMatch / IfMatch before sending anything. That is no storage failure."""
    from botocore.exceptions import ParamValidationError

    lake = ke.Lake("s3://lake/old-boto", env=s3_env, writer_id="w")
    lake.write_events([ev("a")])
    lake.write_events([ev("a"), ev("b")])
    client = lake.storage._s3_client()
    real_put, real_delete = client.put_object, client.delete_object
    refused: list[str] = []

    def old(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            for name in ("IfNoneMatch", "IfMatch"):
                if name in kwargs:
                    refused.append(name)
                    raise ParamValidationError(report=f"Unknown parameter in input: {name!r}")
            return real(**kwargs)

        return call

    monkeypatch.setattr(client, "put_object", old(real_put))
    monkeypatch.setattr(client, "delete_object", old(real_delete))
    with caplog.at_level(logging.WARNING, logger="kirim_events"):
        assert lake.compact().duplicates_removed == 1
    assert refused[0] == "IfNoneMatch"
    warnings = [r for r in caplog.records if "best effort" in r.getMessage()]
    assert len(warnings) == 1
    assert "this boto3 cannot send them" in warnings[0].getMessage()
    assert _lease_record(s3_env, "old-boto") is None


def test_threads_asking_for_the_client_at_once_get_one_made_from_a_session_of_its_own(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client was made lazily with no lock (threads asking at once each made one, a
    client per thread and its connection pool), from boto3's default session, which is not
    safe to make clients from in two threads at once (two lakes in two threads)."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    storage = ke.Lake("s3://lake/threads", env=s3_env).storage
    start = threading.Barrier(8, timeout=60)
    clients: list[Any] = []

    def ask() -> None:
        start.wait()
        clients.append(storage._s3_client())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clients) == 8
    assert len({id(client) for client in clients}) == 1
    assert boto3.DEFAULT_SESSION is None  # boto3's shared session was not used


def test_a_release_that_fails_is_told_to_the_run_not_only_logged(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DeleteObject denied leaves the lease for ten minutes; the CLI only shows what the
    run's warnings hold (the library logs to no one), so the failure must be there."""
    from kirim_events.errors import StorageError

    storage = ke.Lake("s3://lake/release-denied", env=s3_env).storage
    warnings: list[str] = []
    mine = _Lease(storage, "mine", lambda: T, warnings)
    mine.take()

    def denied(*_args: object, **_kwargs: object) -> None:
        raise StorageError("access denied by S3 to the lake (DeleteObject refused)")

    monkeypatch.setattr(storage, "delete_if", denied)
    monkeypatch.setattr(storage, "delete", denied)
    mine.release()  # not raised: it would hide the error the run may be ending with
    assert len(warnings) == 1
    assert "could not release the compaction lease of s3://lake/release-denied" in warnings[0]
    assert "DeleteObject refused" in warnings[0]
    assert "lapses by itself within 10 minutes" in warnings[0]
    assert _lease_record(s3_env, "release-denied") is not None  # still there, as said


def test_a_run_whose_lease_was_taken_over_leaves_the_full_run_record_to_the_new_owner(
    s3_env: dict[str, str],
) -> None:
    # A full run's record says which types it has not reached; the run that took the lake
    # over (this one's lease lapsed) may be a full run of its own, whose record this one
    # deleted as it ended, so a crash of that run left its types unfinished for good.
    lake = ke.Lake("s3://lake/full-record", env=s3_env)
    lake.write_events([ev("a"), ev("b")])  # one type: no check between groups after it

    def taken_over(step: str) -> None:
        if step == "markers_cleared":
            theirs = {"owner": "theirs", "until": 4_000_000_000.0}
            lake.storage.publish(LEASE, json.dumps(theirs).encode())

    report = lake.compact(full=True, hook=taken_over)
    assert lake.unfinished_full_compaction() is not None
    assert any("is left to it" in w for w in report.warnings), report.warnings
    # the lease lapsed: the next run finds every type reached and clears the record
    lake.storage.publish(LEASE, json.dumps({"owner": "theirs", "until": 0.0}).encode())
    assert lake.compact().finished_full_run is not None
    assert lake.unfinished_full_compaction() is None
