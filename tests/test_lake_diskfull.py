"""The lake when a write fails part-way (a full disk, a file size limit): nothing is lost, and
no event is counted twice by a plain reader.

A full disk is simulated with a file size limit (``RLIMIT_FSIZE``) in a child process: a
write past it fails with EFBIG (Python ignores SIGXFSZ), as one on a full disk fails with
ENOSPC, through the same code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from test_lake import T0, ev
from test_lake_compact import on_disk, winners

import kirim_events as ke

pytest.importorskip("resource")


def compact_limited(root: Path, max_file_bytes: int) -> str:
    """Run a compaction of the lake at ``root`` in a child process that cannot write a file
    past ``max_file_bytes``; return what it raised."""
    code = textwrap.dedent(
        f"""
        import resource
        import kirim_events as ke
        resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, resource.RLIM_INFINITY))
        try:
            ke.Lake({str(root)!r}).compact()
        except ke.StorageError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def test_a_compaction_that_cannot_write_its_manifest_leaves_no_copy_behind(
    tmp_path: Path,
) -> None:
    """Its merged files were renamed in, the manifest could not be written (the last bytes
    of a full disk went to the files): a plain reader counted every event twice, and each
    run after it, the disk still full, left one more copy of every partition."""
    lake = ke.Lake(tmp_path)
    expected = {f"e{d}": ev(f"e{d}").payload for d in range(150)}
    lake.write_events([ev(f"e{d}", occurred=T0 + timedelta(days=d)) for d in range(150)])
    # each partition's file is about 6 kB, the manifest listing 150 of them about 10 kB
    for _ in range(2):
        said = compact_limited(tmp_path, 8_000)
        assert "_state/compaction/events/type=message.created.json" in said
        assert "File too large" in said
        assert on_disk(tmp_path) == sorted(expected)  # 300 rows, then 450, before
        assert winners(lake) == expected
    report = lake.compact()  # room again: the run goes through
    assert report.partitions == 150
    assert on_disk(tmp_path) == sorted(expected)
    assert lake.stats()["clean"].all()


def test_a_file_that_cannot_be_read_stops_only_its_own_type(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged file (a disk error, a copy cut short) failed every compaction at its type,
    and the types after it in the run's order were never compacted again: a plain reader
    kept counting their copies twice."""
    lake = ke.Lake(tmp_path)
    for payload in ("first", "copy"):
        received = T0 + timedelta(seconds=1 if payload == "first" else 60)
        lake.write_events(
            [
                ev(key, type=kind, payload=payload, received=received)
                for key, kind in (("c", "contact.updated"), ("m", "message.created"))
            ]
        )
    damaged = sorted((tmp_path / "events/type=contact.updated").rglob("*.parquet"))[0]
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])  # cut short
    rel = str(damaged.relative_to(tmp_path))
    for _ in range(2):  # the damaged type's markers stay: each run tries it again
        with pytest.raises(pl.exceptions.ComputeError):  # as a read of the lake fails
            lake.compact()
        assert rel in caplog.text  # named in the log; the CLI names it (damaged_files)
        assert lake.damaged_files() == [rel]
        glob = f"{tmp_path}/events/type=message.created/**/*.parquet"
        assert duckdb.sql(f"select event_key from read_parquet('{glob}')").fetchall() == [("m",)]
        assert len(list(damaged.parent.glob("*.parquet"))) == 2  # left as it was
    damaged.unlink()  # the user moves it out
    lake.compact()
    assert winners(lake) == {"c": "copy", "m": "first"}
    assert lake.stats()["clean"].all()
