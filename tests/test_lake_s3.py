"""The same lake on S3-compatible storage, against moto's threaded server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from motos3 import iam_client, moto_s3, s3_client
from test_lake import T0, ev
from waiting import wait_until

import kirim_events as ke
from kirim_events.lake.compact import CompactionReport
from kirim_events.lake.storage import Entry


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with moto_s3() as (env, _server):
        yield env


def _keys(env: dict[str, str], prefix: str) -> list[str]:
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_s3_round_trip_with_two_writers_and_compaction(s3_env: dict[str, str]) -> None:
    uri = "s3://lake/team/events-lake"
    one = ke.Lake(uri, env=s3_env, writer_id="machine1")
    two = ke.Lake(uri, env=s3_env, writer_id="machine2")
    one.write_events([ev("a", payload="a1"), ev("b", type="message.status")])
    two.write_events([ev("a", payload="a0", received=T0), ev("c", occurred=T0 + timedelta(1))])
    one.write_deliveries([{"delivery_id": "d1", "attempt": 1, "received_at": T0}])

    keys = _keys(s3_env, "team/events-lake/events/")
    assert any("/type=message.status/date=2026-05-01/w-" in k for k in keys)
    assert any(k.endswith("-machine2.parquet") for k in keys)
    assert not any("_tmp" in k for k in _keys(s3_env, "team/events-lake/"))

    frame = one.events().sort("event_key").collect()
    assert frame["event_key"].to_list() == ["a", "b", "c"]
    assert frame.filter(frame["event_key"] == "a")["payload"].item() == "a0"
    assert one.events("message.status").collect().height == 1
    assert one.sql("select count(*) from events").fetchall() == [(3,)]
    assert one.sql("select count(*) from deliveries").fetchall() == [(1,)]

    report = two.compact()
    assert report.duplicates_removed == 1
    reopened = ke.Lake(uri, env=s3_env)
    assert sorted(reopened.events().collect()["event_key"]) == ["a", "b", "c"]
    assert reopened.stats()["clean"].all()
    assert reopened.as_of(T0).events().collect().height == 2

    # Any Hive-Parquet engine reads the compacted lake: here pyarrow's own dataset reader.
    fs = pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=s3_env["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
    )
    plain = pads.dataset(
        "lake/team/events-lake/events", filesystem=fs, format="parquet", partitioning="hive"
    ).to_table()
    assert sorted(plain.column("event_key").to_pylist()) == ["a", "b", "c"]
    assert set(plain.column("type").to_pylist()) == {"message.created", "message.status"}


def test_s3_location_errors_are_clear(s3_env: dict[str, str]) -> None:
    with pytest.raises(ke.ConfigError, match="no bucket"):
        ke.Lake("s3:///x", env=s3_env)
    with pytest.raises(ke.ConfigError, match="unsupported"):
        ke.Lake("gs://bucket/x", env=s3_env)
    missing = ke.Lake("s3://no-such-bucket/x", env=s3_env)
    # a write, worded as any failed S3 request is (a read's, boto3's): one line, what to check
    said = (
        r"^S3 failed a \w+ request for the lake at s3://no-such-bucket/x \(NO_SUCH_BUCKET: "
        r"The specified bucket does not exist.*\): check the bucket, AWS_REGION and "
        r"AWS_ENDPOINT_URL$"
    )
    with pytest.raises(ke.StorageError, match=said) as failed:
        missing.write_events([ev("a")])
    assert "\n" not in str(failed.value)
    # read, a mistyped bucket answered zero rows, as a missing local folder must not
    no_bucket = "no lake at s3://no-such-bucket/x: the bucket no-such-bucket does not exist"
    for read in (missing.events, missing.message_timelines, missing.span, missing.compact):
        with pytest.raises(ke.LakeError, match=no_bucket):
            read()
    with pytest.raises(ke.LakeError, match=no_bucket):
        missing.sql("select count(*) from events")


def test_s3_compaction_lease_stops_a_second_compactor(s3_env: dict[str, str]) -> None:
    clock = [1_900_000_000.0]
    lake = ke.Lake("s3://lake/leased", env=s3_env, now=lambda: clock[0])
    lake.write_events([ev("a"), ev("a", received=T0 + timedelta(1))])
    other = ke.Lake("s3://lake/leased", env=s3_env, now=lambda: clock[0])
    errors: list[Exception] = []

    def hook(step: str) -> None:
        if step == "planned" and not errors:
            try:
                other.compact()
            except ke.LakeError as exc:
                errors.append(exc)

    lake.compact(hook=hook)
    assert len(errors) == 1
    assert "holds the lease" in str(errors[0])
    assert not any(k.endswith("compact.lease") for k in _keys(s3_env, "leased/"))

    # A compactor that died leaves its lease; it lapses after ten minutes.
    lake.storage.publish(
        "_state/compact.lease", b'{"owner": "dead", "until": %d}' % (clock[0] + 600)
    )
    lake.write_events([ev("b")])
    with pytest.raises(ke.LakeError, match="holds the lease"):
        lake.compact()
    clock[0] += 601
    assert lake.compact().partitions == 1
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b"]


def test_a_compaction_whose_lease_was_taken_over_stops_and_loses_nothing(
    s3_env: dict[str, str],
) -> None:
    """A run that held its lease past LEASE_SECONDS (one huge group, a stalled machine)
    while the next scheduled run took the lake over: it must stop before publishing, or
    its manifest would count files the other run deleted (every event was lost so)."""
    clock = [1_900_000_000.0]
    uri = "s3://lake/lease-takeover"

    def lake(writer: str) -> ke.Lake:
        return ke.Lake(uri, env=s3_env, now=lambda: clock[0], writer_id=writer)

    writer = lake("writer")
    writer.write_events([ev("a"), ev("b")])
    writer.write_events([ev("c")])
    other: list[CompactionReport] = []

    def slow(step: str) -> None:
        if step == "file_written" and not other:
            clock[0] += 601  # past the lease: the next run thinks this one died
            writer.write_events([ev("d")])
            other.append(lake("cron").compact())

    with pytest.raises(ke.LakeError, match="took over the lease"):
        lake("slow").compact(hook=slow)
    assert other[0].files_deleted > 0  # the other run did compact meanwhile
    assert sorted(lake("reader").events().collect()["event_key"]) == ["a", "b", "c", "d"]
    lake("next").compact(full=True)
    assert sorted(lake("reader").events().collect()["event_key"]) == ["a", "b", "c", "d"]
    assert not _keys(s3_env, "lease-takeover/_state/compact.lease")  # released by its owner


def test_the_lease_is_renewed_while_one_group_takes_long(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from kirim_events.lake import lock

    monkeypatch.setattr(lock, "RENEW_SECONDS", 0.05)
    lake = ke.Lake("s3://lake/lease-renewal", env=s3_env)
    lake.write_events([ev("a")])
    seen: list[float] = []

    def until() -> float:
        return float(json.loads(lake.storage.read_bytes("_state/compact.lease") or b"")["until"])

    def long_group(step: str) -> None:
        # the group goes on until the lease has been renewed (by the run's own thread)
        if step == "planned":
            seen.append(until())
            wait_until(lambda: until() != seen[0], interval=0.01, what="a renewed lease")
            seen.append(until())

    lake.compact(hook=long_group)
    assert seen[1] > seen[0]  # renewed forward in the meantime
    assert lake.storage.read_bytes("_state/compact.lease") is None


def test_one_failed_read_of_the_lease_does_not_stop_a_healthy_compaction(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kirim_events.errors import StorageError
    from kirim_events.lake import lock

    monkeypatch.setattr(lock.time, "sleep", lambda _s: None)
    lake = ke.Lake("s3://lake/lease-blip", env=s3_env)
    lake.write_events([ev("a")])
    lake.write_events([ev("b")])
    # the lease is read with its ETag (read_tagged), for the conditional writes
    real = lake.storage.read_tagged
    reads = [0]

    def flaky(rel: str) -> tuple[bytes, str] | None:
        if rel == "_state/compact.lease":
            reads[0] += 1
            if reads[0] == 2:  # the run's own check before it publishes
                raise StorageError("lake storage failed to read: 503 SlowDown")
        return real(rel)

    monkeypatch.setattr(lake.storage, "read_tagged", flaky)
    assert lake.compact().partitions == 1
    assert reads[0] >= 3  # the failed read was tried again
    assert sorted(lake.events().collect()["event_key"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("uri", "env", "says"),
    [
        ("s3://lake/q#frag", {}, "'?' or '#'"),
        ("s3://lake/a?b", {}, "'?' or '#'"),
        ("s3://lake/x", {"AWS_ENDPOINT_URL": "localhost:45123"}, "AWS_ENDPOINT_URL must start"),
        # pyarrow reads credentials in the URI: refused, and never shown
        ("s3://AKIAUSER:S3CRETKEY@lake/p", {}, "must not carry credentials"),
        ("s3://AKIAUSER:S3C/RETKEY@lake/p", {}, "must not carry credentials"),
        ("s3://lake/p?X-Amz-Security-Token=S3CRETKEY", {}, "'?' or '#'"),
        ("s3://lake/x", {"AWS_ENDPOINT_URL": "http://minio:S3CRETKEY@host"}, "user name"),
        ("s3://lake/x", {"AWS_ENDPOINT_URL": "minio:S3CRETKEY@host"}, "user name"),
    ],
)
def test_s3_locations_and_endpoints_that_would_be_misread_are_refused(
    uri: str, env: dict[str, str], says: str
) -> None:
    with pytest.raises(ke.ConfigError, match=says) as caught:
        ke.Lake(uri, env={"AWS_REGION": "us-east-1", **env})
    assert "S3CRET" not in str(caught.value)


def test_an_object_replaced_while_it_is_read_is_read_again(s3_env: dict[str, str]) -> None:
    # pyarrow reads an S3 object as a HEAD then ranged GETs: a lease renewed in between was
    # read as the new lease cut at the old size (invalid JSON; the lease test failed so)
    import io
    from typing import Any

    lake = ke.Lake("s3://lake/torn", env=s3_env)
    lake.storage.publish("_state/note.json", b'{"until": 1796030885.8474932}')
    real = lake.storage.fs

    class TornOnce:
        def __init__(self) -> None:
            self.reads = 0

        def open_input_stream(self, path: str) -> Any:
            self.reads += 1
            if self.reads == 1:  # the new object, cut at the old one's size
                return io.BytesIO(b'{"until": 1796030885.847493')
            return real.open_input_stream(path)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    torn = TornOnce()
    lake.storage.fs = torn  # type: ignore[assignment]
    assert lake.storage.read_bytes("_state/note.json") == b'{"until": 1796030885.8474932}'
    assert torn.reads == 2


def test_a_prefix_holding_other_things_is_not_an_s3_lake(s3_env: dict[str, str]) -> None:
    """As with a local folder: a prefix one level off read as an empty lake, every helper
    answering zero rows."""
    ke.Lake("s3://lake/off/lake", env=s3_env).write_events([ev("a")])
    above = ke.Lake("s3://lake/off", env=s3_env)
    for read in (above.events, above.message_timelines):
        with pytest.raises(ke.LakeError, match="s3://lake/off is not a kirim-events lake") as err:
            read()
        assert str(err.value).endswith("did you mean s3://lake/off/lake?")
    with pytest.raises(ke.LakeError, match="holds type=") as err:
        ke.Lake("s3://lake/off/lake/events", env=s3_env).events()
    assert "did you mean" not in str(err.value)

    # a new, empty prefix is a new lake; a lake stays one once seen
    assert ke.Lake("s3://lake/off/new", env=s3_env).events().collect().height == 0
    lake = ke.Lake("s3://lake/off/lake", env=s3_env)
    listed: list[str] = []
    list_dir = lake.storage.list_dir

    def counting(rel: str) -> list[Entry]:
        listed.append(rel)
        return list_dir(rel)

    lake.storage.list_dir = counting  # type: ignore[method-assign]
    assert lake.events().collect()["event_key"].to_list() == ["a"]
    assert lake.message_timelines().collect().height == 0
    assert listed.count("") == 1  # the prefix's LIST, paid once per Lake


@pytest.mark.parametrize("prefix", ["a/./b", "a/..", "a//b", "./a"])
def test_a_prefix_with_dot_or_empty_parts_is_refused(s3_env: dict[str, str], prefix: str) -> None:
    """S3 keys are not paths: events written to a/./b landed under a/b (the server
    normalised the PUT) while readers listed a/./b and found none; a//b failed in pyarrow."""
    with pytest.raises(ke.ConfigError, match=r"an empty, '\.' or '\.\.' part"):
        ke.Lake(f"s3://lake/{prefix}", env=s3_env)


def test_a_user_allowed_the_prefix_only_reads_a_new_lake_there(s3_env: dict[str, str]) -> None:
    """The look for a missing bucket (HeadBucket) is denied to a policy limited to one
    prefix: that is no missing bucket, and a new prefix there stays a new, empty lake."""
    import json

    import httpx

    endpoint = s3_env["AWS_ENDPOINT_URL"]
    iam = iam_client(s3_env)
    iam.create_user(UserName="team")
    bucket, objects = "arn:aws:s3:::lake", "arn:aws:s3:::lake/team/*"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket,
                "Condition": {"StringLike": {"s3:prefix": ["team", "team/*"]}},
            },
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": objects},
        ],
    }
    iam.put_user_policy(UserName="team", PolicyName="team", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="team")["AccessKey"]
    env = {
        **s3_env,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    # moto checks credentials and policies from now on, until reset (its settings are global)
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        lake = ke.Lake("s3://lake/team/new", env=env)
        assert lake.events().collect().height == 0
        lake.write_events([ev("a")])
        assert ke.Lake("s3://lake/team/new", env=env).events().collect()["event_key"].to_list() == [
            "a"
        ]
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()


def test_an_s3_lake_answers_every_helper_as_a_local_lake_does(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """The emulator's events, with duplicate and out-of-order copies from two writers, give
    the same rows on S3 as in a folder: events, deliveries, every helper in Polars and in
    ``lake.sql``, ``as_of`` and ``span``, before and after compaction."""
    from datetime import UTC, datetime

    import polars as pl
    from polars.testing import assert_frame_equal
    from test_analytics_support import VIEWS, by_key, in_utc

    from kirim_events.emulator import Emulator, EngineConfig, WorldConfig
    from kirim_events.events import parse_delivery

    # with the `kirim` block, so the views join messages to conversations on both lakes
    emu = Emulator(
        seed=3,
        world=WorldConfig(kirim_block=True),
        engine=EngineConfig(duplicate_rate=0.3, disorder=0.3),
    )
    emu.subscribe("https://example.test/webhooks/kirim")
    records, receipts = [], []
    for i, d in enumerate(emu.iter_deliveries(250)):
        received = datetime.fromtimestamp(d.sent_at + (i * 37) % 900, UTC).replace(microsecond=0)
        records.extend(parse_delivery(d.body, d.headers, received_at=received))
        receipts.append(
            {"delivery_id": d.delivery_id, "attempt": d.attempt, "received_at": received}
        )
    lakes = {"local": ke.Lake(tmp_path), "s3": ke.Lake("s3://lake/same-as-local", env=s3_env)}
    for lake in lakes.values():
        ke.Lake(lake.location, env=s3_env, writer_id="one").write_events(records[::2])
        ke.Lake(lake.location, env=s3_env, writer_id="two").write_events(records)
        lake.write_deliveries(receipts)
    local, s3 = lakes["local"], lakes["s3"]

    def rows(frame: pl.DataFrame, view: str) -> pl.DataFrame:
        return by_key(in_utc(frame), view)

    for phase in ("written", "compacted"):
        assert_frame_equal(
            local.events().collect().drop("ingest_seq").sort("event_key"),
            s3.events().collect().drop("ingest_seq").sort("event_key"),
        )
        assert local.deliveries().collect().height == s3.deliveries().collect().height
        span = s3.span()
        assert span is not None
        assert span == local.span()
        middle = span[0] + (span[1] - span[0]) / 2
        for view in VIEWS:
            pairs = [(local, s3)]
            if phase == "written":  # as_of over copies not yet merged: the harder case
                pairs.append((local.as_of(middle), s3.as_of(middle)))
            for a, b in pairs:
                expected = rows(getattr(a, view)().collect(), view)
                assert expected.height > 0
                assert_frame_equal(expected, rows(getattr(b, view)().collect(), view))
                assert_frame_equal(expected, rows(b.sql(f"select * from {view}").pl(), view))
        local.compact()
        s3.compact()
    assert s3.stats()["clean"].all()


def _folder_markers(env: dict[str, str], prefix: str) -> list[str]:
    """The zero-byte ``folder/`` objects under ``prefix``: pyarrow leaves one in a folder
    whose file it deletes, so that the folder still 'exists'."""
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=prefix)
    return sorted(
        obj["Key"]
        for page in pages
        for obj in page.get("Contents", [])
        if obj["Key"].endswith("/") and obj["Size"] == 0
    )


def test_compaction_leaves_no_folder_markers_in_the_folders_it_empties(
    s3_env: dict[str, str],
) -> None:
    """Each compaction left a zero-byte ``date=.../`` object in every folder it deleted a
    file from, the emptied ones too (and in each change-marker folder), so they piled up
    with the days; markers outside the lake's prefix are not the lake's to delete."""
    client = s3_client(s3_env)
    outside = ["team/markers-lake-other/", "team/markers-lake-other/events/date=2026-05-01/"]
    for key in outside:
        client.put_object(Bucket="lake", Key=key, Body=b"")
    uri = "s3://lake/team/markers-lake"
    lake = ke.Lake(uri, env=s3_env)
    lake.write_events([ev("a", received=T0 + timedelta(hours=1)), ev("b", type="message.status")])
    # the first received copy of "a" is a day later: the 05-01 folder of message.created
    # loses its only row and is emptied by compaction
    lake.write_events([ev("a", occurred=T0 + timedelta(days=1), received=T0)])
    lake.write_deliveries([{"delivery_id": "d1", "attempt": 1, "received_at": T0}])
    before = lake.events().collect().sort("event_key")
    lake.compact()
    emptied = "team/markers-lake/events/type=message.created/date=2026-05-01/"
    assert not [k for k in _keys(s3_env, emptied) if not k.endswith("/")]
    assert _folder_markers(s3_env, "team/markers-lake/") == []
    assert _folder_markers(s3_env, "team/markers-lake-other/") == outside
    after = ke.Lake(uri, env=s3_env)
    assert after.events().collect().sort("event_key").equals(before)
    assert after.sql("select count(*) from events").fetchall() == [(2,)]
    assert after.stats()["clean"].all()
    # the emptied folder takes new files again
    after.write_events([ev("c")])
    after.compact()
    assert sorted(after.events().collect()["event_key"]) == ["a", "b", "c"]
    assert _folder_markers(s3_env, "team/markers-lake/") == []


def test_a_bucket_deleted_after_the_lake_was_read_is_no_lake_not_an_empty_one(
    s3_env: dict[str, str],
) -> None:
    """An S3 lake is looked at once: a bucket deleted since listed as an empty lake, and
    every read (and a read planned again after a vanished file) answered zero rows."""
    client = s3_client(s3_env)
    client.create_bucket(Bucket="doomed")
    lake = ke.Lake("s3://doomed/lake", env=s3_env)
    lake.write_events([ev("a"), ev("b", type="message.status")])
    lake.write_deliveries([{"delivery_id": "d1", "attempt": 1, "received_at": T0}])
    assert lake.events().collect().height == 2  # the lake is seen, and not looked at again
    assert lake.deliveries().collect().height == 1
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="doomed")
    for page in pages:
        for obj in page.get("Contents", []):
            client.delete_object(Bucket="doomed", Key=obj["Key"])
    client.delete_bucket(Bucket="doomed")
    gone = r"no lake at s3://doomed/lake: the bucket doomed does not exist \(it did when"
    reads = (lake.events, lake.deliveries, lake.message_timelines, lake.span)
    for read in reads:
        with pytest.raises(ke.LakeError, match=gone):
            read()
    with pytest.raises(ke.LakeError, match=gone):
        lake.sql("select count(*) from events")
    # an events type not in the lake lists nothing too: no bucket there either
    with pytest.raises(ke.LakeError, match=gone):
        lake.events("message.status").collect()


def test_stats_and_damaged_files_of_a_missing_bucket_say_so_as_the_reads_do(
    s3_env: dict[str, str],
) -> None:
    """``damaged_files()`` answered [] (no damaged file) for a mistyped bucket, and both it
    and ``stats()`` listed a bucket deleted since the lake was first read as an empty lake
    (an empty frame, no damage), where every read says there is no lake there."""
    missing = ke.Lake("s3://no-such-bucket/x", env=s3_env)
    no_bucket = "no lake at s3://no-such-bucket/x: the bucket no-such-bucket does not exist"
    for check in (missing.damaged_files, missing.stats):
        with pytest.raises(ke.LakeError, match=no_bucket):
            check()
    client = s3_client(s3_env)
    client.create_bucket(Bucket="doomed-stats")
    lake = ke.Lake("s3://doomed-stats/lake", env=s3_env)
    lake.write_events([ev("a")])
    assert lake.stats()["rows"].to_list() == [1]  # the lake is seen, and not looked at again
    assert lake.damaged_files() == []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="doomed-stats"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket="doomed-stats", Key=obj["Key"])
    client.delete_bucket(Bucket="doomed-stats")
    gone = r"no lake at s3://doomed-stats/lake: the bucket doomed-stats does not exist \(it did"
    for check in (lake.damaged_files, lake.stats):
        with pytest.raises(ke.LakeError, match=gone):
            check()


def test_a_filesystem_of_the_callers_with_a_path_that_is_not_s3_is_refused(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow names an S3 object ``bucket/key``: ``Lake("lake/team", filesystem=s3)`` wrote
    the lake into ./lake/team on the local disk, the filesystem given silently unused."""
    monkeypatch.chdir(tmp_path)
    endpoint = s3_env["AWS_ENDPOINT_URL"].removeprefix("http://")
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint,
        scheme="http",
        access_key=s3_env["AWS_ACCESS_KEY_ID"],
        secret_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region=s3_env["AWS_REGION"],
    )
    with pytest.raises(ke.ConfigError, match="filesystem= is for an s3://bucket/prefix lake"):
        ke.Lake("lake/own-fs", filesystem=fs)
    # the location it says to write is one that works: not s3://./lake/own-fs (a bucket
    # named ".") for ./lake/own-fs, nor a prefix with a "." or empty part
    for given in ("./lake/own-fs", "lake/./own-fs", "lake//own-fs/", "/lake/own-fs"):
        with pytest.raises(ke.ConfigError) as said:
            ke.Lake(given, filesystem=fs)
        assert str(said.value).endswith("write s3://lake/own-fs)"), str(said.value)
    assert list(tmp_path.iterdir()) == []
    # a local filesystem with a folder is what the folder alone means
    ke.Lake("local", filesystem=pafs.LocalFileSystem()).write_events([ev("a")])
    # and with s3:// the filesystem is used
    ke.Lake("s3://lake/own-fs", filesystem=fs).write_events([ev("a")])
    assert ke.Lake("s3://lake/own-fs", env=s3_env).events().collect().height == 1


def test_an_object_given_for_an_s3_lake_is_refused_naming_the_lake_it_is_in(
    s3_env: dict[str, str],
) -> None:
    """A local file given for a lake is refused; an S3 object's URL (a Parquet file of the
    lake, pasted from the console) read as a new, empty lake: zero rows, no error."""
    lake = ke.Lake("s3://lake/objects", env=s3_env)
    lake.write_events([ev("a")])
    (part,) = [k for k in _keys(s3_env, "objects/events/") if k.endswith(".parquet")]
    with pytest.raises(ke.LakeError, match="is an object, not a lake's prefix") as err:
        ke.Lake(f"s3://lake/{part}", env=s3_env)
    assert str(err.value).endswith("did you mean s3://lake/objects?")
    s3_client(s3_env).put_object(Bucket="lake", Key="misc/notes.txt", Body=b"x")
    notes = r"^s3://lake/misc/notes\.txt is an object, not a lake's prefix$"
    with pytest.raises(ke.LakeError, match=notes):
        ke.Lake("s3://lake/misc/notes.txt", env=s3_env)
    assert ke.Lake("s3://lake/objects", env=s3_env).events().collect().height == 1
    assert ke.Lake("s3://lake/objects-new", env=s3_env).events().collect().height == 0


def test_a_user_allowed_only_below_a_new_lakes_prefix_may_open_it(s3_env: dict[str, str]) -> None:
    """The look for an object at the lake's own key (``team``) is denied to a policy on
    ``team/*``: that is no object, and the new lake opens as before."""
    import json

    import httpx

    endpoint = s3_env["AWS_ENDPOINT_URL"]
    iam = iam_client(s3_env)
    iam.create_user(UserName="below")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::lake"},
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": "arn:aws:s3:::lake/below/*",
            },
        ],
    }
    iam.put_user_policy(UserName="below", PolicyName="below", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="below")["AccessKey"]
    env = {
        **s3_env,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        lake = ke.Lake("s3://lake/below", env=env)
        lake.write_events([ev("a")])
        assert ke.Lake("s3://lake/below", env=env).events().collect().height == 1
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
