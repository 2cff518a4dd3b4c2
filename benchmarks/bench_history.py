"""Benchmark: message status history and conversation cycles, ours vs pandas vs bare DuckDB.

The two helpers that keep one row per event (history) or split conversations at every close
(cycles), on the lakes of ``bench_analytics.py`` (built by its ``build_lake`` when missing).
Per scale, every implementation runs in its own process, round-robin over ``--repeat``
rounds, one timed run after a warm-up each; figures are medians:

* ``ours-polars``: ``lake.message_status_history()`` / ``lake.conversation_cycles()``,
  ``.collect()``
* ``ours-in-memory``: the same, ``.collect(engine="in-memory")`` (``collect()`` lets Polars
  pick; Polars 2 picks its streaming engine). At every scale both engines' frames are
  checked equal row for row, order included, before timing.
* ``ours-duckdb``: the DuckDB view of the same name through ``lake.sql(...)``
* ``pandas``: a straightforward vectorised pandas version (sort, groupby cumcount/cummax/
  shift; cycles from cumulative closes, then groupby), checked equal to ours on every column
  it computes at the first scale
* ``duckdb-bare``: the least a query must do: history, a sequence number and running status
  per message in event-time order; cycles, an as-of join of every event with the running
  close count and one ``GROUP BY conversation_id, cycle`` with first/last time and a count.

Usage::

    .venv/bin/python benchmarks/bench_history.py --scale 1000000,3000000,10000000 --write
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
import bench_analytics as ba  # the same lakes and memory probe

IMPLS = ("ours-polars", ba.IN_MEMORY, "ours-duckdb", "pandas", "duckdb-bare")
TASKS = ("history", "cycles")
VIEWS = {"history": "message_status_history", "cycles": "conversation_cycles"}
ORDER = ["occurred_at", "received_at", "event_key"]
INV = {v: k for k, v in ba.RANK.items()}


# --------------------------------------------------------------------------- pandas baseline


def pandas_history(path: Path) -> Any:
    """Sort by message and event time; sequence, running status and late arrival per message."""
    import pandas as pd

    cols = ["event_key", "message_id", "status", "occurred_at", "received_at", "error_code"]
    df = pd.read_parquet(path / "events" / "type=message.status", columns=cols)
    df = df[df["message_id"].notna() & df["status"].isin(list(ba.RANK))].copy()
    df["rank"] = df["status"].map(ba.RANK)
    # at one instant, received together, the lower status first (as STATUS_ORDER says)
    order = ["message_id", "occurred_at", "received_at", "rank", "event_key"]
    df = df.sort_values(order).reset_index(drop=True)
    by = df.groupby("message_id", sort=False)
    df["seq"] = by.cumcount() + 1
    after = by["rank"].cummax()
    before = after.groupby(df["message_id"]).shift(1)
    df["current_status"] = after.map(INV)
    df["previous_status"] = before.map(INV)
    df["is_upgrade"] = before.isna() | (df["rank"] > before)
    # arrived after an event that happened later: after the earliest arrival that follows
    earliest = df["received_at"][::-1].groupby(df["message_id"][::-1]).cummin()[::-1]
    after_it = earliest.groupby(df["message_id"]).shift(-1)
    df["arrived_late"] = (df["received_at"] > after_it).fillna(False)
    return df


def pandas_cycles(path: Path) -> Any:
    """Cycle of each event from cumulative closes, then one groupby per kind of event."""
    import pandas as pd

    cols = ["event_key", "type", "conversation_id", "occurred_at", "received_at", "user_id",
            "previous_user_id", "closed_by_user_id"]  # fmt: skip
    df = pd.read_parquet(path / "events", columns=cols)
    df = df[df["conversation_id"].notna()]
    df = df.sort_values(["conversation_id", *ORDER]).reset_index(drop=True)
    close = (df["type"] == "conversation.closed").astype("int64")
    through = close.groupby(df["conversation_id"]).cumsum()
    at = [df["conversation_id"], df["occurred_at"]]
    df["cycle"] = through.groupby(at).transform("max") - close.groupby(at).transform("sum") + 1
    keys = ["conversation_id", "cycle"]
    out = df.groupby(keys).agg(
        opened_at=("occurred_at", "min"),
        last_event_at=("occurred_at", "max"),
        n_events=("event_key", "size"),
    )
    a = df[df["type"] == "conversation.assigned"].copy()
    prev = a.groupby("conversation_id")["user_id"].shift(1)
    same = (a["previous_user_id"] == prev) | (a["previous_user_id"].isna() & prev.isna())
    a["missing"] = ~same
    ga = a.groupby(keys)
    out["n_assignments"] = ga["user_id"].count()
    out["n_assignees"] = ga["user_id"].nunique()
    out["assignee_id"] = ga.tail(1).set_index(keys)["user_id"]
    out["first_assigned_at"] = a[a["user_id"].notna()].groupby(keys)["occurred_at"].min()
    out["n_missing_assignments"] = ga["missing"].sum()
    c = df[df["type"] == "conversation.closed"]
    gc = c.groupby(keys)
    out["n_closes"] = gc.size()
    out["closed_at"] = gc["occurred_at"].max()
    out["closed_by_user_id"] = gc.tail(1).set_index(keys)["closed_by_user_id"]
    counts = ["n_assignments", "n_assignees", "n_missing_assignments", "n_closes"]
    out[counts] = out[counts].fillna(0).astype("int64")
    out = out.reset_index()
    out["is_open"] = out["n_closes"] == 0
    out["is_reopen"] = out["cycle"] > 1
    # an opening not seen: no message or message status at the cycle's first instant
    opening = df[df["type"].isin(["message.received", "message.sent", "message.created",
                                  "message.status"])]  # fmt: skip
    first_opening = opening.groupby(keys)["occurred_at"].min().rename("_first_opening")
    out = out.join(first_opening, on=keys)
    unseen = out["_first_opening"].isna() | (out["_first_opening"] > out["opened_at"])
    out["missing_opening"] = unseen
    wait = out["first_assigned_at"] - out["opened_at"]
    out["time_to_first_assignment"] = wait.dt.total_seconds().where(~unseen)
    ttc = (out["closed_at"] - out["opened_at"]).dt.total_seconds()
    out["time_to_close"] = ttc.where(~unseen)
    return out.drop(columns="_first_opening")


# --------------------------------------------------------------------------- bare DuckDB


def _duckdb_bare(path: Path, task: str) -> Any:
    import duckdb

    events = str(path / "events")
    if task == "history":
        ranks = " ".join(f"WHEN '{s}' THEN {r}" for s, r in ba.RANK.items())
        query = f"""
        SELECT message_id, event_key, row_number() OVER w AS seq, max(rank) OVER w AS rank
        FROM (SELECT message_id, event_key, occurred_at, received_at,
                CASE status {ranks} END AS rank
              FROM read_parquet('{events}/type=message.status/*/*.parquet'))
        WINDOW w AS (PARTITION BY message_id ORDER BY occurred_at, received_at, event_key)
        ORDER BY message_id, seq"""
    else:
        query = f"""
        WITH e AS (
          SELECT conversation_id, occurred_at, type
          FROM read_parquet('{events}/*/*/*.parquet', hive_partitioning = true)
          WHERE conversation_id IS NOT NULL),
        i AS (SELECT conversation_id, occurred_at, count(*) AS n FROM e
              WHERE type = 'conversation.closed' GROUP BY ALL),
        m AS (SELECT conversation_id, occurred_at,
                sum(n) OVER (PARTITION BY conversation_id ORDER BY occurred_at) AS k FROM i)
        SELECT e.conversation_id, 1 + coalesce(m.k, 0) AS cycle, min(e.occurred_at) AS opened,
          max(e.occurred_at) AS last, count(*) AS n_events
        FROM e ASOF LEFT JOIN m
          ON e.conversation_id = m.conversation_id AND e.occurred_at > m.occurred_at
        GROUP BY ALL"""
    return duckdb.connect().sql(query).to_arrow_table()


# --------------------------------------------------------------------------- workers


def run_once(impl: str, task: str, path: Path) -> tuple[int, int]:
    """Run one implementation of one task; return the numbers of rows and columns produced."""
    got = ba.ours(impl, VIEWS[task], path)
    if got is not None:
        return got
    if impl == "pandas":
        return ba.shape((pandas_history if task == "history" else pandas_cycles)(path))
    return ba.shape(_duckdb_bare(path, task))


def worker(impl: str, task: str, path: Path) -> dict[str, Any]:
    needs = {"pandas": ("pandas", "pyarrow.parquet"), "duckdb-bare": ("duckdb",)}
    for module in needs.get(impl, ("kirim_events.lake",)):
        importlib.import_module(module)
    run_once(impl, task, path)  # warm-up: file cache, lazy imports
    t = time.perf_counter()
    rows, columns = run_once(impl, task, path)
    took = time.perf_counter() - t
    return {"rows": rows, "columns": columns, "times": [took], "rss_peak_mb": ba._rss_mb()}


def check_equal(path: Path) -> None:
    """pandas computes what ours does, on every column it has (so the comparison is fair)."""
    from polars.testing import assert_frame_equal

    from kirim_events.lake import Lake

    lake = Lake(path)
    cases = [
        ("history", pandas_history, lake.message_status_history(), ["message_id", "seq"]),
        ("cycles", pandas_cycles, lake.conversation_cycles(), ["conversation_id", "cycle"]),
    ]
    for task, fn, ours, key in cases:
        mine = ours.collect()
        theirs = pl.from_pandas(fn(path))
        cols = [c for c in theirs.columns if c in mine.columns]
        a = mine.select(cols).sort(key)
        b = theirs.select(cols).sort(key).cast(a.schema, strict=False)
        assert_frame_equal(a, b, check_dtypes=False)
        print(f"check {task}: pandas == ours on {len(cols)} columns, {a.height} rows", flush=True)


def measure(path: Path, repeat: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Round-robin: each round runs every implementation once, so load drifts hit all alike."""
    return ba.run_rounds(__file__, path, TASKS, [list(IMPLS)] * repeat)


HEAD = "## Analytics: status history and cycles (benchmarks/bench_history.py)"


def section(results: dict[int, dict[tuple[str, str], dict[str, Any]]], repeat: int) -> str:
    intro = [
        f"Median of {repeat} round-robin rounds, each implementation in its own process, one",
        "timed run after a warm-up, from the same Parquet files (the lakes of the Analytics",
        "benchmark) to the finished result; peak = that process's max RSS. The pandas baseline",
        "is checked equal to ours on every column it computes. At every scale the",
        'frames of `collect(engine="streaming")` and `collect(engine="in-memory")` are checked',
        "equal row for row, in the same order (the benchmark stops otherwise).",
    ]
    columns = [
        "events",
        "task",
        "ours (Polars) s",
        "ours, in-memory engine s",
        "ours (DuckDB view) s",
        "pandas s",
        "bare DuckDB s",
        "pandas / ours",
        "ours / bare DuckDB",
        "peak MB ours / in-memory / view / pandas / bare",
    ]
    lines = ba.section_lines(intro, columns)
    for n, res in sorted(results.items()):
        for task in TASKS:
            o, m, d, p, b = (res[(task, i)] for i in IMPLS)
            peaks = " / ".join(f"{r['rss_peak_mb']:.0f}" for r in (o, m, d, p, b))
            lines.append(
                f"| {n:,} | {task} | {o['median']:.2f} | {m['median']:.2f} | {d['median']:.2f} "
                f"| {p['median']:.2f} | {b['median']:.2f} | {p['median'] / o['median']:.1f}x "
                f"| {o['median'] / b['median']:.1f}x | {peaks} |"
            )
    return "\n".join([*lines, ""]) + "\n"


def main() -> None:
    assert __doc__
    args = ba.parser(__doc__, IMPLS, TASKS).parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.task, args.data)))
        return
    results = {}
    for i, n in enumerate(int(float(s)) for s in args.scale.split(",")):
        path = ba.lake_path(args.workdir, n, args.ids)
        rows = ba.build_lake(n, path, args.ids)
        if i == 0:
            check_equal(path)
        ba.check_engines(path, VIEWS, ordered=True)
        results[rows] = measure(path, args.repeat)
    text = section(results, args.repeat)
    print(text)
    ba.write(text, HEAD, args)


if __name__ == "__main__":
    main()
