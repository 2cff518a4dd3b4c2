"""Benchmark the lake: write + compact, bytes on disk, compaction speed, pruned reads.

Measures, in one run on one machine, against baselines from the same run:

1. write N events in journal-flush-sized batches (50k) and compact them; bytes on disk of the
   compacted ``events/`` folder against three NDJSON forms of the same unique events (target:
   at most 20% of raw NDJSON): the webhook bodies alone; the deliveries as received (a line
   per delivery with the Kirim headers whose values the lake keeps, the arrival time and the
   body: the same information as the lake, minus the signature, which it does not keep); and
   the lake's own rows written as NDJSON;
2. compaction rows/s against DuckDB rewriting the same partitions from the same files with
   ``COPY (SELECT ... deduplicated ...) TO ... (FORMAT parquet, PARTITION_BY (type, date))``
   (target: at least half of DuckDB's speed); also DuckDB's plain rewrite without dedup;
3. ``Lake.events(type=..., since=day, until=day)`` against a full scan of the same lake
   (the same aggregate over every row), on a lake of ``--query-factor`` x N events made by
   extending the N events over more days (a lake grows by adding days).

The events are synthetic but shaped like Kirim's (kirim-api.md section 4): Meta status
callbacks (sent/delivered/read/failed) and inbound messages, Kirim-native message.sent,
conversation.assigned/closed and contact.updated, with random ULID/wamid ids and HMAC-like
signatures, parsed by ``parse_delivery``; 3% of deliveries arrive twice (a retry).

Usage::

    python benchmarks/bench_lake.py --scale 0.1            # 100k events, 1M-event query lake
    python benchmarks/bench_lake.py --scale 1 --repeats 3 --write  # the issue's 1M / 10M

``--write`` adds the run to ``benchmarks/RESULTS.md`` under "## Lake".
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # the one writer of RESULTS.md

from kirim_events import Lake, parse_delivery
from kirim_events.schema import events_table
from kirim_events.testing import encode, meta_envelope

BATCH = 50_000
DAYS = 30
START = datetime(2026, 3, 1, tzinfo=UTC)
HEADING = "## Lake (benchmarks/bench_lake.py)"
WORDS = [
    "hello",
    "order",
    "shipped",
    "thanks",
    "your",
    "the",
    "is",
    "when",
    "can",
    "I",
    "please",
    "delivery",
    "status",
    "payment",
    "refund",
    "invoice",
    "tomorrow",
    "today",
    "support",
    "agent",
    "help",
    "number",
    "ticket",
    "confirm",
]


# --------------------------------------------------------------------------- synthetic data


class Ids:
    """ULID-like and wamid-like ids from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def ulid(self, prefix: str, t: datetime) -> str:
        alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
        ms = int(t.timestamp() * 1000)
        head = "".join(alphabet[(ms >> (5 * i)) & 31] for i in range(9, -1, -1))
        tail = "".join(self.rng.choice(alphabet) for _ in range(16))
        return f"{prefix}_{head}{tail}"

    def wamid(self, phone: str) -> str:
        # Meta's layout (kirim-api.md 4.5): base64 of a small header, the recipient's phone
        # and 9 random bytes as 18 upper-case hex digits.
        inner = b"\x1c\x18" + bytes([len(phone)]) + phone.encode() + b"\x15\x02\x00\x11\x18\x12"
        inner += self.rng.randbytes(9).hex().upper().encode() + b"\x00"
        return "wamid." + base64.b64encode(inner).decode()

    def phone(self) -> str:
        return "62" + "".join(self.rng.choice("0123456789") for _ in range(10))

    def hexsig(self) -> str:
        return self.rng.randbytes(32).hex()


def _meta(phone_id: str, value: dict[str, object]) -> bytes:
    return encode(meta_envelope(value, phone_number_id=phone_id))


def _kirim(event_id: str, kind: str, t: datetime, data: dict[str, object]) -> bytes:
    body = {
        "id": event_id,
        "type": kind,
        "created_at": t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "livemode": True,
        "data": data,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def deliveries(n: int, seed: int, days: int) -> Iterator[tuple[bytes, dict[str, str], datetime]]:
    """About ``n`` (body, headers, event time) deliveries, one event each."""
    rng = random.Random(seed)
    ids = Ids(rng)
    phone_ids = ["106540352242922", "106540352242923", "106540352242924"]
    made = 0
    while made < n:
        t = START + timedelta(seconds=rng.uniform(0, days * 86400))
        phone_id = rng.choice(phone_ids)
        customer = ids.phone()
        conversation = ids.ulid("cnv", t)
        billing = rng.randbytes(16).hex()  # Meta's billing conversation: one per 24 h window
        out: list[tuple[str, str, datetime, bytes]] = []
        # An inbound message opens the conversation, an agent is assigned and replies.
        wamid_in = ids.wamid(customer)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        out.append(
            (
                wamid_in,
                "message.received",
                t,
                _meta(
                    phone_id,
                    {
                        "contacts": [{"profile": {"name": "Customer"}, "wa_id": customer}],
                        "messages": [
                            {
                                "from": customer,
                                "id": wamid_in,
                                "timestamp": str(int(t.timestamp())),
                                "type": "text",
                                "text": {"body": text},
                            }
                        ],
                    },
                ),
            )
        )
        agent = f"usr_{rng.randint(1, 40):02d}"
        t_assign = t + timedelta(seconds=rng.uniform(5, 600))
        eid = ids.ulid("evt", t_assign)
        out.append(
            (
                eid,
                "conversation.assigned",
                t_assign,
                _kirim(
                    eid,
                    "conversation.assigned",
                    t_assign,
                    {
                        "conversation": {
                            "id": conversation,
                            "object": "conversation",
                            "status": "open",
                        },
                        "assignee": {
                            "user_id": agent,
                            "team_id": "team_support",
                            "previous_user_id": None,
                        },
                    },
                ),
            )
        )
        t_msg = t_assign
        for _ in range(rng.randint(1, 3)):
            t_msg = t_msg + timedelta(seconds=rng.uniform(10, 900))
            wamid = ids.wamid(customer)
            eid = ids.ulid("evt", t_msg)
            reply = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25)))
            out.append(
                (
                    eid,
                    "message.sent",
                    t_msg,
                    _kirim(
                        eid,
                        "message.sent",
                        t_msg,
                        {
                            "message": {
                                "to": customer,
                                "provider_id": wamid,
                                "source": "dashboard",
                                "body": reply,
                                "type": "text",
                            },
                            "meta": {"phone_number_id": phone_id},
                            "contact": {"phone_number": "+" + customer},
                            "session": phone_id,
                        },
                    ),
                )
            )
            failed = rng.random() < 0.03
            statuses = ["sent", "failed"] if failed else ["sent", "delivered"]
            if not failed and rng.random() < 0.7:
                statuses.append("read")
            ts = t_msg
            for status in statuses:
                ts = ts + timedelta(seconds=rng.uniform(0.5, 120))
                item: dict[str, object] = {
                    "id": wamid,
                    "status": status,
                    "timestamp": str(int(ts.timestamp())),
                    "recipient_id": customer,
                }
                if status != "read":
                    item["conversation"] = {
                        "id": billing,
                        "origin": {"type": "service"},
                    }
                    item["pricing"] = {
                        "billable": True,
                        "pricing_model": "CBP",
                        "category": "service",
                    }
                if status == "failed":
                    item["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
                out.append((wamid, "message.status", ts, _meta(phone_id, {"statuses": [item]})))
        t_close = t_msg + timedelta(seconds=rng.uniform(60, 7200))
        eid = ids.ulid("evt", t_close)
        out.append(
            (
                eid,
                "conversation.closed",
                t_close,
                _kirim(
                    eid,
                    "conversation.closed",
                    t_close,
                    {
                        "conversation": {
                            "id": conversation,
                            "object": "conversation",
                            "status": "resolved",
                            "closed_by_user_id": agent,
                        }
                    },
                ),
            )
        )
        for event_id, kind, when, body in out:
            headers = {
                "X-Kirim-Event": kind,
                "X-Kirim-Event-Id": event_id,
                "X-Kirim-Delivery-Id": ids.ulid("wbd", when),
                "X-Kirim-Attempt": "1",
                "X-Kirim-Signature": f"t={int(when.timestamp()) + 1},v1={ids.hexsig()}",
            }
            yield body, headers, when
            made += 1


KEPT_HEADERS = ("X-Kirim-Event", "X-Kirim-Event-Id", "X-Kirim-Delivery-Id", "X-Kirim-Attempt")


def delivery_line(body: bytes, headers: dict[str, str], received: datetime) -> bytes:
    """One delivery as received, as an NDJSON line: arrival time, kept headers, body."""
    kept = {name: headers[name] for name in KEPT_HEADERS}
    head = json.dumps({"received_at": received.isoformat(), "headers": kept}, separators=(",", ":"))
    return head[:-1].encode() + b',"body":' + body + b"}\n"


def generate(n: int, seed: int, days: int) -> tuple[list[pa.Table], dict[str, int], int]:
    """Arrow batches (arrival order, 3% retried copies), NDJSON byte counts of the unique
    deliveries (``bodies``, ``bodies_zstd``: the same compressed with zstd level 3 in 1 MB
    blocks, ``deliveries``: see :func:`delivery_line`), and the number of unique events."""
    rng = random.Random(seed + 1)
    batches: list[pa.Table] = []
    pending = []
    raw = {"bodies": 0, "bodies_zstd": 0, "deliveries": 0}
    block: list[bytes] = []
    unique = 0
    for body, headers, when in deliveries(n, seed, days):
        raw["bodies"] += len(body) + 1
        block.append(body)
        if len(block) >= 2000:
            raw["bodies_zstd"] += len(pa.compress(b"\n".join(block) + b"\n", "zstd", asbytes=True))
            block = []
        received = when + timedelta(seconds=rng.uniform(0.2, 3))
        raw["deliveries"] += len(delivery_line(body, headers, received))
        records = parse_delivery(body, headers, received_at=received)
        pending.extend(records)
        unique += len(records)
        if rng.random() < 0.03:  # a retry: new attempt, new signature, later arrival
            retry = dict(headers, **{"X-Kirim-Attempt": "2"})
            retry["X-Kirim-Signature"] = (
                f"t={int(when.timestamp()) + 61},v1={rng.randbytes(32).hex()}"
            )
            pending.extend(parse_delivery(body, retry, received_at=received + timedelta(60)))
        if len(pending) >= BATCH:
            batches.append(events_table(pending))
            pending = []
    if pending:
        batches.append(events_table(pending))
    if block:
        raw["bodies_zstd"] += len(pa.compress(b"\n".join(block) + b"\n", "zstd", asbytes=True))
    return batches, raw, unique


# --------------------------------------------------------------------------- measurements


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.parquet"))


def column_bytes(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Compressed bytes of some columns over all Parquet files under ``path``."""
    out = dict.fromkeys(names, 0)
    for file in path.rglob("*.parquet"):
        meta = pq.read_metadata(file)
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                if column.path_in_schema in out:
                    out[column.path_in_schema] += column.total_compressed_size
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def duckdb_rewrite(lake_root: Path, out: Path, *, dedup: bool) -> None:
    """DuckDB rewrites the same partitions from the same files (the baseline)."""
    files = [str(p) for p in sorted((lake_root / "events").rglob("*.parquet"))]
    listing = ", ".join("'" + f + "'" for f in files)
    source = f"read_parquet([{listing}], hive_partitioning = true)"
    select = f"SELECT * FROM {source}"
    if dedup:
        select += (
            " QUALIFY row_number() OVER (PARTITION BY event_key "
            "ORDER BY received_at, ingest_seq) = 1"
        )
    con = duckdb.connect()
    con.execute(
        f"COPY ({select}) TO '{out}' "
        "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (type, date), OVERWRITE_OR_IGNORE)"
    )
    con.close()


def write_lake(root: Path, batches: list[pa.Table]) -> float:
    lake = Lake(root, writer_id="bench")
    return timed(lambda: [lake.write_events(b) for b in batches])


def bench_write_compact(n: int, repeats: int, work: Path, seed: int) -> dict[str, float]:
    batches, raw, unique = generate(n, seed, DAYS)
    rows = sum(b.num_rows for b in batches)
    template = work / "template"
    write_s = write_lake(template, batches)
    del batches
    ours, duck, duck_plain = [], [], []
    compacted_bytes = duck_bytes = 0
    for i in range(repeats):
        root = work / f"run{i}"
        shutil.copytree(template, root)
        out = work / f"duck{i}"
        plain = work / f"plain{i}"
        duck.append(timed(lambda root=root, out=out: duckdb_rewrite(root, out, dedup=True)))
        duck_plain.append(
            timed(lambda root=root, plain=plain: duckdb_rewrite(root, plain, dedup=False))
        )
        report = Lake(root).compact()
        ours.append(report.seconds)
        assert report.rows_out == unique, (report.rows_out, unique)
        compacted_bytes = folder_bytes(root / "events")
        duck_bytes = folder_bytes(out)
        shutil.rmtree(out)
        shutil.rmtree(plain)
        if i < repeats - 1:
            shutil.rmtree(root)
    ids = ("event_key", "event_id", "delivery_id", "message_id")
    columns = column_bytes(work / f"run{repeats - 1}" / "events", ("payload", *ids))
    check = Lake(work / f"run{repeats - 1}")
    assert check.events().select(pl.len()).collect().item() == unique
    ndjson = work / "events.ndjson"
    check.events().collect().write_ndjson(ndjson)
    records_ndjson = ndjson.stat().st_size
    ndjson.unlink()
    return {
        "events": unique,
        "rows_written": rows,
        "write_rows_s": rows / write_s,
        "raw_ndjson_mb": raw["bodies"] / 1e6,
        "deliveries_ndjson_mb": raw["deliveries"] / 1e6,
        "records_ndjson_mb": records_ndjson / 1e6,
        "lake_mb": compacted_bytes / 1e6,
        "duckdb_out_mb": duck_bytes / 1e6,
        "ratio_raw": compacted_bytes / raw["bodies"],
        "ratio_deliveries": compacted_bytes / raw["deliveries"],
        "raw_zstd_mb": raw["bodies_zstd"] / 1e6,
        "payload_mb": columns["payload"] / 1e6,
        "ids_mb": sum(columns[c] for c in ids) / 1e6,
        "ratio_records": compacted_bytes / records_ndjson,
        "ours_s": statistics.median(ours),
        "duck_s": statistics.median(duck),
        "duck_plain_s": statistics.median(duck_plain),
        "ours_rows_s": rows / statistics.median(ours),
        "duck_rows_s": rows / statistics.median(duck),
        "duck_plain_rows_s": rows / statistics.median(duck_plain),
        "speed_vs_duck": statistics.median(duck) / statistics.median(ours),
        "speed_vs_duck_plain": statistics.median(duck_plain) / statistics.median(ours),
    }


def build_query_lake(source: Path, root: Path, factor: int) -> int:
    """A lake ``factor`` times bigger: the compacted events repeated over later days."""
    base = Lake(source).events().drop("date").collect()
    lake = Lake(root, writer_id="grow")
    for k in range(factor):
        shifted = base.with_columns(
            pl.col("occurred_at") + pl.duration(days=DAYS * k),
            pl.col("received_at") + pl.duration(days=DAYS * k),
            (pl.col("event_key") + f"#{k}") if k else pl.col("event_key"),
        )
        for chunk in shifted.iter_slices(500_000):
            lake.write_events(chunk.to_arrow())
    lake.compact()
    return base.height * factor


def bench_query(root: Path, repeats: int) -> dict[str, float]:
    lake = Lake(root)
    day = (START + timedelta(days=DAYS // 2)).date().isoformat()
    agg = [pl.len().alias("n"), pl.col("payload").str.len_bytes().sum().alias("bytes")]

    def pruned() -> int:
        return int(
            lake.events("message.status", since=day, until=day).select(agg).collect()["n"][0]
        )

    def pruned_rows() -> int:
        return lake.events("message.status", since=day, until=day).collect().height

    def full() -> int:
        return int(lake.events().select(agg).collect()["n"][0])

    def full_filtered() -> int:
        # The same answer without our pruning: every file, filtered on the columns.
        files = [str(p) for p in (root / "events").rglob("*.parquet")]
        lf = pl.scan_parquet(files, hive_partitioning=False, include_file_paths="_path")
        lo = datetime.fromisoformat(day).replace(tzinfo=UTC)
        return (
            lf.filter(
                pl.col("_path").str.contains("type=message.status/", literal=True)
                & pl.col("occurred_at").is_between(lo, lo + timedelta(days=1), closed="left")
            )
            .select(agg)
            .collect()["n"][0]
        )

    results: dict[str, list[float]] = {"pruned": [], "pruned_rows": [], "full": [], "scan": []}
    for _ in range(repeats):
        results["pruned"].append(timed(pruned))
        results["pruned_rows"].append(timed(pruned_rows))
        results["full"].append(timed(full))
        results["scan"].append(timed(full_filtered))
    n_day = pruned()
    assert n_day == full_filtered() > 0
    sql_s = timed(
        lambda: lake.sql(
            f"select count(*) from events where type = 'message.status' and date = '{day}'"
        ).fetchall()
    )
    return {
        "rows_day": n_day,
        "pruned_s": statistics.median(results["pruned"]),
        "pruned_rows_s": statistics.median(results["pruned_rows"]),
        "full_s": statistics.median(results["full"]),
        "scan_s": statistics.median(results["scan"]),
        "sql_day_s": sql_s,
        "files": len(list((root / "events").rglob("*.parquet"))),
    }


# --------------------------------------------------------------------------- report


def render(scale: float, rows: list[dict[str, float]], queries: list[dict[str, float]]) -> str:
    lines = [
        f"`--scale {scale}`. Medians of the repeats; synthetic Kirim-shaped events over "
        f"{DAYS} days, 3% retried copies, written in batches of {BATCH:,}.",
        "",
        "Write and compact (compaction dedups; DuckDB baseline rewrites the same files with "
        "`COPY ... TO ... (FORMAT parquet, PARTITION_BY (type, date))`):",
        "",
        "| events | write rows/s | compact rows/s | DuckDB COPY dedup rows/s | ours / DuckDB "
        "| DuckDB COPY plain rows/s | ours / plain | lake MB | bodies NDJSON MB "
        "| lake / bodies | deliveries NDJSON MB | lake / deliveries | rows NDJSON MB "
        "| lake / rows |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['events']):,} | {r['write_rows_s']:,.0f} | {r['ours_rows_s']:,.0f} "
            f"| {r['duck_rows_s']:,.0f} | {r['speed_vs_duck']:.2f} | {r['duck_plain_rows_s']:,.0f} "
            f"| {r['speed_vs_duck_plain']:.2f} | {r['lake_mb']:,.1f} | {r['raw_ndjson_mb']:,.1f} "
            f"| {r['ratio_raw']:.1%} | {r['deliveries_ndjson_mb']:,.1f} "
            f"| {r['ratio_deliveries']:.1%} | {r['records_ndjson_mb']:,.1f} "
            f"| {r['ratio_records']:.1%} |"
        )
    lines += [
        "",
        "Where the bytes go (compacted lake): the `payload` column alone (the exact bodies), "
        "the four id columns design.md asks for beside it (`event_key`, `event_id`, "
        "`delivery_id`, `message_id`: random ids, three of them repeated from the body), and "
        "the bodies NDJSON compressed with zstd -3 in 1 MB blocks for reference:",
        "",
        "| events | payload column MB | payload / bodies | id columns MB | ids / bodies "
        "| bodies NDJSON zstd MB | zstd / bodies |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['events']):,} | {r['payload_mb']:,.1f} "
            f"| {r['payload_mb'] / r['raw_ndjson_mb']:.1%} | {r['ids_mb']:,.1f} "
            f"| {r['ids_mb'] / r['raw_ndjson_mb']:.1%} "
            f"| {r['raw_zstd_mb']:,.1f} | {r['raw_zstd_mb'] / r['raw_ndjson_mb']:.1%} |"
        )
    lines += [
        "",
        "Reads on a compacted lake (one type, one day vs every row; both compute "
        "`count(*)` and `sum(len(payload))`; `scan` is plain Polars over every file filtered "
        "on the columns, i.e. the same answer without our partition pruning):",
        "",
        "| lake events | files | rows in the day | events(type, day) s | same, all columns "
        "collected s | full events() s | full / pruned | plain scan + filter s "
        "| scan / pruned | sql() one day s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q in sorted(queries, key=lambda q: q["events"]):
        lines.append(
            f"| {int(q['events']):,} | {int(q['files']):,} | {int(q['rows_day']):,} "
            f"| {q['pruned_s']:.3f} | {q['pruned_rows_s']:.3f} | {q['full_s']:.2f} "
            f"| {q['full_s'] / q['pruned_s']:.0f}x | {q['scan_s']:.2f} "
            f"| {q['scan_s'] / q['pruned_s']:.0f}x | {q['sql_day_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1, help="1.0 = 1M events (10M query)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--query-factor", type=int, default=10)
    parser.add_argument("--steps", default="", help="extra write/compact scales, e.g. 0.1,0.3")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    _results.add_arguments(parser)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_lake_", dir=args.work))
    scales = sorted({float(s) for s in args.steps.split(",") if s} | {args.scale})
    rows, queries = [], []
    try:
        for scale in scales:
            n = int(1_000_000 * scale)
            folder = work / f"wc{n}"
            folder.mkdir()
            print(f"write+compact {n:,} events ...", file=sys.stderr)
            r = bench_write_compact(n, args.repeats, folder, args.seed)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr)
            for factor in sorted({1, args.query_factor}):
                qroot = work / f"q{n}x{factor}"
                print(f"query lake {factor}x ...", file=sys.stderr)
                if factor == 1:
                    shutil.copytree(folder / f"run{args.repeats - 1}", qroot)
                    events = r["events"]
                else:
                    events = build_query_lake(folder / f"run{args.repeats - 1}", qroot, factor)
                q = bench_query(qroot, max(args.repeats, 5))
                q["events"] = events
                queries.append(q)
                print(json.dumps(q), file=sys.stderr)
                shutil.rmtree(qroot)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = render(args.scale, rows, queries)
    print(section)
    versions = [f"polars {pl.__version__}", f"duckdb {duckdb.__version__}"]
    versions.append(f"pyarrow {pa.__version__}")
    _results.record(args, HEADING, section, versions=versions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
