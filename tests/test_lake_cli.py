"""``kirim-events compact``: flushes the journal, compacts; checked through the library."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from test_lake import T0, ev, parquet_files
from typer.testing import CliRunner
from waiting import wait_until

import kirim_events as ke
from kirim_events.cli import app
from kirim_events.cli.compact import _STOPPED, _STOPPED_FULL_UNBEGUN, stopped_saying
from kirim_events.filelock import file_lock
from kirim_events.journal import Journal

runner = CliRunner()


def test_compact_flushes_the_journal_then_compacts(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a", payload="first", received=T0)])
    with Journal(tmp_path) as journal:
        journal.append(
            [ev("b"), ev("c", occurred=T0 + timedelta(days=1))],
            receipts=[{"delivery_id": "d1", "attempt": 1, "received_at": T0, "outcome": "new"}],
        )
    lake.write_events([ev("a", payload="second", received=T0 + timedelta(hours=1))])

    result = runner.invoke(app, ["compact", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "duplicates removed" in result.output

    reopened = ke.Lake(tmp_path)
    events = reopened.events().sort("event_key").collect()
    assert events["event_key"].to_list() == ["a", "b", "c"]
    assert events["payload"][0] == "first"
    assert reopened.deliveries().collect()["delivery_id"].to_list() == ["d1"]
    assert reopened.stats()["clean"].all()
    assert all(p.name.startswith("c-") for p in parquet_files(tmp_path / "events"))
    with Journal(tmp_path) as journal:
        assert journal.flush(reopened).events == 0  # nothing left behind


def test_compact_without_a_journal_and_into_another_lake(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    ke.Lake(other).write_events([ev("a"), ev("a", received=T0 + timedelta(1))])
    result = runner.invoke(
        app, ["compact", "--data", str(tmp_path / "data"), "--lake", str(other), "--full"]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data" / "_journal").exists()  # no journal is created
    assert len(parquet_files(other)) == 1


def test_compact_refuses_a_newer_lake_with_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state/lake.json").write_text(
        '{"format": "kirim-events-lake", "schema_version": 9, "min_reader_version": 9}'
    )
    result = runner.invoke(app, ["compact", "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert "Upgrade kirim-events" in result.output


def test_compact_of_a_folder_one_level_off_is_refused_not_a_report_of_zeros(
    tmp_path: Path,
) -> None:
    lake = ke.Lake(tmp_path / "data")
    lake.write_events([ev("a"), ev("a", received=T0 + timedelta(hours=1))])
    result = runner.invoke(app, ["compact", "--data", str(tmp_path / "data" / "events")])
    assert result.exit_code != 0, result.output
    assert "is not a kirim-events lake" in " ".join(result.output.split())
    assert f"did you mean {tmp_path / 'data'}?" in "".join(result.output.split("\n"))
    assert "Traceback" not in result.output
    assert len(parquet_files(tmp_path / "data" / "events")) == 1  # nothing was touched


def test_a_damaged_file_is_named_in_one_line_and_the_rest_is_kept(tmp_path: Path) -> None:
    """A file that is not Parquet (here: truncated, and one overwritten) makes compact and
    report fail with one line naming it, never a traceback; nothing else is touched."""
    lake = ke.Lake(tmp_path)
    for day in range(3):
        lake.write_events([ev(f"k{day}", occurred=T0 + timedelta(days=day))])
    assert lake.damaged_files() == []
    files = sorted(parquet_files(tmp_path / "events"))
    truncated, overwritten, healthy = files
    truncated.write_bytes(truncated.read_bytes()[:-20])
    overwritten.write_text("garbage")
    before = healthy.read_bytes()

    damaged = lake.damaged_files()
    assert sorted(damaged) == sorted(str(p.relative_to(tmp_path)) for p in (truncated, overwritten))
    for args in (["compact"], ["report"]):
        result = runner.invoke(app, [*args, "--data", str(tmp_path)])
        assert result.exit_code == 1, result.output
        out = " ".join(result.output.split())
        assert "2 damaged or foreign Parquet file(s)" in out
        assert "Traceback" not in out
    assert healthy.read_bytes() == before
    assert sorted(parquet_files(tmp_path / "events")) == files


def test_a_foreign_parquet_file_is_named_and_never_merged_or_deleted(tmp_path: Path) -> None:
    """A Parquet file someone copied into a partition, without the columns every event has:
    its rows read as events full of nulls, and a full compaction dropped them and deleted
    the file (or, with event_key and payload only, merged them for good)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake = ke.Lake(tmp_path)
    lake.write_events([ev("k1"), ev("k2")])
    folder = parquet_files(tmp_path / "events")[0].parent
    other = folder / "from-elsewhere.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), other)
    partial = folder / "partial.parquet"
    pq.write_table(pa.table({"event_key": ["k9"], "payload": ["{}"]}), partial)
    assert sorted(lake.damaged_files()) == sorted(
        str(p.relative_to(tmp_path)) for p in (other, partial)
    )
    copied = folder / "w-my notes.parquet"  # a copy of the lake's own file: every column right
    shutil.copy(parquet_files(tmp_path / "events")[0], copied)
    with pytest.raises(
        ke.LakeError, match=r"3 Parquet file\(s\) in the lake that kirim-events did"
    ):
        lake.compact(full=True)
    result = runner.invoke(app, ["compact", "--full", "--data", str(tmp_path)])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    for path in (other, partial, copied):
        assert str(path.relative_to(tmp_path)) in out
    assert all(path.exists() for path in (other, partial, copied))
    assert len(parquet_files(tmp_path / "events")) == 4  # nothing merged, nothing deleted


def test_a_writer_file_of_an_older_version_is_ours(tmp_path: Path) -> None:
    # writer ids were not checked at first ("host-1"): their files are the lake's own
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("k1")])
    (ours,) = parquet_files(tmp_path / "events")
    older = ours.parent / "w-000000000001-000001-host-1.parquet"
    ours.rename(older)
    result = runner.invoke(app, ["compact", "--full", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert not older.exists()  # merged into the compacted file, as any writer file
    assert lake.events().collect()["event_key"].to_list() == ["k1"]


def test_a_foreign_file_under_one_of_our_names_is_named_and_kept(tmp_path: Path) -> None:
    # Its name passes for a writer's: the rows without event_key give it away, and the error
    # names the file (it used to point at Lake.damaged_files(), which a CLI user cannot call).
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake = ke.Lake(tmp_path)
    lake.write_events([ev("k1")])
    folder = parquet_files(tmp_path / "events")[0].parent
    disguised = folder / "w-000000000001-000001-zzz.parquet"
    pq.write_table(
        pa.table(
            {"event_key": [None], "payload": ["{}"]},
        ),
        disguised,
    )
    result = runner.invoke(app, ["compact", "--full", "--data", str(tmp_path)])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "holds rows without event_key" in out
    assert str(disguised.relative_to(tmp_path)) in out
    assert disguised.exists()
    assert len(parquet_files(tmp_path / "events")) == 2


def test_a_read_error_without_a_damaged_file_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a damaged file is turned into one line: any other engine error may be a bug of
    ours, and its traceback is what a report of it needs."""
    import polars as pl

    import kirim_events.cli.report as report_cli

    def buggy(view: object) -> object:
        return pl.DataFrame({"a": [1]}).lazy().select("no_such_column").collect()

    ke.Lake(tmp_path).write_events([ev("k")])
    monkeypatch.setattr(report_cli, "build_report", buggy)
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert isinstance(result.exception, pl.exceptions.ColumnNotFoundError)


def test_a_mistyped_lake_is_refused_not_read_as_empty(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    typo = str(tmp_path / "lakee")
    for args in (["report"], ["compact"]):
        result = runner.invoke(app, [*args, "--data", str(tmp_path / "data"), "--lake", typo])
        assert result.exit_code == 2, result.output
        assert f"no lake at {typo}" in " ".join(result.output.split())
    # an emptied journal (collect ran and flushed) does not make a typo a lake
    with Journal(tmp_path / "data") as journal:
        journal.append([ev("z")])
        journal.flush(ke.Lake(tmp_path / "data"))
    result = runner.invoke(app, ["compact", "--data", str(tmp_path / "data"), "--lake", typo])
    assert result.exit_code == 2, result.output
    # a journal to flush makes a new lake there: not a typo then
    with Journal(tmp_path / "data") as journal:
        journal.append([ev("a")])
    result = runner.invoke(app, ["compact", "--data", str(tmp_path / "data"), "--lake", typo])
    assert result.exit_code == 0, result.output
    assert ke.Lake(typo).events().collect()["event_key"].to_list() == ["a"]


@pytest.mark.parametrize("command", ["report", "compact"])
@pytest.mark.parametrize(
    "location", ["postgresql://user:PASSW0RD@db.example/x", "https://host.example/x?sig=PASSW0RD"]
)
def test_an_unsupported_lake_location_is_named_without_its_credentials(
    command: str, location: str
) -> None:
    # an export URI at hand (postgresql://user:pass@...) pasted as --lake was echoed whole
    result = runner.invoke(app, [command, "--lake", location])
    assert result.exit_code == 2, result.output
    assert "unsupported lake location" in result.output
    assert "host.example/x" in result.output or "db.example/x" in result.output
    assert "PASSW0RD" not in result.output
    with pytest.raises(
        ke.ConfigError, match=r"unsupported lake location .*: use a folder or s3://"
    ) as caught:
        ke.Lake(location)
    assert "PASSW0RD" not in str(caught.value)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (Linux: /proc/PID/fd)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if Path(os.readlink(fd)) == path:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("sig", "code", "full"),
    [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False), (signal.SIGTERM, 143, True)],
)
def test_compact_stopped_says_nothing_is_lost(
    tmp_path: Path, sig: int, code: int, full: bool
) -> None:
    # Ctrl-C ended compact with exit 130 and not a word, SIGTERM (cron's timeout, systemd)
    # killed it; stopped while it waits for another process's flush, it says what it left.
    # A --full run stopped before it began (here: waiting for the flush) left nothing for
    # the next scheduled run to finish, and says to run it again (one stopped once begun:
    # test_a_stopped_full_compaction_says_the_next_run_finishes_it)
    with Journal(tmp_path) as journal:
        journal.append([ev("a")])
    lock = tmp_path / "_journal" / "flush.lock"
    interruptible = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    with file_lock(lock):  # another flush runs: compact's flush waits for it
        argv = [sys.executable, "-m", "kirim_events", "compact", "--data", str(tmp_path)]
        argv += ["--full"] if full else []
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=interruptible)  # fmt: skip
        try:
            wait_until(lambda: proc.poll() is not None or _has_open(proc.pid, lock), 60,
                       interval=0.01, what="compact waiting for the flush lock")  # fmt: skip
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    said = " ".join(err.decode().split())
    assert proc.returncode == code, said
    if full:
        assert "interrupted: nothing is lost; the full compaction had not begun" in said
        assert "run kirim-events compact --full again" in said
    else:
        assert "interrupted: nothing is lost; the next kirim-events compact finishes" in said
    assert "Traceback" not in said
    with Journal(tmp_path) as journal:  # still there, and the next run flushes it
        assert journal.flush(ke.Lake(tmp_path)).events == 1


def test_a_stopped_full_compaction_says_the_next_run_finishes_it(tmp_path: Path) -> None:
    # it said to run --full again, as a scheduled run left the partitions it had not
    # reached; the lake now records the run, and the next one of either kind finishes it
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b", occurred=T0 + timedelta(days=3))])
    lake.compact()
    assert stopped_saying(lake, True) == _STOPPED_FULL_UNBEGUN  # nothing recorded yet

    def stop(step: str) -> None:
        if step == "file_written":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lake.compact(full=True, hook=stop)
    said = stopped_saying(lake, True)
    assert "the next kirim-events compact, scheduled or --full, finishes it" in said
    assert "--full again" not in said
    result = CliRunner().invoke(app, ["compact", "--no-flush", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"finished the --full run\W+begun\W+\d{4}-", result.output), result.output
    assert lake.unfinished_full_compaction() is None
    assert stopped_saying(lake, False) == _STOPPED


@pytest.mark.parametrize("command", ["report", "compact"])
@pytest.mark.parametrize("option", ["--data", "--lake"])
def test_every_location_holding_no_lake_exits_2_as_a_bad_option_does(
    tmp_path: Path, command: str, option: str
) -> None:
    # "no lake at ..." exited 2 (the CLI's check) and "... is not a kirim-events lake" 1 (the
    # library's): both say the same thing, a --data or --lake to change (docs/cli.md, "Exit
    # codes")
    (tmp_path / "data").mkdir()
    foreign = tmp_path / "project"
    (foreign / "src").mkdir(parents=True)
    other_format = tmp_path / "other"
    (other_format / "_state").mkdir(parents=True)
    (other_format / "_state" / "lake.json").write_text('{"format": "someone-else"}')
    wrong = {
        tmp_path / "missing": "no lake at",
        # --lake, which a journal may flush into, needs what kirim-events writes there
        foreign: "is not a kirim-events lake: it holds src"
        if option == "--data"
        else "nothing kirim-events wrote is there",
        other_format: "is not a kirim-events lake (_state/lake.json format)",
    }
    for where, said in wrong.items():
        args = ["--data", str(where)]
        if option == "--lake":
            args = ["--data", str(tmp_path / "data"), "--lake", str(where)]
        result = runner.invoke(app, [command, *args])
        assert result.exit_code == 2, (where, result.output)
        assert said in " ".join(result.output.split()), result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_the_library_says_no_lake_with_one_class_the_cli_maps_to_exit_2(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("x")
    (tmp_path / "afile").write_text("x")
    for where in ("missing", "project"):
        with pytest.raises(ke.errors.NotALakeError, match="lake"):
            ke.Lake(tmp_path / where).events().collect()
    with pytest.raises(ke.errors.NotALakeError, match="is a file, not a lake's folder"):
        ke.Lake(tmp_path / "afile")
    assert issubclass(ke.errors.NotALakeError, ke.LakeError)  # code catching LakeError still does


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")
def test_a_full_compaction_stopped_before_it_began_is_not_taken_for_an_older_one(
    tmp_path: Path,
) -> None:
    # An earlier --full that crashed left its record; this one, stopped while it waits for
    # the flush, recorded nothing: it said the lake records *this* run and the next one
    # finishes it, where the next one finishes only the older run's types not reached
    lake = ke.Lake(tmp_path)
    lake.write_events([ev("a"), ev("b", type="message.status")])
    lake.compact()

    def stop(step: str) -> None:
        if step == "file_written":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lake.compact(full=True, hook=stop)
    record = tmp_path / "_state/full-compaction.json"
    older = json.loads(record.read_text()) | {"started_at": "2026-01-01T00:00:00Z"}
    record.write_text(json.dumps(older))
    with Journal(tmp_path) as journal:
        journal.append([ev("c")])
    lock = tmp_path / "_journal" / "flush.lock"
    with file_lock(lock):  # another flush runs: compact's flush waits for it
        argv = [sys.executable, "-m", "kirim_events", "compact", "--full", "--data", str(tmp_path)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: proc.poll() is not None or _has_open(proc.pid, lock), 60,
                       interval=0.01, what="compact waiting for the flush lock")  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    said = " ".join(err.decode().split())
    assert proc.returncode == 143, said
    assert "interrupted: nothing is lost; the full compaction had not begun" in said
    assert "run kirim-events compact --full again" in said
    assert lake.unfinished_full_compaction() == "2026-01-01T00:00:00Z"  # still the older one
