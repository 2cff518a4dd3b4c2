"""Benchmark `collect` against a bare ASGI app and a naive commit-per-request receiver.

All three run on the same server stack (uvicorn, one process, same settings) in a child
process on a loopback port, and are driven by the same load generators in another process:

* throughput: ``wrk`` (closed loop, C connections) replaying pre-signed, distinct webhook
  requests; falls back to this script's own asyncio client when ``wrk`` is not installed;
* latency at a fixed rate: this script's open-loop asyncio client at half of collect's
  measured requests/s; latency counts from each request's *scheduled* send time, so queueing
  behind a slow server is not hidden (no coordinated omission).

Targets:

* ``bare``: reads the body and answers 200; no verification, no storage. The ceiling.
* ``naive``: verifies the signature, parses, then ``INSERT`` + ``COMMIT`` in SQLite
  (WAL, ``synchronous=FULL``) once per request, on the event loop: one fsync per request.
* ``collect``: ``kirim_events.collect()`` itself: verify, parse, journal with group commit
  (fsync before every 2xx), background flusher into the lake every 5 s.

Usage::

    python benchmarks/bench_collect.py --scale 1 --write  # adds the run to benchmarks/RESULTS.md
    python benchmarks/bench_collect.py --scale 0.5        # prints it only

``--scale`` multiplies the run length (and so the number of events journaled per run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # the one writer of RESULTS.md

SECRET = "whsec_bench_secret"
PATH = "/webhooks/kirim"
HEADING = "## Collector (bench_collect.py)"
TARGETS = ("bare", "naive", "collect")


# --------------------------------------------------------------------------- servers


async def _lifespan_or_none(scope: dict[str, Any], receive: Any, send: Any) -> bool:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return True
    return scope["type"] != "http"


async def _read(receive: Any) -> bytes:
    chunks = []
    more = True
    while more:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        more = msg.get("more_body", False)
    return b"".join(chunks)


async def _reply(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bare_app() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await _lifespan_or_none(scope, receive, send):
            return
        await _read(receive)
        await _reply(send, 200, b'{"ok":true}')

    return app


def naive_app(data: Path) -> Any:
    from kirim_events.errors import PayloadError, SignatureError
    from kirim_events.events import parse_delivery
    from kirim_events.signing import verify

    data.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data / "naive.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (event_key TEXT PRIMARY KEY, payload TEXT)")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await _lifespan_or_none(scope, receive, send):
            return
        body = await _read(receive)
        if scope["method"] == "GET":
            await _reply(send, 200, b'{"ok":true}')
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            verify(body, headers.get("x-kirim-signature"), SECRET)
            records = parse_delivery(body, headers)
        except (SignatureError, PayloadError):
            await _reply(send, 401, b"{}")
            return
        conn.execute("BEGIN")
        for r in records:
            conn.execute("INSERT OR IGNORE INTO events VALUES (?, ?)", (r.event_key, r.payload))
        conn.execute("COMMIT")  # one fsync per request
        await _reply(send, 200, b'{"ok":true}')

    return app


def serve(kind: str, port: int, data: Path) -> None:
    """Run one target in this process until SIGTERM."""
    os.environ["KIRIM_WEBHOOK_SECRET"] = SECRET
    if kind == "collect":
        import kirim_events

        kirim_events.collect(data, port=port, secrets=SECRET, flush_interval=5.0)
        return
    import uvicorn

    app = bare_app() if kind == "bare" else naive_app(data)
    # The same uvicorn settings collect() uses.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


class Server:
    def __init__(self, kind: str, data: Path) -> None:
        self.kind, self.data = kind, data
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, __file__, "--serve", kind, "--port", str(self.port)]
        cmd += ["--data", str(data)]
        self.log = open(data.parent / f"{kind}-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        log = (data.parent / f"{kind}-{self.port}.log").read_text(errors="replace")
        raise RuntimeError(f"{kind} server did not start:\n{log[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


# --------------------------------------------------------------------------- requests


def make_requests(n: int, port: int, seed: int) -> bytes:
    """``n`` distinct signed webhook requests as raw HTTP/1.1, NUL-separated."""
    from kirim_events import testing

    rng = random.Random(seed)
    now = int(time.time())
    out = []
    for i in range(n):
        body = testing.kirim_event(rng=rng) if i % 2 else testing.meta_status(rng=rng)
        req = testing.signed_request(body, SECRET, timestamp=now, rng=rng)
        head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        head += f"Content-Length: {len(req.body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
        out.append(head.encode() + req.body)
    return b"\0".join(out)


WRK_SCRIPT = r"""
local reqs = {}
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while pos <= #data do
    local stop = string.find(data, "\0", pos, true)
    if not stop then stop = #data + 1 end
    reqs[#reqs + 1] = string.sub(data, pos, stop - 1)
    pos = stop + 1
  end
end
local i = 0
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non2xx":%d,"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def run_wrk(port: int, reqfile: Path, seconds: float, connections: int) -> dict[str, float]:
    script = reqfile.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    cmd += ["-s", str(script), f"http://127.0.0.1:{port}{PATH}", "--", str(reqfile)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    doc = json.loads(line[8:])
    return {
        "rps": doc["requests"] / (doc["duration_us"] / 1e6),
        "p50_ms": doc["p50_us"] / 1000,
        "p99_ms": doc["p99_us"] / 1000,
        "requests": doc["requests"],
        "bad": doc["non2xx"] + doc["errors"],
    }


# --------------------------------------------------------------------------- own load generator


async def _loadgen(
    port: int, reqs: list[bytes], rate: float, seconds: float, connections: int
) -> dict[str, float]:
    """Closed loop when ``rate`` is 0, else open loop at ``rate`` requests/s."""
    latencies: list[float] = []
    bad = 0
    total = len(reqs) if rate == 0 else min(len(reqs), int(rate * seconds))
    start = time.perf_counter() + 0.2
    stop_at = start + seconds

    async def conn(worker: int) -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for k in range(worker, total, connections):
            due = start + k / rate if rate else time.perf_counter()
            if rate == 0 and due > stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(reqs[k])
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            bad += status != 200
        writer.close()

    await asyncio.gather(*(conn(w) for w in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "requests": len(latencies),
        "bad": bad,
    }


def run_loadgen(
    port: int, reqfile: Path, rate: float, seconds: float, connections: int
) -> dict[str, float]:
    """Run this script's load generator in its own process; return its figures."""
    cmd = [sys.executable, __file__, "--loadgen", str(reqfile), "--port", str(port)]
    cmd += ["--rate", str(rate), "--seconds", str(seconds), "--connections", str(connections)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- driver


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    seconds = 4.0 * args.scale
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    throughput: dict[str, list[dict[str, float]]] = {t: [] for t in TARGETS}
    n_max = int(args.max_rps * seconds)
    for rep in range(args.repeats):
        for kind in TARGETS:
            data = workdir / f"{kind}-{rep}"
            server = Server(kind, data)
            try:
                reqfile = workdir / f"req-{kind}-{rep}.bin"
                reqfile.write_bytes(make_requests(n_max, server.port, seed=rep * 10 + 1))
                if use_wrk:
                    got = run_wrk(server.port, reqfile, seconds, args.connections)
                else:
                    got = run_loadgen(server.port, reqfile, 0, seconds, args.connections)
                got["distinct_share"] = min(1.0, n_max / max(1, got["requests"]))
                throughput[kind].append(got)
                print(f"throughput {kind} rep {rep}: {got}", file=sys.stderr)
            finally:
                server.stop()
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in throughput.items()}
    rate = 0.5 * med["collect"]["rps"]
    latency: dict[str, list[dict[str, float]]] = {t: [] for t in TARGETS}
    for rep in range(args.repeats):
        for kind in TARGETS:
            data = workdir / f"lat-{kind}-{rep}"
            server = Server(kind, data)
            try:
                reqfile = workdir / f"lat-{kind}-{rep}.bin"
                reqfile.write_bytes(make_requests(int(rate * seconds) + 10, server.port, rep + 99))
                got = run_loadgen(server.port, reqfile, rate, seconds, args.connections)
                latency[kind].append(got)
                print(f"latency {kind} @ {rate:.0f}/s rep {rep}: {got}", file=sys.stderr)
            finally:
                server.stop()
    lat = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in latency.items()}
    return {
        "fsync_ms": fsync_ms(workdir),
        "load": load_average(),
        "throughput": med,
        "latency": lat,
        "rate": rate,
        "seconds": seconds,
        "loadgen": "wrk 1 thread" if use_wrk else "asyncio client",
    }


def fsync_ms(folder: Path, n: int = 50) -> float:
    """Median time of a 4 KiB write + fsync in ``folder`` (the disk's commit cost now)."""
    times = []
    with open(folder / "fsync-probe", "wb") as fh:
        for _ in range(n):
            fh.write(b"x" * 4096)
            fh.flush()
            t = time.perf_counter()
            os.fsync(fh.fileno())
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def load_average() -> float:
    return os.getloadavg()[0]


def render(runs: dict[float, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Closed loop over {args.connections} connections; medians of {args.repeats} runs per "
        "figure, each "
        "target in its own uvicorn process (one worker, h11, asyncio loop), load generator in "
        f"another process on the same {os.cpu_count()} cores.",
        "",
    ]
    for scale, res in runs.items():
        tp, lat = res["throughput"], res["latency"]
        bare = tp["bare"]["rps"]
        lines += [
            f"### scale {scale}: {res['seconds']:.0f} s per run, throughput by {res['loadgen']}",
            "",
            f"Disk fsync median {res['fsync_ms']:.2f} ms, 1-min load average "
            f"{res['load']:.1f} at the end of the runs. Share of distinct requests in the "
            f"closed-loop runs (the rest are wrk replaying its pool): collect "
            f"{tp['collect']['distinct_share']:.2f}, naive {tp['naive']['distinct_share']:.2f}.",
            "",
            "| target | req/s (closed loop) | vs bare | p50 ms | p99 ms | "
            f"p50 ms @ {res['rate']:.0f}/s | p99 ms @ {res['rate']:.0f}/s | non-200 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for kind in TARGETS:
            t, q = tp[kind], lat[kind]
            lines.append(
                f"| {kind} | {t['rps']:.0f} | {t['rps'] / bare:.2f} | {t['p50_ms']:.1f} | "
                f"{t['p99_ms']:.1f} | {q['p50_ms']:.1f} | {q['p99_ms']:.1f} | "
                f"{int(t['bad'] + q['bad'])} |"
            )
        ratio = tp["collect"]["rps"] / bare
        lines += [
            "",
            f"collect / bare = **{ratio:.2f}** (target >= 0.5), collect / naive = "
            f"**{tp['collect']['rps'] / tp['naive']['rps']:.2f}**; collect p99 at half its "
            f"throughput ({res['rate']:.0f} req/s, open loop) = **{lat['collect']['p99_ms']:.1f} "
            "ms** (target < 50 ms).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, nargs="+", default=[1.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    # Above any target's rate, so that collect never sees wrk's wrap-around (replays of the
    # first requests are duplicates, cheaper to journal); bare may wrap, it ignores bodies.
    p.add_argument("--max-rps", type=float, default=12000, help="requests pre-signed per second")
    p.add_argument("--no-wrk", action="store_true", help="use the asyncio client for throughput")
    _results.add_arguments(p)
    p.add_argument("--serve", choices=TARGETS, help=argparse.SUPPRESS)
    p.add_argument("--loadgen", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data)
        return
    if args.loadgen:
        reqs = Path(args.loadgen).read_bytes().split(b"\0")
        result = asyncio.run(_loadgen(args.port, reqs, args.rate, args.seconds, args.connections))
        print(json.dumps(result))
        return
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        for scale in args.scale:
            args.scale = scale
            runs[scale] = measure(args, Path(tmp) / f"s{scale}")
    args.scale = list(runs)
    text = render(runs, args)
    print(text)
    _results.record(args, HEADING, text)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
