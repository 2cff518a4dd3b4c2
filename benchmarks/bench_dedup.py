"""Benchmark: what the dedup on read costs, on a lake as written and compacted.

Until ``kirim-events compact`` has run over a partition, a row can lie in it twice: an
event or a receipt flushed again after a crash, or written by a second collector; a row of
Kirim's history fetched by two backfills, or fetched while its attempt was under way
(``pending``) and again with its outcome. ``Lake.events()`` and ``Lake.deliveries()``
collapse those on read (``reader.first_copies``): one row per ``event_key``, the first
received; one row per attempt of Kirim's history, the last fetched; any other delivery row
once with its exact copies. For each table (``--table``), N rows written as the collector
and a backfill write them (50k-row batches, about 1% of them copies written a batch or more
later) over 14 days:

* ``ours, as written``: ``Lake.<table>().collect()`` on the lake as written (no partition is
  clean, so every one goes through the dedup);
* ``ours, compacted``: the same on a copy after ``Lake.compact()`` (every partition clean:
  a plain scan);
* ``plain scan``: ``pl.scan_parquet`` of the written files, hive partitioning, no dedup: the
  floor any reader pays (it returns the copies too);
* ``README SQL``: DuckDB running the README's plain dedup query over the written files (what
  a user without our code runs), to an Arrow table;
* ``compact``: ``Lake.compact()`` of a fresh copy of the written lake.

Events are the Analytics benchmark's (``bench_analytics.generate``, ids sized like Kirim's),
deliveries 70% our receipts and 30% Kirim's history, half its attempts fetched twice. Before
timing, the three deduplicating readers are checked to give the same rows, as many as the
generator knows to be distinct.

Usage::

    .venv/bin/python benchmarks/bench_dedup.py --scale 1000000,3000000 --repeat 3 --write
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

sys.path.insert(0, str(Path(__file__).parent))
import _results
import bench_analytics as ba  # the events and the run's writer

from kirim_events.lake import Lake
from kirim_events.schema import DELIVERY_SCHEMA, EVENT_SCHEMA

HEAD = "## Dedup on read: as written and compacted (benchmarks/bench_dedup.py)"
TABLES = ("events", "deliveries")
START = datetime(2026, 5, 1, tzinfo=UTC)
DAYS = 14
BATCH = 50_000
RECEIPTS = 0.7  # share of the written rows that are our receipts; the rest is Kirim's history
COPIED = 0.01  # events and receipts written twice (a flush again after a crash, say)
REFETCHED = 0.5  # history attempts fetched twice: pending first, then with their outcome


def _ids(prefix: str, n: int, seed: int) -> pl.Expr:
    """ULID-sized ids (``prefix`` and 24 characters) that differ for every row number."""
    return pl.format(prefix + "01JB{}", ba.unique_digits(pl.int_range(n), seed))


def events(n_rows: int, seed: int = 1) -> tuple[pl.DataFrame, int]:
    """About ``n_rows`` events in arrival order, 1% of them written again a batch or more
    later (as a second flush of the same journal rows), and how many are distinct."""
    frame = ba.generate(int(n_rows / (1 + COPIED)), seed, id_shape="realistic")
    missing = [f.name for f in EVENT_SCHEMA if f.name not in frame.columns]
    frame = frame.with_columns(pl.lit(None).alias(name) for name in missing).sort("received_at")
    frame = frame.with_columns(ingest_seq=pl.int_range(pl.len(), dtype=pl.Int64))
    copies = frame.sample(fraction=COPIED, seed=seed)
    table = pl.concat([frame, copies]).select(EVENT_SCHEMA.names).to_arrow().cast(EVENT_SCHEMA)
    return pl.DataFrame(table), frame.height


def deliveries(n_rows: int, seed: int = 1) -> tuple[pl.DataFrame, int]:
    """About ``n_rows`` delivery rows in writing order, and how many are distinct.

    Receipts come in arrival order, 1% written twice (exact copies, the second a batch
    later); then the history rows as a backfill fetches them, the attempts fetched twice
    appearing once ``pending`` (no answer) and once ``delivered`` (200), later.
    """
    rng = np.random.default_rng(seed)
    span = DAYS * 86400
    t0 = int(START.timestamp())
    n_receipts = int(n_rows * RECEIPTS / (1 + COPIED))
    arrived = np.sort(t0 + rng.integers(0, span, n_receipts))
    outcome = rng.choice(["new", "duplicate", "rejected"], n_receipts, p=[0.96, 0.03, 0.01])
    receipts = pl.DataFrame(
        {
            "received_at": arrived * 1_000_000 + rng.integers(0, 1_000_000, n_receipts),
            "outcome": outcome,
            "attempt": rng.choice([1, 2, 3], n_receipts, p=[0.9, 0.08, 0.02]).astype(np.int32),
        }
    ).with_columns(
        delivery_id=_ids("dlv_", n_receipts, 1),
        event_id=_ids("evt_", n_receipts, 2),
        event_type=pl.lit("message.status"),
        origin=pl.lit("webhook"),
        reason=pl.when(pl.col("outcome") == "rejected").then(pl.lit("signature mismatch")),
        response_status_code=pl.when(pl.col("outcome") == "rejected")
        .then(pl.lit(401, pl.Int32))
        .otherwise(pl.lit(200, pl.Int32)),
        n_events=pl.lit(1, pl.Int32),
    )
    copies = receipts.sample(fraction=COPIED, seed=seed)
    n_attempts = int((n_rows - receipts.height - copies.height) / (1 + REFETCHED))
    created = t0 + rng.integers(0, span, n_attempts)
    attempts = pl.DataFrame(
        {"created_at": created * 1_000_000, "twice": rng.random(n_attempts) < REFETCHED}
    ).with_columns(
        delivery_id=_ids("dlv_", n_attempts, 3),
        event_id=_ids("evt_", n_attempts, 4),
        attempt=pl.lit(1, pl.Int32),
        event_type=pl.lit("conversation.closed"),
        origin=pl.lit("backfill"),
        subscription_id=pl.lit("sub_01JB0000000000000000000001"),
        n_events=pl.lit(1, pl.Int32),
    )
    fetched = (t0 + span + 3600) * 1_000_000  # the backfill runs after the range
    first = attempts.filter("twice").with_columns(
        outcome=pl.lit("pending"), received_at=pl.lit(fetched)
    )
    final = attempts.with_columns(
        outcome=pl.lit("delivered"),
        response_status_code=pl.lit(200, pl.Int32),
        received_at=pl.lit(fetched + 600 * 1_000_000),
    )
    frame = pl.concat(
        [receipts, copies, first.drop("twice"), final.drop("twice")], how="diagonal_relaxed"
    )
    frame = frame.with_columns(
        pl.col("received_at", "created_at").cast(pl.Datetime("us", "UTC")),
        ingest_seq=pl.int_range(pl.len(), dtype=pl.Int64),
    )
    missing = [f.name for f in DELIVERY_SCHEMA if f.name not in frame.columns]
    frame = frame.with_columns(pl.lit(None, pl.String).alias(name) for name in missing)
    table = frame.select(DELIVERY_SCHEMA.names).to_arrow().cast(DELIVERY_SCHEMA)
    return pl.DataFrame(table), receipts.height + attempts.height


def build(table: str, n_rows: int, work: Path) -> tuple[Path, Path, int, int]:
    """The written lake and a compacted copy (reused when there); rows written, distinct."""
    written, compacted = work / f"{table}_written_{n_rows}", work / f"{table}_compacted_{n_rows}"
    marker = written / "_bench_rows"
    if marker.exists():
        rows, distinct = (int(x) for x in marker.read_text().split())
        return written, compacted, rows, distinct
    shutil.rmtree(written, ignore_errors=True)
    shutil.rmtree(compacted, ignore_errors=True)
    frame, distinct = events(n_rows) if table == "events" else deliveries(n_rows)
    lake = Lake(written)
    write = lake.write_events if table == "events" else lake.write_deliveries
    for start in range(0, frame.height, BATCH):
        write(frame.slice(start, BATCH).to_arrow())
    shutil.copytree(written, compacted)
    Lake(compacted).compact()
    marker.write_text(f"{frame.height} {distinct}")
    return written, compacted, frame.height, distinct


def readme_query(table: str, root: Path) -> str:
    """The README's plain dedup query of ``table``, over ``root``'s files."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("```sql\n", 1)[1].split("```", 1)[0]
    queries = [q for q in block.replace("data/", f"{root}/").split(";") if q.strip()]
    return dict(zip(TABLES, queries, strict=True))[table]


def readers(table: str, written: Path, compacted: Path) -> dict[str, Callable[[], Any]]:
    def plain() -> pl.DataFrame:
        files = str(written / table / "**" / "*.parquet")
        return pl.scan_parquet(files, hive_partitioning=True).collect()

    def sql() -> Any:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(readme_query(table, written)).to_arrow_table()

    return {
        "ours, as written": lambda: getattr(Lake(written), table)().collect(),
        "ours, compacted": lambda: getattr(Lake(compacted), table)().collect(),
        "plain scan": plain,
        "README SQL": sql,
    }


def check(table: str, written: Path, compacted: Path, distinct: int) -> None:
    """The deduplicating readers give the same rows, and as many as are distinct."""
    run = readers(table, written, compacted)
    columns = list((EVENT_SCHEMA if table == "events" else DELIVERY_SCHEMA).names)
    frames = {
        name: pl.DataFrame(run[name]()).select(columns).sort("ingest_seq")
        for name in ("ours, as written", "ours, compacted", "README SQL")
    }
    base = frames["ours, as written"]
    assert base.height == distinct, f"{table}: {base.height} rows, {distinct} distinct"
    for name, frame in frames.items():
        try:
            assert_frame_equal(frame, base, check_dtypes=False)
        except AssertionError as e:
            raise AssertionError(f"{table}: {name} differs from ours, as written: {e}") from None
    print(f"check {table}: the three readers give the same {distinct:,} rows", flush=True)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(
    table: str, written: Path, compacted: Path, repeat: int, work: Path
) -> dict[str, float]:
    """Median seconds per reader and for a compaction, round-robin over ``repeat`` rounds."""
    run = readers(table, written, compacted)
    for fn in run.values():  # warm-up: file cache, lazy imports
        fn()
    scratch = work / "scratch"
    times: dict[str, list[float]] = {name: [] for name in [*run, "compact"]}
    for _ in range(repeat):
        for name, fn in run.items():
            times[name].append(timed(fn))
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(written, scratch)
        times["compact"].append(timed(Lake(scratch).compact))
        shutil.rmtree(scratch)
    return {name: statistics.median(ts) for name, ts in times.items()}


def section(results: dict[tuple[str, int, int], dict[str, float]], repeat: int) -> str:
    intro = [
        f"Median of {repeat} round-robin rounds in one process, after a warm-up. N rows",
        f"written in {BATCH:,}-row batches over {DAYS} days, {COPIED:.0%} written again later;",
        f"deliveries: {RECEIPTS:.0%} our receipts, the rest Kirim's history ({REFETCHED:.0%}",
        "of its attempts fetched twice: pending, then delivered). See the script's docstring.",
    ]
    columns = [
        "table",
        "rows written",
        "distinct",
        "ours, as written s",
        "ours, compacted s",
        "plain scan (no dedup) s",
        "README SQL (DuckDB) s",
        "as written / plain",
        "compacted / plain",
        "compact s",
        "compact rows/s",
    ]
    lines = ba.section_lines(intro, columns)
    for (table, rows, distinct), r in sorted(results.items()):
        plain = r["plain scan"]
        lines.append(
            f"| {table} | {rows:,} | {distinct:,} | {r['ours, as written']:.2f} "
            f"| {r['ours, compacted']:.2f} | {plain:.2f} | {r['README SQL']:.2f} "
            f"| {r['ours, as written'] / plain:.1f}x | {r['ours, compacted'] / plain:.1f}x "
            f"| {r['compact']:.2f} | {rows / r['compact']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--scale", default="1000000", help="rows written, comma-separated")
    ap.add_argument("--table", choices=[*TABLES, "both"], default="both")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kirim-bench-dedup"))
    _results.add_arguments(ap)
    ap.add_argument("--section-out", type=Path, help="also write the section to this file")
    args = ap.parse_args()
    results = {}
    tables = TABLES if args.table == "both" else (args.table,)
    for n in (int(float(s)) for s in args.scale.split(",")):
        for table in tables:
            t = time.perf_counter()
            written, compacted, rows, distinct = build(table, n, args.workdir)
            took = time.perf_counter() - t
            print(f"{table} at {n:,}: {rows:,} rows written ({took:.0f} s)", flush=True)
            check(table, written, compacted, distinct)
            r = measure(table, written, compacted, args.repeat, args.workdir)
            results[(table, rows, distinct)] = r
            print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in r.items()), flush=True)
    text = section(results, args.repeat)
    print(text, flush=True)  # the table, whether written to a file or not
    if args.section_out:
        args.section_out.write_text(text, encoding="utf-8")
    ba.write(text, HEAD, args)


if __name__ == "__main__":
    main()
