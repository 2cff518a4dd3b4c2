"""``reader.reread`` on an S3 lake (moto's server on loopback): a read is planned again when a
compaction deleted objects it planned, and only then, not when S3 refuses or cannot be
reached."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import httpx
import pytest
from motos3 import iam_client, moto_s3
from racing import compact_with_late_copy, compacted_between_head_and_get, compacted_meanwhile
from test_analytics_report import _records
from test_lake import ev
from typer.testing import CliRunner

import kirim_events as ke
from kirim_events.analytics import notebook
from kirim_events.cli import app
from kirim_events.events import EventRecord
from kirim_events.lake.reader import reread, vanished_file

runner = CliRunner()

Rows = list[tuple[str, datetime]]


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with moto_s3() as (env, _server):
        yield env


def _polars(lake: ke.Lake) -> Rows:
    frame = lake.events().select("event_key", "received_at").sort("event_key").collect()
    return list(frame.iter_rows())


def _duckdb(lake: ke.Lake) -> Rows:
    return lake.sql("select event_key, received_at from events order by 1").fetchall()  # type: ignore[return-value]


READS = pytest.mark.parametrize(
    ("method", "read"), [("events", _polars), ("sql", _duckdb)], ids=["polars", "duckdb"]
)


def _three_files(uri: str, env: dict[str, str]) -> Rows:
    """A lake of one small file per event, and its rows as a read without a race gives them."""
    lake = ke.Lake(uri, env=env)
    for key in ("a", "b", "c"):
        lake.write_events([ev(key)])
    rows = _polars(lake)
    assert [key for key, _ in rows] == ["a", "b", "c"]
    return rows


@READS
def test_an_s3_read_whose_objects_a_compaction_deleted_is_planned_and_run_again(
    s3_env: dict[str, str], method: str, read: Callable[[ke.Lake], Rows]
) -> None:
    uri = f"s3://lake/reread-{method}"
    expected = _three_files(uri, s3_env)
    raced, ran = compacted_meanwhile(method, {1, 2}, ev("a"), env=s3_env)
    lake = raced(uri, env=s3_env)
    # without reread: the race is real (Polars: FileNotFoundError; DuckDB: pyarrow's
    # "Path does not exist ... [errno 2]" inside an InvalidInputException)
    with pytest.raises((FileNotFoundError, duckdb.InvalidInputException)) as caught:
        read(lake)
    assert "does not exist" in str(caught.value)
    assert vanished_file(caught.value)
    assert len(ran) == 1
    # the same rows, the late copies of "a" the compactions wrote dropped (first received)
    assert reread(lambda: read(lake)) == expected
    assert len(ran) == 2  # its first run was raced, its second was not


@READS
def test_an_s3_object_deleted_between_head_and_get_is_planned_and_read_again(
    s3_env: dict[str, str], method: str, read: Callable[[ke.Lake], Rows]
) -> None:
    """pyarrow asks for an object's size, then for its bytes: a compaction deleting it in
    between fails the GET with a 404, a plain OSError (in DuckDB, inside an
    InvalidInputException), not a FileNotFoundError. The Parquet reader's ranged reads word
    it ``RESOURCE_NOT_FOUND``, not ``NO_SUCH_KEY`` (see ``reader._ARROW_GONE``)."""
    uri = f"s3://lake/head-then-get-{method}"
    lake = ke.Lake(uri, env=s3_env)
    lake.write_events([ev("a"), ev("b"), ev("c")])  # one file: the read opens one object
    expected = _polars(lake)
    fs, ran = compacted_between_head_and_get(uri, s3_env, {1, 2}, ev("a"))
    raced = ke.Lake(uri, env=s3_env, filesystem=fs)
    with pytest.raises(
        (OSError, duckdb.InvalidInputException),
        match=r"AWS Error (NO_SUCH_KEY|RESOURCE_NOT_FOUND) during GetObject operation",
    ) as caught:
        read(raced)
    assert not isinstance(caught.value, FileNotFoundError)
    assert vanished_file(caught.value)
    assert len(ran) == 1
    assert reread(lambda: read(raced)) == expected
    assert len(ran) == 2


def _counted(read: Callable[[], Rows]) -> tuple[Callable[[], Rows], list[int]]:
    runs: list[int] = []

    def counting() -> Rows:
        runs.append(1)
        return read()

    return counting, runs


@READS
def test_an_s3_read_denied_its_objects_is_not_run_again(
    s3_env: dict[str, str], method: str, read: Callable[[ke.Lake], Rows]
) -> None:
    """A user allowed to list the lake and read its records but not its Parquet files
    plans the read and is refused at the first file (ACCESS_DENIED): no compaction, and a
    new plan would be refused alike."""
    uri = f"s3://lake/denied-{method}"
    _three_files(uri, s3_env)
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    iam = iam_client(s3_env)
    user = f"lister-{method}"
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::lake"},
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::lake/denied-{method}/_state/*",
            },
        ],
    }
    iam.put_user_policy(UserName=user, PolicyName="state", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    env = {
        **s3_env,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    # moto checks credentials and policies from now on, until reset (its settings are global)
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        lake = ke.Lake(uri, env=env)
        counting, runs = _counted(lambda: read(lake))
        with pytest.raises(
            (OSError, duckdb.InvalidInputException), match="ACCESS_DENIED"
        ) as caught:
            reread(counting)
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert runs == [1]
    assert not vanished_file(caught.value)


@READS
def test_an_s3_read_that_loses_its_connection_is_not_run_again(
    method: str, read: Callable[[ke.Lake], Rows]
) -> None:
    """The server goes away between planning and reading (NETWORK_CONNECTION): no
    compaction; the failure is raised as it is, after one run."""
    with moto_s3() as (env, server):  # a server of its own, stopped under the read
        uri = f"s3://lake/unreachable-{method}"
        _three_files(uri, env)

        class StoppedAfterPlanning(ke.Lake):
            pass

        def planned_then_stopped(self: ke.Lake, *args: object) -> object:
            planned = getattr(super(StoppedAfterPlanning, self), method)(*args)
            server.stop()
            return planned

        setattr(StoppedAfterPlanning, method, planned_then_stopped)
        lake = StoppedAfterPlanning(uri, env=env)
        counting, runs = _counted(lambda: read(lake))
        with pytest.raises(
            (OSError, duckdb.InvalidInputException), match="NETWORK_CONNECTION"
        ) as caught:
            reread(counting)
    assert runs == [1]
    assert not vanished_file(caught.value)


def _statuses_in_one_file(uri: str, env: dict[str, str]) -> list[EventRecord]:
    """Delivery statuses of five messages, in one file: a read of the message timelines
    opens that one object."""
    records = [r for r in _records() if r.type == "message.status"]
    ke.Lake(uri, env=env).write_events(records)
    return records


def test_a_summary_of_an_s3_frame_kept_across_a_compaction_says_to_take_a_new_one(
    s3_env: dict[str, str],
) -> None:
    """A relation over an S3 lake failed with DuckDB's InvalidInputException ("reading the
    Arrow source failed"), not the LakeError saying what to do."""
    uri = "s3://lake/summary-kept"
    records = _statuses_in_one_file(uri, s3_env)
    lake = ke.Lake(uri, env=s3_env)
    expected = notebook.funnel(lake)
    frame, view = lake.message_timelines(), lake.sql("select * from message_timelines")
    compact_with_late_copy(uri, records[0], s3_env)
    for kept in (frame, view):
        with pytest.raises(ke.LakeError, match="take a new one") as caught:
            notebook.funnel(kept)
        assert "compaction" in str(caught.value)
    assert notebook.funnel(lake.message_timelines()).equals(expected)


def test_a_summary_given_an_s3_lake_reads_again_and_says_so_after_three_tries(
    s3_env: dict[str, str],
) -> None:
    """The object deleted between pyarrow's HEAD and GET at each try: an OSError, which the
    summary let through instead of its LakeError."""
    uri = "s3://lake/summary-tries"
    records = _statuses_in_one_file(uri, s3_env)
    expected = notebook.funnel(ke.Lake(uri, env=s3_env))
    assert expected["messages"].to_list() == [5, 3, 2, 1, 3]
    fs, ran = compacted_between_head_and_get(uri, s3_env, {1, 2}, records[0])
    assert notebook.funnel(ke.Lake(uri, env=s3_env, filesystem=fs)).equals(expected)
    assert len(ran) == 2
    fs, ran = compacted_between_head_and_get(uri, s3_env, range(1, 100), records[0])
    with pytest.raises(ke.LakeError, match=r"each of the 3 times .*run it again$") as caught:
        notebook.funnel(ke.Lake(uri, env=s3_env, filesystem=fs))
    assert "GetObject" in str(caught.value)
    assert len(ran) == 3


def test_report_on_s3_says_to_run_it_again_when_every_read_lost_an_object(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kirim-events report --lake s3://...``, an object of each of its three tries deleted
    between pyarrow's HEAD and GET: one line, not the OSError's traceback."""
    import kirim_events.cli.report as report_cli

    uri = "s3://lake/report-tries"
    records = _statuses_in_one_file(uri, s3_env)
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    fs, ran = compacted_between_head_and_get(uri, s3_env, range(1, 100), records[0])
    monkeypatch.setattr(report_cli, "Lake", lambda location: ke.Lake(location, filesystem=fs))
    result = runner.invoke(app, ["report", "--data", str(tmp_path), "--lake", uri])
    assert result.exit_code == 1, result.output
    assert len(ran) == 3
    assert " ".join(result.output.split()) == (
        "error: a file this read planned was deleted by a compaction that finished meanwhile"
        " (nothing is lost); run it again"
    )
    monkeypatch.undo()
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    fs, ran = compacted_between_head_and_get(uri, s3_env, {1}, records[0])
    monkeypatch.setattr(report_cli, "Lake", lambda location: ke.Lake(location, filesystem=fs))
    result = runner.invoke(app, ["report", "--data", str(tmp_path), "--lake", uri])
    assert result.exit_code == 0, result.output
    assert len(ran) == 1
    assert result.output.startswith("5 outbound messages")
