"""The CLI on an S3 lake that S3 refuses, or whose endpoint cannot be reached (moto's server
on loopback): one line naming the lake and what to check, exit 1, no traceback, no
credential shown, and nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback import free_port, serve
from motos3 import iam_client, moto_s3
from test_analytics_report import _records
from test_backfill_kit import World
from test_lake import T0, ev
from typer.testing import CliRunner

import kirim_events as ke
from kirim_events.analytics.report import build_report
from kirim_events.cli import app
from kirim_events.emulator import create_app
from kirim_events.journal import Journal
from kirim_events.lake.storage import _translate, open_storage

runner = CliRunner()

URI = "s3://lake/team"
EVERYTHING = [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]
"""A user S3 refuses every request of (its credentials are good, its policy denies)."""
RECORDS_ONLY = [
    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::lake"},
    {
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
        "Resource": "arn:aws:s3:::lake/team/_state/*",
    },
]
"""A user allowed to list the lake and to read and write its records (``_state/``, the
compaction's lease too) but not its Parquet files: refused by pyarrow's reads of the files,
which the engines make, not by the storage's own calls."""

DENIED = (
    f"error: access denied by S3 to the lake at {URI} ({{request}} refused): check the AWS "
    "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or your "
    f"AWS profile) and that their policy lets them {{action}} {URI}"
)


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's server, and a lake at URI of three events (three files) and a delivery row."""
    with moto_s3() as (env, _server):
        lake = ke.Lake(URI, env=env)
        for key in ("a", "b", "c"):
            lake.write_events([ev(key)])
        lake.write_deliveries([{"delivery_id": "d1", "attempt": 1, "received_at": T0}])
        yield env


@pytest.fixture(scope="module")
def kirim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Kirim (the emulator's API) for reconcile, as KIRIM_* variables."""
    world = World(tmp_path_factory.mktemp("kirim"), seed=3, events=20)
    lo, hi = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in world.window)
    COMMANDS["reconcile"] = ["reconcile", "--since", lo, "--until", hi, "--dry-run"]
    try:
        with serve(create_app(world.emu.store, api_keys=world.emu.api_keys)) as url:
            yield {"KIRIM_KEY": world.emu.api_keys[0].reveal(), "KIRIM_API_URL": url}
    finally:
        world.close()


@contextmanager
def user(
    env: dict[str, str], name: str, statements: list[dict[str, Any]]
) -> Iterator[dict[str, str]]:
    """The AWS environment of a new IAM user with these policy statements; moto checks
    credentials and policies within the block (its setting is global: reset after)."""
    iam = iam_client(env)
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_user_policy(UserName=name, PolicyName="lake", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    endpoint = env["AWS_ENDPOINT_URL"]
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        yield {
            **env,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()


COMMANDS = {
    "report": ["report"],
    "compact": ["compact", "--no-flush"],
    "reconcile": [],  # the emulator's window, set by the kirim fixture
}


def _invoke(name: str, data: Path, aws: dict[str, str], kirim: dict[str, str]) -> Any:
    data.mkdir(exist_ok=True)
    args = [*COMMANDS[name], "--data", str(data), "--lake", URI]
    return runner.invoke(app, args, env={**aws, **kirim})


def _one_line(result: Any, secrets: list[str]) -> str:
    """The command's only line of output, once checked that it ended as a command should
    (exit 1, no exception but the exit: a traceback in the real CLI) and shows no secret."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    for secret in secrets:
        assert secret not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return str(lines[0])


@pytest.mark.parametrize("command", COMMANDS)
def test_a_lake_s3_refuses_every_request_is_one_line_naming_it_and_the_credentials(
    s3: dict[str, str], kirim: dict[str, str], tmp_path: Path, command: str
) -> None:
    with user(s3, f"nobody-{command}", EVERYTHING) as aws:
        result = _invoke(command, tmp_path / "data", aws, kirim)
    secrets = [aws["AWS_SECRET_ACCESS_KEY"], aws["AWS_ACCESS_KEY_ID"], kirim["KIRIM_KEY"]]
    # the lake's version record is the first thing read
    assert _one_line(result, secrets) == DENIED.format(request="HeadObject", action="read")


@pytest.mark.parametrize(
    ("command", "action"),
    [("report", "read"), ("compact", "read, write and delete in"), ("reconcile", "read")],
)
def test_a_lake_whose_files_s3_refuses_is_one_line_not_pyarrows_error(
    s3: dict[str, str], kirim: dict[str, str], tmp_path: Path, command: str, action: str
) -> None:
    """The records are read, the lake planned, and the engines' read of the first Parquet
    file is refused: pyarrow's OSError ("When reading information for key ... AWS Error
    ACCESS_DENIED"), which no command caught, came out of the library."""
    with user(s3, f"records-{command}", RECORDS_ONLY) as aws:
        result = _invoke(command, tmp_path / "data", aws, kirim)
    lease = ke.Lake(URI, env=s3).storage.read_bytes("_state/compact.lease")
    secrets = [aws["AWS_SECRET_ACCESS_KEY"], aws["AWS_ACCESS_KEY_ID"], kirim["KIRIM_KEY"]]
    assert _one_line(result, secrets) == DENIED.format(request="HeadObject", action=action)
    assert lease is None  # the refused compaction let go of the lake
    lake = ke.Lake(URI, env=s3)
    assert sorted(lake.events().collect()["event_key"].to_list()) == ["a", "b", "c"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_s3_endpoint_nobody_answers_at_is_one_line_naming_it(
    s3: dict[str, str], kirim: dict[str, str], tmp_path: Path, command: str
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # a closed loopback port
    aws = {**s3, "AWS_ENDPOINT_URL": endpoint}
    result = _invoke(command, tmp_path / "data", aws, kirim)
    line = _one_line(result, [aws["AWS_SECRET_ACCESS_KEY"], kirim["KIRIM_KEY"]])
    assert line == (
        f"error: could not reach S3 at {endpoint} for the lake at {URI} (HeadObject got no "
        "answer): check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_REGION and the network"
    )


def test_a_journal_flushed_into_a_refused_lake_keeps_its_events(
    s3: dict[str, str], kirim: dict[str, str], tmp_path: Path
) -> None:
    """compact flushes the journal into the lake first: refused there, one line, and the
    events stay in the journal, flushed by the next run."""
    data = tmp_path / "data"
    with Journal(data) as journal:
        journal.append([ev("j1"), ev("j2", occurred=T0 + timedelta(days=1))])
    args = ["compact", "--data", str(data), "--lake", URI]
    with user(s3, "journal", RECORDS_ONLY) as aws:
        result = runner.invoke(app, args, env=aws)
    line = _one_line(result, [aws["AWS_SECRET_ACCESS_KEY"], aws["AWS_ACCESS_KEY_ID"]])
    assert line.startswith(f"error: access denied by S3 to the lake at {URI} (")
    assert line.endswith(f"lets them write {URI}")
    with Journal(data) as journal:
        assert journal.backlog == 2
    again = runner.invoke(app, args, env=s3)
    assert again.exit_code == 0, again.output
    keys = ke.Lake(URI, env=s3).events().collect()["event_key"].to_list()
    assert {"j1", "j2"} <= set(keys)


def test_the_library_says_it_too_and_a_refused_file_is_no_damaged_file(
    s3: dict[str, str],
) -> None:
    """``Lake.damaged_files`` took each file it was refused for damaged, and the CLI's
    damaged-file line would have told the user to move the lake's files out of it."""
    with user(s3, "library", RECORDS_ONLY) as aws:
        lake = ke.Lake(URI, env=aws)
        for read in (lake.damaged_files, lake.stats, lambda: build_report(lake)):
            with pytest.raises(ke.StorageError) as caught:
                read()
            assert (
                str(caught.value)
                == DENIED.format(request="HeadObject", action="read")[len("error: ") :]
            )
            assert aws["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)


def test_the_real_command_prints_one_line_and_no_traceback(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """``python -m kirim_events report`` as a user runs it, refused the lake's files."""
    with user(s3, "shell", RECORDS_ONLY) as aws:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "kirim_events",
                "report",
                "--data",
                str(tmp_path),
                "--lake",
                URI,
            ],
            env={**env, **aws},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 1, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert aws["AWS_SECRET_ACCESS_KEY"] not in run.stderr
    assert run.stderr.strip() == DENIED.format(request="HeadObject", action="read")


def test_a_read_whose_endpoint_stops_answering_after_planning_names_it() -> None:
    """The server goes away between the planning (its LISTs answered) and the engines' read
    of the files: pyarrow's NETWORK_CONNECTION came out of build_report as an OSError."""
    with moto_s3() as (env, server):  # a server of its own, stopped under the read
        uri = "s3://lake/stops"
        statuses = [r for r in _records() if r.type == "message.status"]
        ke.Lake(uri, env=env).write_events(statuses)  # one file, read by the timelines

        class StoppedAfterPlanning(ke.Lake):
            def message_timelines(self) -> Any:
                planned = super().message_timelines()
                server.stop()
                return planned

        lake = StoppedAfterPlanning(uri, env=env)
        with pytest.raises(ke.StorageError) as caught:
            build_report(lake)
    assert str(caught.value) == (
        f"could not reach S3 at {env['AWS_ENDPOINT_URL']} for the lake at {uri} (HeadObject got"
        " no answer): check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_REGION and the"
        " network"
    )


SLOW = "AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "AWS Error UNKNOWN (HTTP status 403) during GetObject operation: AKIAEXAMPLE",
            "access denied by S3 to the lake at s3://lake/team (GetObject refused): check",
        ),
        (
            "AWS Error INVALID_ACCESS_KEY_ID during ListObjectsV2 operation: AKIAEXAMPLE",
            "access denied by S3 to the lake at s3://lake/team (ListObjectsV2 refused): check",
        ),
        (
            f"When reading information for key 'team/x' in bucket 'lake': {SLOW}",
            "S3 failed a GetObject request for the lake at s3://lake/team (SLOW_DOWN: Please"
            " reduce your request rate.): check the bucket, AWS_REGION and AWS_ENDPOINT_URL",
        ),
    ],
)
def test_each_failed_s3_request_is_named_and_a_denial_quotes_nothing(text: str, said: str) -> None:
    storage = open_storage(URI, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})  # no request
    error = storage.s3_error(OSError(text))
    assert error is not None
    assert str(error).startswith(said)
    assert "AKIAEXAMPLE" not in str(error)
    assert storage.s3_error(OSError("[Errno 28] No space left on device")) is None
    assert storage.s3_error(ke.StorageError(text)) is None  # ours already
    assert open_storage("lake").s3_error(OSError(text)) is None  # a local lake's


async def _no_s3(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A web server that is no S3: 404 to every request."""
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"not here"})


@pytest.mark.parametrize("command", ["report", "compact"])
def test_an_endpoint_that_is_no_s3_server_is_named_as_a_place_to_check(
    s3: dict[str, str], kirim: dict[str, str], tmp_path: Path, command: str
) -> None:
    """Every HEAD answered 404 reads as a lake that is not there (pyarrow cannot tell):
    the line said only "nothing kirim-events wrote is there"."""
    with serve(_no_s3) as url:
        result = _invoke(command, tmp_path / "data", {**s3, "AWS_ENDPOINT_URL": url}, kirim)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: no lake at {URI}: nothing kirim-events wrote is there (check the bucket, the"
        " prefix, and that AWS_ENDPOINT_URL is the S3 server holding them)"
    )


READ_ONLY = [
    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::lake"},
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::lake/team/*"},
]
"""A user allowed to read the whole lake and to write nothing: report's user, not compact's."""


def test_compact_by_a_user_who_may_only_read_says_so_as_any_denial(
    s3: dict[str, str], kirim: dict[str, str], tmp_path: Path
) -> None:
    """The compaction's lease is written by boto3 (a conditional PUT), not pyarrow: its
    refusal came as "lake storage failed to write '_state/compact.lease': An error occurred
    (AccessDenied) ...", worded unlike every other denial of the lake."""
    lake = ke.Lake(URI, env=s3)
    before = sorted(lake.events().collect()["event_key"].to_list())
    with user(s3, "reader", READ_ONLY) as aws:
        result = _invoke("compact", tmp_path / "data", aws, kirim)
    secrets = [aws["AWS_SECRET_ACCESS_KEY"], aws["AWS_ACCESS_KEY_ID"], kirim["KIRIM_KEY"]]
    assert _one_line(result, secrets) == DENIED.format(request="PutObject", action="write")
    assert lake.storage.read_bytes("_state/compact.lease") is None
    assert sorted(lake.events().collect()["event_key"].to_list()) == before


def test_the_lease_read_from_an_endpoint_nobody_answers_at_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """boto3's EndpointConnectionError came as "lake storage failed to read ...: Could not
    connect to the endpoint URL ...", unlike pyarrow's NETWORK_CONNECTION."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries: no help on a closed port
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1"}
    env |= {"AWS_ACCESS_KEY_ID": "AKIAHIDDEN0", "AWS_SECRET_ACCESS_KEY": "hidden-secret"}
    storage = open_storage(URI, env=env)
    with pytest.raises(ke.StorageError) as caught:
        storage.read_tagged("_state/compact.lease")
    assert str(caught.value) == (
        f"could not reach S3 at {endpoint} for the lake at {URI} (GetObject got no answer): "
        "check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_REGION and the network"
    )


def test_a_store_echoing_the_credentials_in_its_error_shows_none_of_them(
    s3: dict[str, str],
) -> None:
    """S3's own message is quoted for a failure neither denied nor unanswered; a store (or a
    proxy before it) may echo the request's headers there: the access key id (in the
    Authorization header) and the session token. Blanked out from both boto3's and
    pyarrow's texts, and from the last resort "lake storage failed to ..." line."""
    from botocore.awsrequest import AWSResponse

    token = "FwoGZXIvYXdzEHidden+Session/Token=="
    env = {**s3, "AWS_ACCESS_KEY_ID": "AKIAHIDDENKEYID00000", "AWS_SESSION_TOKEN": token}
    env["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYHIDDENKEY"
    storage = open_storage(URI, env=env)
    secrets = [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], token]
    echoed = " ".join(secrets)  # the secret key is never sent, but a quote is a quote

    class Body:
        def stream(self) -> Iterator[bytes]:
            yield (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidArgument</Code>"
                f"<Message>bad request: {echoed}</Message></Error>"
            ).encode()

    def echo(request: Any, **_kwargs: Any) -> AWSResponse:
        return AWSResponse(request.url, 400, {"Content-Type": "application/xml"}, Body())

    storage._s3_client().meta.events.register("before-send.s3", echo)
    with pytest.raises(ke.StorageError) as caught:
        storage.read_tagged("_state/compact.lease")
    assert str(caught.value) == (
        f"S3 failed a GetObject request for the lake at {URI} (InvalidArgument (HTTP status "
        "400): bad request: *** *** ***): check the bucket, AWS_REGION and AWS_ENDPOINT_URL"
    )
    pyarrows = OSError(f"AWS Error UNKNOWN (HTTP status 400) during GetObject operation: {echoed}")
    error = storage.s3_error(pyarrows)
    assert error is not None
    assert str(error).startswith(f"S3 failed a GetObject request for the lake at {URI} (")
    with pytest.raises(ke.StorageError) as last, _translate(storage, "read", "x"):
        raise OSError(f"When reading information for key 'x': {echoed}")
    for text in (str(caught.value), str(error), str(last.value)):
        assert not [s for s in secrets if s in text], text


def test_compact_tells_its_user_the_lease_is_only_best_effort(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without boto3 (pyarrow alone reaches S3) the lease cannot use conditional writes: the
    library logs a warning, but the package's NullHandler is the only handler under the CLI
    (only collect configures logging), so 'compact' never said it, though docs/cli.md
    promises "a warning says so"."""
    uri = "s3://lake/best-effort"
    lake = ke.Lake(uri, env=s3)
    lake.write_events([ev("a")])
    lake.write_events([ev("a"), ev("b")])
    monkeypatch.setitem(sys.modules, "boto3.session", None)  # import boto3.session fails
    args = ["compact", "--no-flush", "--data", str(tmp_path), "--lake", uri]
    result = runner.invoke(app, args, env=s3)
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert said == [
        f"warning: the compaction lease of {uri} is best effort: no boto3 client for this "
        "lake (boto3 is not installed, or the caller made its filesystem). Two compactions "
        "starting at the same moment could both run; schedule one compactor per lake"
    ]
    assert sorted(ke.Lake(uri, env=s3).events().collect()["event_key"]) == ["a", "b"]


NO_DELETE = [
    {
        "Effect": "Allow",
        "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject"],
        "Resource": "*",
    }
]
"""A user allowed to read and write the lake but not to delete from it."""


def test_a_compaction_that_fails_and_cannot_release_its_lease_says_so(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """A run that fails (here at deleting the files it replaced) and whose lease release
    fails too left the lease for ten minutes with only the run's error shown: the warning
    was in a report never returned, so the next run within ten minutes said "another
    compaction ... holds the lease", as if one were running."""
    uri = "s3://lake/no-delete"
    lake = ke.Lake(uri, env=s3)
    lake.write_events([ev("a")])
    lake.write_events([ev("a"), ev("b")])
    args = ["compact", "--no-flush", "--data", str(tmp_path), "--lake", uri]
    with user(s3, "no-delete", NO_DELETE) as aws:
        result = runner.invoke(app, args, env=aws)
    assert result.exit_code == 1, result.output
    assert aws["AWS_SECRET_ACCESS_KEY"] not in result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"error: access denied by S3 to the lake at {uri} (DeleteObject")
    assert len(lines) == 2, result.output
    assert lines[1].startswith(f"note: could not release the compaction lease of {uri} (")
    assert lines[1].endswith(
        "it lapses by itself within 10 minutes, and a compaction started before then is refused"
    )
    # nothing lost, nothing counted twice by the lake's readers
    assert sorted(ke.Lake(uri, env=s3).events().collect()["event_key"]) == ["a", "b"]


def test_the_note_stays_on_a_read_error_worded_again_by_lake_compact(s3: dict[str, str]) -> None:
    """pyarrow's OSError of a refused read of the files becomes a new StorageError in
    ``Lake.compact``: the note of the lease left behind, added to pyarrow's error, must
    move to the new one."""
    uri = "s3://lake/no-read"
    lake = ke.Lake(uri, env=s3)
    lake.write_events([ev("a")])
    lake.write_events([ev("a")])
    records_no_delete = [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::lake"},
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": "arn:aws:s3:::lake/no-read/_state/*",
        },
    ]
    with user(s3, "no-read", records_no_delete) as aws, pytest.raises(ke.StorageError) as caught:
        ke.Lake(uri, env=aws).compact()
    assert str(caught.value).startswith(f"access denied by S3 to the lake at {uri} (")
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1
    assert notes[0].startswith(f"could not release the compaction lease of {uri} (")


def test_compact_with_an_aws_profile_that_does_not_exist_is_one_line(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """pyarrow reads the lake with the keys given and ignores a missing profile; boto3,
    which the lease is written with, refused to make its client (ProfileNotFound), and
    ``compact`` ended in botocore's traceback."""
    config = tmp_path / "aws-config"
    config.write_text("[profile other]\nregion = us-east-1\n")
    aws = {**s3, "AWS_PROFILE": "no-such-profile", "AWS_CONFIG_FILE": str(config)}
    args = ["compact", "--no-flush", "--data", str(tmp_path), "--lake", URI]
    result = runner.invoke(app, args, env=aws)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.output.strip() == (
        f"error: cannot configure S3 access for the lake at {URI}: The config profile "
        "(no-such-profile) could not be found (check AWS_PROFILE and the AWS config files)"
    )


def test_compact_with_an_aws_setting_boto3_cannot_read_is_one_line(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """botocore reads AWS_MAX_ATTEMPTS with int() as it makes the lease's client: a value
    that is no number ended ``compact`` in a ValueError traceback."""
    aws = {**s3, "AWS_MAX_ATTEMPTS": "three"}
    args = ["compact", "--no-flush", "--data", str(tmp_path), "--lake", URI]
    result = runner.invoke(app, args, env=aws)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.output.startswith(f"error: cannot configure S3 access for the lake at {URI}: ")
    assert result.output.strip().endswith("(check the AWS environment)")


def test_a_compaction_stopped_that_cannot_release_its_lease_says_so(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM (cron's timeout) ends a compaction with one 'interrupted: ...' line
    and exit 130 or 143; when the lease could not be released on the way out, that line
    alone let the next run within ten minutes say "another compaction ... holds the lease"
    as if one were running: the note the run ends with is printed as an error's is."""
    import kirim_events.lake.compact as compaction

    uri = "s3://lake/no-delete-stopped"
    lake = ke.Lake(uri, env=s3)
    lake.write_events([ev("a")])
    lake.write_events([ev("a"), ev("b")])

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as Ctrl-C lands while the lease is held

    monkeypatch.setattr(compaction, "_clean_tmp", stopped)
    args = ["compact", "--no-flush", "--data", str(tmp_path), "--lake", uri]
    with user(s3, "no-delete-stopped", NO_DELETE) as aws:
        result = runner.invoke(app, args, env=aws)
    assert result.exit_code == 130, result.output
    assert aws["AWS_SECRET_ACCESS_KEY"] not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2, result.output
    assert lines[0].startswith("interrupted: nothing is lost")
    assert lines[1].startswith(f"note: could not release the compaction lease of {uri} (")
    assert lines[1].endswith(
        "it lapses by itself within 10 minutes, and a compaction started before then is refused"
    )
    assert sorted(ke.Lake(uri, env=s3).events().collect()["event_key"]) == ["a", "b"]


@pytest.mark.parametrize("command", [["report"], ["compact", "--no-flush"]])
def test_an_objects_url_given_for_lake_exits_2_naming_the_lake(
    s3: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    """A Parquet file's URL pasted for --lake is no lake there (NotALakeError): exit 2, as
    docs/cli.md lists it, with the lake it lies in, and nothing written."""
    from motos3 import s3_client

    client = s3_client(s3)
    listed = client.list_objects_v2(Bucket="lake", Prefix="team/events/")["Contents"]
    part = next(o["Key"] for o in listed if o["Key"].endswith(".parquet"))
    before = sorted(o["Key"] for o in client.list_objects_v2(Bucket="lake")["Contents"])
    args = [*command, "--data", str(tmp_path), "--lake", f"s3://lake/{part}"]
    result = runner.invoke(app, args, env=s3)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: s3://lake/{part} is an object, not a lake's prefix; did you mean {URI}?"
    ]
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket="lake")["Contents"]) == before


def test_a_compaction_failing_on_a_damaged_file_that_cannot_release_its_lease_says_so(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """A damaged file stops a compaction with the engines' error, which the CLI words as
    one line naming the file; the note of a lease left behind was dropped there, so the
    run after the file was moved out said "another compaction ... holds the lease"."""
    from motos3 import s3_client

    uri = "s3://lake/no-delete-damaged"
    lake = ke.Lake(uri, env=s3)
    lake.write_events([ev("a")])
    lake.write_events([ev("a"), ev("b")])
    client = s3_client(s3)
    listed = client.list_objects_v2(Bucket="lake", Prefix="no-delete-damaged/events/")
    part = next(o["Key"] for o in listed["Contents"] if o["Key"].endswith(".parquet"))
    whole = client.get_object(Bucket="lake", Key=part)["Body"].read()
    client.put_object(Bucket="lake", Key=part, Body=whole[: len(whole) // 2])  # truncated
    args = ["compact", "--no-flush", "--data", str(tmp_path), "--lake", uri]
    with user(s3, "no-delete-damaged", NO_DELETE) as aws:
        result = runner.invoke(app, args, env=aws)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2, result.output
    assert lines[0].startswith("error: 1 damaged or foreign Parquet file(s) in the lake at")
    assert lines[1].startswith(f"note: could not release the compaction lease of {uri} (")
