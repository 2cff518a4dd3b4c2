"""Benchmark: backfill of the emulator's delivery history over loopback HTTP, under a rate limit.

Setup: the emulator's REST app holds ``100,000 x --scale`` signed deliveries (payload included)
and runs in its own process on a loopback uvicorn, with ``--latency`` seconds added to every
request and a read limit of ``--limit`` requests per minute (a token bucket holding one
minute's worth). Before each run the server spends the bucket at once
(``Emulator.spend_rate_limit``, as another user of the key would), so every run is
limit-bound from its first request, whatever the limit.

Each run is a fresh process (so its peak RSS is its own) doing a full ``backfill()`` of the
selected share of the history with ``--slices`` parallel slices: journal, checkpoints and the
final flush to the lake included. Baseline, same run, same limit: the same client and slices
with header pacing switched off (it only honours Retry-After on a 429), i.e. what a plain
"retry on 429" client does. Reported: 2xx requests/s against the limit, 429s served, wall time,
peak RSS, for two history sizes to show memory stays flat.

    .venv/bin/python benchmarks/bench_backfill.py --scale 0.3 --write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # the one writer of RESULTS.md

HEADING = "## Backfill: history over loopback HTTP under a rate limit (bench_backfill.py)"
FULL = 100_000
SPEND = "/_bench/spend"  # the benchmark server's own route: spend the read limit now


# --------------------------------------------------------------------------- server process


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from kirim_events.emulator import Emulator, FaultConfig, WorldConfig

    # Meta bodies with the opt-in `kirim` block, as in the figures recorded so far
    emu = Emulator(
        seed=7,
        world=WorldConfig(kirim_block=True),
        read_limit=args.limit,
        faults=FaultConfig(latency=args.latency, latency_rate=1.0),
    )
    emu.subscribe("https://example.test/webhooks/kirim")
    for _ in emu.iter_deliveries(None):
        if len(emu.store.deliveries) >= args.deliveries:
            break
    times = sorted(r.created_at for r in emu.store.deliveries)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The emulator's API, plus the benchmark's own ``POST /_bench/spend``: another
        user of the key spends the read limit (outside the API: no latency, no token)."""
        if scope["type"] == "http" and scope["path"] == SPEND and scope["method"] == "POST":
            emu.spend_rate_limit()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await emu.app(scope, receive, send)

    port = args.port
    ready = {
        "port": port,
        "key": emu.api_keys[0].reveal(),
        "times": times,  # every row's: the runs are checked to store exactly those in range
    }
    ready["last"] = times[-1]
    ready["n"] = len(times)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", backlog=256)
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started:
            time.sleep(0.05)
        print(json.dumps(ready), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()


# --------------------------------------------------------------------------- one measured run


class Recording(httpx.HTTPTransport):
    """Counts answers and remembers when the first and last ones arrived."""

    def __init__(self) -> None:
        super().__init__(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self.lock = threading.Lock()
        self.codes: dict[int, int] = {}
        self.first = self.last = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        now = time.monotonic()
        with self.lock:
            self.codes[response.status_code] = self.codes.get(response.status_code, 0) + 1
            self.first = self.first or now
            self.last = now
        return response


def run_once(args: argparse.Namespace) -> None:
    from kirim_events.backfill import backfill
    from kirim_events.client import KirimClient, RateLimiter
    from kirim_events.lake import Lake  # noqa: F401  (imported before the baseline RSS)

    class NoPacing(RateLimiter):
        """Baseline: ignore the X-RateLimit headers (429 + Retry-After still honoured)."""

        def release(self, klass: str, headers: Any, *, refused: bool = False) -> None:
            super().release(klass, None, refused=refused)

        def block(self, klass: str, seconds: float) -> None:
            # waits out Retry-After, then sends as before: none of ours' probing either
            super().block(klass, seconds)
            self._bucket(klass).window = None

    drain(args.url)  # here, after the imports: the run starts limit-bound
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    transport = Recording()
    limiter = None if args.pacing else NoPacing()
    client = KirimClient(args.url, args.key, transport=transport, limiter=limiter, max_attempts=50)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as data:
        report = backfill(
            data,
            client=client,
            since=datetime.fromtimestamp(args.since, UTC),
            until=datetime.fromtimestamp(args.until, UTC),
            slices=args.slices,
        )
    wall = time.monotonic() - started
    ok = sum(n for code, n in transport.codes.items() if 200 <= code < 300)
    fetch = transport.last - transport.first
    out = {
        "rows": report.rows,
        "events": report.events_new,
        "ok_requests": ok,
        "n429": transport.codes.get(429, 0),
        "fetch_s": fetch,
        "ok_per_s": (ok - 1) / fetch if fetch > 0 else 0.0,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
    }
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drain(url: str) -> None:
    """Spend the read bucket so the run starts limit-bound (another user of the key).

    The server empties it at once: spending it with requests (64 connections until a 429)
    took a minute's worth of them and more, and never ended once the bucket refilled faster
    than they were answered (above about 11,000/min on 2 cores with 0.25 s of latency; at
    9,000 it took minutes)."""
    response = httpx.post(url + SPEND, timeout=30)
    if response.status_code != 204:
        raise RuntimeError(f"the emulator did not spend its read limit: {response.status_code}")


def measure(
    url: str, key: str, since: float, until: float, slices: int, pacing: bool
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--run", "--url", url, "--key", key,
           "--since", repr(since), "--until", repr(until), "--slices", str(slices)]  # fmt: skip
    if not pacing:
        cmd.append("--no-pacing")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env={**os.environ})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.3, help="share of 100,000 deliveries")
    p.add_argument("--steps", default="0.2,1.0", help="history shares measured (of --scale)")
    p.add_argument("--limit", type=int, default=1200, help="read requests per minute")
    p.add_argument("--latency", type=float, default=0.25, help="seconds added per request")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    _results.add_arguments(p)
    # internal modes
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--deliveries", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--since", type=float, help=argparse.SUPPRESS)
    p.add_argument("--until", type=float, help=argparse.SUPPRESS)
    p.add_argument("--no-pacing", dest="pacing", action="store_false", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args)
        return
    if args.run:
        run_once(args)
        return

    n = int(FULL * args.scale)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--deliveries", str(n), "--port", str(port),
         "--limit", str(args.limit), "--latency", str(args.latency)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        url, key, times = f"http://127.0.0.1:{port}", ready["key"], ready["times"]
        rows = []
        limit_per_s = args.limit / 60
        for step in [float(s) for s in args.steps.split(",")]:
            cut = times[min(len(times) - 1, int(len(times) * step))] if step < 1 else None
            since, until = times[0] - 1, (cut if cut is not None else ready["last"] + 1)
            expected = sum(1 for t in times if since <= t < until)
            for pacing in (False, True):
                runs = [measure(url, key, since, until, args.slices, pacing)
                        for _ in range(args.repeats)]  # fmt: skip
                wrong = [r["rows"] for r in runs if r["rows"] != expected]
                if wrong:  # a fast run that lost or repeated rows proves nothing
                    raise SystemExit(f"backfill stored {wrong} rows, the history has {expected}")
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                med["pacing"] = pacing
                med["step"] = step
                rows.append(med)
                print(json.dumps(med), flush=True)
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
    text = render(args, n, rows, limit_per_s)
    print(text)
    _results.record(args, HEADING, text)


def render(args: argparse.Namespace, n: int, rows: list[dict[str, Any]], limit: float) -> str:
    lines = [
        f"`--scale {args.scale}` = {n:,} deliveries with payloads in the emulator (its own "
        "process, loopback uvicorn), "
        f"{args.latency:g} s added to every request, read limit {args.limit}/min "
        f"({limit:g} requests/s; the bucket is spent before each run), page size 100, "
        f"{args.slices} slices. Medians of {args.repeats} run(s); each run is a fresh process "
        "doing the whole backfill (journal, checkpoint per page, flush to the lake); the full "
        "100,000-row size fits here because the run is paced by the limit, not by the "
        f"{os.cpu_count()} cores.",
        "",
        "| history rows | client | 2xx requests/s | vs limit | 429s served | fetch s | wall s "
        "| rows/s (wall) | peak RSS MB | RSS growth MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        who = "kirim-events (header pacing)" if r["pacing"] else "baseline: retry on 429 only"
        lines.append(
            f"| {int(r['rows']):,} | {who} | {r['ok_per_s']:.1f} | {r['ok_per_s'] / limit:.0%} "
            f"| {int(r['n429'])} | {r['fetch_s']:.1f} | {r['wall_s']:.1f} "
            f"| {r['rows'] / r['wall_s']:,.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['rss_growth_mb']:.0f} |"
        )
    ours = [r for r in rows if r["pacing"]]
    base = [r for r in rows if not r["pacing"]]
    if len(ours) >= 2:
        lines += ["", _reading(ours, base, limit)]
    return "\n".join(lines) + "\n"


def _reading(ours: list[dict[str, Any]], base: list[dict[str, Any]], limit: float) -> str:
    """The paragraph under the table, from the runs: what it says of memory and of wall
    time follows the figures (flat memory only within 1.25x; linear time only when the
    time per row stays within 25%)."""
    from kirim_events.backfill import _FLUSH_BATCH  # here: the parent's RSS is not measured

    small, big = ours[0], ours[-1]
    rows, memory = big["rows"] / small["rows"], big["peak_rss_mb"] / small["peak_rss_mb"]
    time_per_row = (big["wall_s"] / big["rows"]) / (small["wall_s"] / small["rows"])
    text = (
        f"Reading: with header pacing the backfill holds {big['ok_per_s'] / limit:.0%} of "
        f"the limit on {int(big['rows']):,} rows ({small['ok_per_s'] / limit:.0%} on "
        f"{int(small['rows']):,}) and was answered 429 {int(sum(r['n429'] for r in ours))} "
        f"time(s) in total, against {int(sum(r['n429'] for r in base))} for the baseline "
        "that only reacts to 429s (it runs past the limit and then waits out Retry-After). "
        f"Peak RSS: {small['peak_rss_mb']:.0f} MB at {int(small['rows']):,} rows, "
        f"{big['peak_rss_mb']:.0f} MB at {int(big['rows']):,} ({rows:.0f}x the rows, "
        f"{memory:.2f}x the memory)"
    )
    if memory <= 1.25:
        text += (
            f": pages stream through the journal and the final flush moves {_FLUSH_BATCH:,} "
            "events at a time, so memory does not grow with the history; most of the peak is "
            "the imported libraries (polars, pyarrow, duckdb)."
        )
    else:
        text += ": memory grew with the history here."
    text += f" Wall time per row at {int(big['rows']):,} rows is {time_per_row:.2f}x that at " + (
        f"{int(small['rows']):,}: "
        + ("linear in the rows." if 0.75 <= time_per_row <= 1.25 else "not linear in the rows.")
    )
    return text


if __name__ == "__main__":
    main()
