"""journal_quarantine: one copy per body and delivery (across processes, and for copies kept
before the keyed names), what reconcile learns from the quarantine, and what it tells."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from waiting import wait_until

from kirim_events.journal_quarantine import quarantine_once, read_quarantine, write_quarantine


def test_kept_deliveries_are_counted_in_a_note_naming_the_first(tmp_path: Path) -> None:
    # Reconcile counted a quarantined delivery as held, silently: the events stayed out of
    # the lake, and no one was told to look at them (a logged warning reached no CLI user)
    first = write_quarantine(
        tmp_path, b"{garbage", {"X-Kirim-Event-Id": "evt_1"}, "invalid_json",
        datetime(2026, 5, 1, 10, tzinfo=UTC),
    )  # fmt: skip
    write_quarantine(
        tmp_path, b"{more", {"X-Kirim-Event-Id": "evt_2"}, "invalid_json",
        datetime(2026, 5, 2, 9, tzinfo=UTC),
    )  # fmt: skip
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept, kept.first, kept.unreadable) == (
        {"evt_1", "evt_2"}, 2, first, [],
    )  # fmt: skip
    (note,) = kept.notes()
    assert note.startswith("2 deliveries are kept in quarantine, not in the lake")
    assert note.endswith(f"the first: {first}")


def test_an_unreadable_description_is_said_not_skipped(tmp_path: Path) -> None:
    body = write_quarantine(
        tmp_path, b"{garbage", {"X-Kirim-Event-Id": "evt_1"}, "invalid_json",
        datetime(2026, 5, 1, 10, tzinfo=UTC),
    )  # fmt: skip
    body.with_suffix(".json").write_text("{torn")
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept, kept.unreadable) == (set(), 1, [body.with_suffix(".json")])
    assert kept.notes()[1].startswith("1 quarantine description(s) could not be read")


def test_an_empty_quarantine_says_nothing(tmp_path: Path) -> None:
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept, kept.first, kept.notes()) == (set(), 0, None, [])


def test_each_write_fsyncs_the_folders_above_its_day(tmp_path: Path, synced: list[Path]) -> None:
    # not only when the day's folder is new: one made by a writer that died before its
    # fsync would otherwise never be made durable
    when = datetime(2026, 5, 1, 9, tzinfo=UTC)
    (tmp_path / "quarantine" / "2026-05-01").mkdir(parents=True)  # made before, by another
    synced.clear()
    write_quarantine(tmp_path, b"{}", {}, "bad_signature", when)
    day = tmp_path / "quarantine" / "2026-05-01"
    assert {tmp_path, tmp_path / "quarantine", day} <= set(synced)


def _kept(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "quarantine").rglob("*.body"))


def test_retries_of_one_delivery_are_kept_once_and_counted(tmp_path: Path) -> None:
    # Kirim retries a delivery up to 8 times (kirim-api.md §3): one bad body became 8
    # copies, and 8 deliveries "kept" for reconcile's note. The last retry comes a day on.
    first = datetime(2026, 5, 1, 10, tzinfo=UTC)
    for attempt, hours in enumerate([0, 0, 0, 0, 0, 1, 7, 31], start=1):
        headers = {
            "X-Kirim-Delivery-Id": "wbd_1",
            "X-Kirim-Event-Id": "evt_1",
            "X-Kirim-Attempt": str(attempt),
            "X-Kirim-Signature": f"t={attempt},v1=ab",
        }
        path = write_quarantine(
            tmp_path, b"{garbage", headers, "invalid_json", first + timedelta(hours=hours)
        )
    assert _kept(tmp_path) == [path]
    assert path.parent.name == "2026-05-01"  # where the first attempt was kept
    meta = json.loads(path.with_suffix(".json").read_text())
    assert (meta["count"], meta["received_at"], meta["last_received_at"]) == (
        8, first.isoformat(), (first + timedelta(hours=31)).isoformat(),
    )  # fmt: skip
    assert meta["headers"]["x-kirim-attempt"] == "1"  # the first one's, its signature too
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept, kept.first) == ({"evt_1"}, 1, path)


def test_another_body_or_delivery_is_kept_apart(tmp_path: Path) -> None:
    when = datetime(2026, 5, 1, 10, tzinfo=UTC)  # one instant: the names differ all the same
    one = {"X-Kirim-Delivery-Id": "wbd_1", "X-Kirim-Event-Id": "evt_1"}
    other = {"X-Kirim-Delivery-Id": "wbd_2", "X-Kirim-Event-Id": "evt_2"}
    paths = [
        write_quarantine(tmp_path, b"{garbage", one, "invalid_json", when),
        write_quarantine(tmp_path, b"{garbagE", one, "invalid_json", when),  # another body
        write_quarantine(tmp_path, b"{garbage", other, "invalid_json", when),  # a replay
        write_quarantine(tmp_path, b"{garbage", {}, "invalid_json", when),  # no ids at all
    ]
    assert _kept(tmp_path) == sorted(paths)
    assert sorted(p.read_bytes() for p in paths) == sorted([b"{garbage"] * 3 + [b"{garbagE"])
    assert write_quarantine(tmp_path, b"{garbage", {}, "invalid_json", when) == paths[3]
    kept = read_quarantine(tmp_path)
    assert (kept.event_ids, kept.kept) == ({"evt_1", "evt_2"}, 4)


def test_a_copy_whose_description_was_never_written_gets_one_on_a_retry(tmp_path: Path) -> None:
    # a writer killed between the .body and the .json: the retry must not be taken as kept
    # already, or reconcile never learns of it (it reads the .json files)
    headers = {"X-Kirim-Delivery-Id": "wbd_1", "X-Kirim-Event-Id": "evt_1"}
    when = datetime(2026, 5, 1, 10, tzinfo=UTC)
    path = write_quarantine(tmp_path, b"{garbage", headers, "invalid_json", when)
    path.with_suffix(".json").unlink()
    assert write_quarantine(tmp_path, b"{garbage", headers, "invalid_json", when) == path
    assert json.loads(path.with_suffix(".json").read_text())["count"] == 1
    assert read_quarantine(tmp_path).event_ids == {"evt_1"}


def test_a_kept_copy_that_was_altered_is_not_taken_for_the_body(tmp_path: Path) -> None:
    headers = {"X-Kirim-Delivery-Id": "wbd_1"}
    path = write_quarantine(
        tmp_path, b"{garbage", headers, "invalid_json", datetime(2026, 5, 1, 10, tzinfo=UTC)
    )
    path.write_bytes(b"{garb")  # cut short by a full disk, an editor
    again = write_quarantine(
        tmp_path, b"{garbage", headers, "invalid_json", datetime(2026, 5, 1, 11, tzinfo=UTC)
    )
    assert again != path
    assert again.read_bytes() == b"{garbage"


_WRITER = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kirim_events.journal_quarantine import write_quarantine
data, go, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
headers = {"X-Kirim-Delivery-Id": "wbd_1", "X-Kirim-Event-Id": "evt_1"}
Path(sys.argv[4]).touch()  # imported and ready: waiting for the go
while not go.exists():
    time.sleep(0.001)
for _ in range(n):
    write_quarantine(data, b"{garbage", headers, "invalid_json", datetime.now(UTC))
"""


def test_writers_in_separate_processes_keep_one_copy_and_every_count(tmp_path: Path) -> None:
    # Two collectors (or a collector and a backfill) on one data folder: the lock was a
    # thread lock, so both looked, found nothing, and each kept a copy, or both read count
    # n and wrote n + 1, losing one
    data, go = tmp_path / "data", tmp_path / "go"
    n, each = 4, 25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    ready = [tmp_path / f"ready-{i}" for i in range(n)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(data), str(go), str(each), str(ready[i])], env=env
        )
        for i in range(n)
    ]
    # every writer imported and waiting, so that they do start together: a fixed sleep let
    # a slow start (imports on a busy machine) run them one after another, and pass without
    # any race to catch
    wait_until(
        lambda: all(p.exists() for p in ready) or any(w.poll() is not None for w in writers),
        120,
        what="the writers ready",
    )
    assert [w.poll() for w in writers] == [None] * n
    go.touch()
    assert [w.wait(timeout=120) for w in writers] == [0] * n
    (path,) = _kept(data)
    assert json.loads(path.with_suffix(".json").read_text())["count"] == n * each
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


def _legacy_copy(data_dir: Path, body: bytes, headers: dict[str, str], when: datetime) -> Path:
    """A copy as kept before names carried the delivery's key: ``<time>-<sha256 prefix>-
    <8 random hex>``, described without ``count`` (journal_quarantine before 9f43f0c)."""
    digest = hashlib.sha256(body).hexdigest()
    folder = data_dir / "quarantine" / when.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{digest[:16]}-{uuid.uuid4().hex[:8]}.body"
    path.write_bytes(body)
    meta = {
        "reason": "invalid_json",
        "received_at": when.isoformat(),
        "size": len(body),
        "sha256": digest,
        "headers": {k.lower(): v for k, v in headers.items()},
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return path


def test_a_retry_of_a_delivery_kept_before_the_keyed_names_is_counted_in_its_copy(
    tmp_path: Path,
) -> None:
    # kept under a random name before the upgrade, retried after it: one more copy, and
    # reconcile's note counted two deliveries kept
    headers = {"X-Kirim-Delivery-Id": "wbd_1", "X-Kirim-Event-Id": "evt_1"}
    first = datetime(2026, 5, 1, 10, tzinfo=UTC)
    old = _legacy_copy(tmp_path, b"{garbage", headers, first)
    for hours in (1, 7):
        again = write_quarantine(
            tmp_path, b"{garbage", headers, "invalid_json", first + timedelta(hours=hours)
        )
        assert again == old
    assert _kept(tmp_path) == [old]
    meta = json.loads(old.with_suffix(".json").read_text())
    assert (meta["count"], meta["received_at"], meta["last_received_at"]) == (
        3, first.isoformat(), (first + timedelta(hours=7)).isoformat(),
    )  # fmt: skip
    assert read_quarantine(tmp_path).kept == 1


def test_an_old_copy_of_the_same_bytes_for_another_delivery_is_kept_apart(
    tmp_path: Path,
) -> None:
    when = datetime(2026, 5, 1, 10, tzinfo=UTC)
    one = {"X-Kirim-Delivery-Id": "wbd_1", "X-Kirim-Event-Id": "evt_1"}
    old = _legacy_copy(tmp_path, b"{garbage", one, when)
    other = {"X-Kirim-Delivery-Id": "wbd_2", "X-Kirim-Event-Id": "evt_1"}  # a replay
    new = write_quarantine(tmp_path, b"{garbage", other, "invalid_json", when)
    assert _kept(tmp_path) == sorted([old, new])
    assert "count" not in json.loads(old.with_suffix(".json").read_text())  # untouched
    assert read_quarantine(tmp_path).kept == 2


def test_a_body_kept_without_its_description_is_described_by_the_next_history_walk(
    tmp_path: Path,
) -> None:
    # quarantine_once took any copy of the bytes for kept: one whose writer died before
    # its .json stayed without one for ever, and reconcile (which reads the .json files)
    # never counted it as held
    headers = {"X-Kirim-Delivery-Id": "wbd_1", "X-Kirim-Event-Id": "evt_1"}
    when = datetime(2026, 5, 1, 10, tzinfo=UTC)
    path = write_quarantine(tmp_path, b"{garbage", headers, "invalid_json", when)
    path.with_suffix(".json").unlink()
    assert quarantine_once(tmp_path, b"{garbage", headers, "invalid_json", when) is True
    assert _kept(tmp_path) == [path]
    assert read_quarantine(tmp_path).event_ids == {"evt_1"}
    # once described, the same bytes are kept: nothing written, nothing counted
    other = {"X-Kirim-Delivery-Id": "wbd_2", "X-Kirim-Event-Id": "evt_1"}
    assert quarantine_once(tmp_path, b"{garbage", other, "invalid_json", when) is False
    assert json.loads(path.with_suffix(".json").read_text())["count"] == 1


@pytest.mark.parametrize("day_left", ["2026-05-01", "2026-04-20"], ids=["same day", "older day"])
def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(
    tmp_path: Path, day_left: str
) -> None:
    # killed before its rename, a writer left `.<name>.<random>.tmp` (up to --max-body
    # bytes) that nothing removed. A retry of its delivery comes in seconds, to that folder;
    # or never (its retries ran out, or came on another day): one in an old day's folder
    # must not stay for good either
    day = tmp_path / "quarantine" / day_left
    day.mkdir(parents=True)
    left = day / ".20260501T100000000000Z-0123456789abcdef-01234567.body.0123456789ab.tmp"
    left.write_bytes(b"{garb")
    kept = day / "20260420T090000000000Z-fedcba9876543210-76543210.body"
    kept.write_bytes(b"{kept")  # a kept copy, not a temporary file: stays
    when = datetime(2026, 5, 1, 10, 0, 5, tzinfo=UTC)
    path = write_quarantine(tmp_path, b"{garbage", {"X-Kirim-Delivery-Id": "wbd_1"}, "x", when)
    assert not left.exists()
    assert kept.read_bytes() == b"{kept"
    assert path.parent.name == "2026-05-01"
    assert path.exists()
    assert path.with_suffix(".json").exists()
