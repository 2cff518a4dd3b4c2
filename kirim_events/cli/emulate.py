"""``kirim-events emulate``: a local Kirim that sends signed webhooks and serves the REST API."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import httpx
import typer
import uvicorn
from rich.table import Table

from kirim_events.cli._app import (
    command,
    console,
    errors_to_exit,
    print_error,
    print_note,
    settings,
)
from kirim_events.config import shown_url, valid_host
from kirim_events.emulator import (
    SCHEDULE,
    Emulator,
    EngineConfig,
    EngineReport,
    FaultConfig,
    WorldConfig,
)
from kirim_events.emulator.apistate import KEY_PATTERN
from kirim_events.emulator.world import World
from kirim_events.errors import ConfigError
from kirim_events.listen import listen_socket
from kirim_events.printable import printable
from kirim_events.serving import Served
from kirim_events.stopsignals import handling
from kirim_events.timearg import parse_when

# Seconds the default start leaves between the world's last event and now: its deliveries
# are stamped a little after their events.
_END_MARGIN = 60
_HISTORY_URL = "https://example.invalid/webhooks/kirim"
STOP_GRACE = 3
"""Seconds a stop waits for the API's requests in flight (the emulator answers at once but
for the latency its faults add) before it cuts them off."""

# Kirim purges delivery rows 30 days after creation (kirim-api.md §3): the API serves that window
RETENTION_DAYS = 30.0
# a lost_ack is a 2xx the emulator sends again, as if the answer never reached Kirim
_ACKNOWLEDGED = ("succeeded", "lost_ack")


_SLOW_SPAN = 1_000_000  # events from which _world_span takes long enough to say so


def _world_span(config: WorldConfig, seed: int, events: int) -> int:
    """Simulated seconds from a world's start to its last event. The world is the same
    from any start (shifted), so generating it once from 0 measures it (0.1 s per 10,000
    events); a fixed rate per event had dated up to a fifth of the traffic in the future."""
    return max((e.at for e in World(config, seed=seed, start=0).events(max_events=events)),
               default=0)  # fmt: skip


def _start(value: str | None, span: int, *, now: float | None = None) -> int:
    """The world's first instant (unix seconds): ``--start`` as given, or by default early
    enough that its ``span`` seconds end ``_END_MARGIN`` before ``now``."""
    at = time.time() if now is None else now
    if value is None:
        return int(at) - span - _END_MARGIN
    # as --since / --until read theirs: a date, ISO-8601, or a span ago; no unix seconds
    parsed = parse_when(value, now=datetime.fromtimestamp(at, UTC), name="--start")
    if not 1970 <= parsed.year <= 9000:  # the world runs on from it, in Kirim's time format
        raise ConfigError(f"--start must be between 1970 and 9000, got {value!r}")
    return int(parsed.timestamp())


def _check_send_to(url: str) -> None:
    """ConfigError for a URL no request can go to (found now, not after the run)."""
    try:
        parsed = httpx.URL(url)
        ok = parsed.scheme in ("http", "https") and bool(parsed.host)
        ok = ok and valid_host(parsed.raw_host.decode("ascii", "replace"))
    except httpx.InvalidURL:
        ok = False
    if ok and parsed.port is not None and not 0 < parsed.port < 65536:
        # it said "must be an http:// or https:// URL with a host" of a URL with both
        raise ConfigError(
            f"--send-to's port {parsed.port} is no TCP port (1 to 65535), got {shown_url(url)!r}"
        )
    if not ok:
        # the path is not shown (it may hold a secret): say what is missing from the rest
        hint = "" if "://" in url else ": write http:// or https:// in front of it"
        raise ConfigError(
            f"--send-to must be an http:// or https:// URL with a host, got {shown_url(url)!r}"
            f"{hint}"
        )


def _own_api(url: str, port: int) -> bool:
    """Whether ``url`` (checked by :func:`_check_send_to`) names the API this command serves
    on 127.0.0.1:``port``: a loopback host, or the unspecified address (0.0.0.0, ``::``: a
    client sends to this host), on that port."""
    parsed = httpx.URL(url)
    host = parsed.host.lower()
    try:
        address = ipaddress.ip_address(host)
        loopback = address.is_loopback or address.is_unspecified
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    target = parsed.port or (443 if parsed.scheme == "https" else 80)
    return loopback and target == port


def _history(emu: Emulator) -> Table:
    """What a run without --send-to made: a history to page, nothing sent."""
    table = Table("history", "value")
    table.add_row("world events", str(len(emu.truth)))
    table.add_row("delivery rows", str(len(emu.store.deliveries)))
    for status, n in sorted(Counter(row.status for row in emu.store.deliveries).items()):
        table.add_row(f"rows with status {status}", str(n))
    # a --start over 30 days ago: the table counted rows the API then never listed
    cutoff = emu.clock() - RETENTION_DAYS * 86400
    if purged := sum(1 for row in emu.store.deliveries if row.created_at < cutoff):
        table.add_row(f"rows older than {RETENTION_DAYS:g} days (purged: not served)", str(purged))
    return table


def _summary(report: EngineReport, emu: Emulator) -> Table:
    table = Table("deliveries", "value", title="emulated Kirim deliveries")
    table.add_row("world events", str(len(emu.truth)))
    table.add_row("delivery rows", str(len(emu.store.deliveries)))
    table.add_row("attempts", str(report.attempts + report.interrupted))
    table.add_row("succeeded", str(report.succeeded))
    table.add_row("retries scheduled", str(report.retries))
    table.add_row("deliveries sent twice (a lost ack)", str(report.duplicates))
    table.add_row("failed (permanent 4xx)", str(report.failed))
    table.add_row("dead (8 attempts)", str(report.dead))
    failures = [a for a in emu.store.attempts if a.outcome not in _ACKNOWLEDGED]
    if failures:
        reasons = Counter(_reason(a.response_status_code, a.error) for a in failures)
        shown = ", ".join(f"{why} x{n}" for why, n in reasons.most_common(4))
        more = len(reasons) - 4
        table.add_row("failed attempts by reason", shown + (f" (+{more} more)" if more > 0 else ""))
        last = failures[-1]
        why = last.error or f"HTTP {last.response_status_code}"
        table.add_row("the last failure", printable(why))
    # pending at the stop (Kirim would still send them): between attempts, or not tried yet
    # (held back to arrive out of order), or cut short by the stop (no retry set); the rows
    # held for a disabled subscription apart
    held_ids = {row.id for rows in emu.store.held.values() for row in rows}
    pending = [r for r in emu.store.deliveries if r.status == "pending" and r.id not in held_ids]
    retrying = sum(1 for row in pending if row.attempt and row.next_retry_at is not None)
    untried = sum(1 for row in pending if not row.attempt)
    if retrying:
        table.add_row("deliveries awaiting a retry not yet due", str(retrying))
    if untried:
        table.add_row("deliveries not yet attempted", str(untried))
    if report.interrupted:
        table.add_row("attempts cut short by the stop", str(report.interrupted))
    if report.disabled:
        disabled = ", ".join(report.disabled)
        table.add_row("subscriptions disabled (failed or dead deliveries in a row)", disabled)
        table.add_row("events not sent (subscription disabled)", str(report.unsent))
        table.add_row("deliveries held (queued when disabled)", str(len(held_ids)))
    if report.errors:
        table.add_row("engine errors (the first)", f"{len(report.errors)} ({report.errors[0]})")
    table.add_row("events never acknowledged", str(len(emu.unacknowledged_event_keys())))
    return table


def _about(seconds: float) -> str:
    """``seconds`` rounded for a person: ``31 s``, ``52 min``, ``2.5 h``, ``31 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.2g} h"


def _retry_note(compression: float) -> str:
    """How long a failing delivery keeps the sending going, and how to shorten it."""
    nominal = sum(SCHEDULE)
    said = f"Kirim tries a failing delivery {len(SCHEDULE)} times over about {_about(nominal)}"
    if compression == 1:
        return (
            f"{said}; --time-compression 3600 makes that about {_about(nominal / 3600)},"
            " and Ctrl+C stops sooner"
        )
    here = f"here about {_about(nominal / compression)} (--time-compression {compression:g})"
    return f"{said}, {here}; Ctrl+C stops sooner"


def _reason(code: int | None, error: str | None) -> str:
    """A failed attempt's reason, short enough to count: ``HTTP 401``, ``timeout``,
    ``ConnectError``."""
    if error:
        return printable(error.split(":", 1)[0])[:40]
    return f"HTTP {code}"


class _StoppedEarly(BaseException):
    """SIGINT or SIGTERM before the sending and the API began (raised by the handler)."""

    def __init__(self, sig: int) -> None:
        super().__init__(sig)
        self.signal = sig


@contextlib.contextmanager
def _stops_before_start() -> Iterator[None]:
    """A SIGINT or SIGTERM within the block ends the command at once with a note and exit 0,
    as a stop ends it later (``_run`` takes the signals when its loop starts). Working out a
    large world's span takes minutes, and a note says so: SIGTERM then killed the command
    without a word (143), and Ctrl+C ended it with 130."""

    def stop(sig: int, frame: object) -> None:
        raise _StoppedEarly(sig)

    try:
        with handling(stop):
            yield
    except _StoppedEarly as stopped:
        name = signal.Signals(stopped.signal).name
        print_note(f"received {name} while starting: stopped before anything began", stderr=True)
        raise typer.Exit(0) from None


@command("emulate")
def emulate(
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="Serve the REST API on 127.0.0.1:PORT (0: a free port, printed).",
        ),
    ] = 8765,
    no_api: Annotated[
        bool, typer.Option("--no-api", help="Do not serve the REST API; exit when sending ends.")
    ] = False,
    send_to: Annotated[
        str | None,
        typer.Option(
            "--send-to",
            help="POST signed webhooks to this URL (signed with KIRIM_WEBHOOK_SECRET). Without "
            "it, the events are only recorded as delivery history for the API.",
        ),
    ] = None,
    events: Annotated[
        int,
        typer.Option(
            "--events", min=0, max=1_000_000_000, help="Stop sending after N world events."
        ),
    ] = 1000,
    seed: Annotated[
        int, typer.Option("--seed", help="Same seed and --start: same world, ids and bodies.")
    ] = 0,
    rate: Annotated[
        float,
        typer.Option("--rate", min=0, help="World events per second; 0 = as fast as possible."),
    ] = 0.0,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="Simulated start time: ISO-8601, a date, or a span ago (7d); default: the "
            "traffic ends about now.",
        ),
    ] = None,
    contacts: Annotated[
        int, typer.Option("--contacts", min=1, help="Scale: most contacts the world creates.")
    ] = 2000,
    failure_rate: Annotated[
        float,
        typer.Option(
            "--failure-rate", min=0, max=1, help="Share of sends that fail (Meta errors)."
        ),
    ] = 0.05,
    duplicate_rate: Annotated[
        float,
        typer.Option(
            "--duplicate-rate", min=0, max=1, help="Share of deliveries sent twice (lost ack)."
        ),
    ] = 0.02,
    disorder: Annotated[
        float,
        typer.Option(
            "--disorder", min=0, max=1, help="Share of deliveries held back and reordered."
        ),
    ] = 0.05,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Deliveries in flight at once.")
    ] = 8,
    time_compression: Annotated[
        float,
        typer.Option(
            "--time-compression", min=0.001, help="Divide retry waits by this (3600: 1 h -> 1 s)."
        ),
    ] = 1.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.01, help="Seconds to wait for the receiver's 2xx.")
    ] = 10.0,
    fault_rate: Annotated[
        float,
        typer.Option("--fault-rate", min=0, max=1, help="Share of API requests answered 5xx."),
    ] = 0.0,
    fault_latency: Annotated[
        float,
        typer.Option("--fault-latency", min=0, help="Seconds of latency added to slow requests."),
    ] = 0.0,
    fault_latency_rate: Annotated[
        float,
        typer.Option("--fault-latency-rate", min=0, max=1, help="Share of API requests slowed."),
    ] = 0.0,
    fault_drop_rate: Annotated[
        float,
        typer.Option(
            "--fault-drop-rate", min=0, max=1, help="Share of API connections dropped mid-answer."
        ),
    ] = 0.0,
    kirim_block: Annotated[
        bool,
        typer.Option(
            "--kirim-block",
            help="Add Kirim's optional `kirim` block (conversation_id, contact_id) to Meta"
            " bodies, so messages can be linked to conversations; off by default, as"
            " kirim-api.md §4.2 says (Kirim's docs do not show it).",
        ),
    ] = False,
    no_kirim_block: Annotated[
        bool,
        # the default since the block became opt-in; kept so scripts that asked for it run
        typer.Option("--no-kirim-block", hidden=True),
    ] = False,
    third_shape_rate: Annotated[
        float,
        typer.Option(
            "--third-shape-rate",
            min=0,
            max=1,
            help="Share of message and status bodies sent in the third body shape"
            " (kirim-api.md §4.3: {id, event, delivered_at, data.message}, status events named"
            " message.status_updated), which one of Kirim's pages documents.",
        ),
    ] = 0.0,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth", help="Write the ground truth (Parquet) into this folder at the end."
        ),
    ] = None,
) -> None:
    """Run a local Kirim: send realistic signed webhooks and serve the REST API.

    Sends --events world events (messages, statuses, assignments, closes, contacts) to
    --send-to with Kirim's headers, signatures (every secret in KIRIM_WEBHOOK_SECRET),
    retries, duplicates and reordering. Serves /v1/webhook_deliveries, replays and
    subscriptions on 127.0.0.1:--port for the API key in KIRIM_KEY until Ctrl+C or SIGTERM.
    """
    s = settings()
    with errors_to_exit(), _stops_before_start():
        if send_to and not s.webhook_secrets:
            raise ConfigError("--send-to needs KIRIM_WEBHOOK_SECRET (the receiver's secret)")
        if not no_api and not s.api_key:
            raise ConfigError(
                "serving the API needs KIRIM_KEY (kdv_live_ + 24 url-safe chars); or pass --no-api"
            )
        if not no_api and s.api_key and not KEY_PATTERN.match(s.api_key.reveal()):
            raise ConfigError("KIRIM_KEY must be kdv_live_ followed by 24 url-safe characters")
        if kirim_block and no_kirim_block:
            raise ConfigError("--kirim-block and --no-kirim-block contradict each other")
        if no_api and not send_to:
            raise ConfigError("nothing to do: pass --send-to URL, or serve the API")
        if send_to:
            _check_send_to(send_to)
            if not no_api and port and _own_api(send_to, port):
                # every delivery would go to the API and get its 404 (permanent)
                raise ConfigError(
                    f"--send-to is this emulator's own API (127.0.0.1:{port}): point it at"
                    " your handler, or serve the API on another --port"
                )
            for note in s.secret_warnings():  # your handler would refuse every delivery
                print_note(note, stderr=True)
        if truth is not None:  # before the run, not after it: the truth would be lost
            try:
                truth.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"--truth {truth}: cannot write there ({exc.strerror})") from None
        world = WorldConfig(
            max_contacts=contacts,
            failure_rate=failure_rate,
            kirim_block=kirim_block,
            third_shape_rate=third_shape_rate,
        )
        if start is None and events >= _SLOW_SPAN:
            seconds = events / 70_000  # measured: 0.10-0.14 s per 10,000 events
            print_note(
                f"working out when a world of {events:,} events starts, so that it ends now"
                f" (about {seconds:,.0f} s; --start T skips this)",
                stderr=True,
            )
        span = 0 if start is not None else _world_span(world, seed, events)
        emu = Emulator(
            seed=seed,
            world=world,
            engine=EngineConfig(
                concurrency=concurrency,
                timeout=timeout,
                duplicate_rate=duplicate_rate,
                disorder=disorder,
                time_compression=time_compression,
                rate=rate,
            ),
            faults=FaultConfig(
                error_rate=fault_rate,
                latency=fault_latency,
                latency_rate=fault_latency_rate,
                drop_rate=fault_drop_rate,
            ),
            start=_start(start, span),
            secrets=s.webhook_secrets or None,
            # only when the API is served: --no-api leaves KIRIM_KEY unchecked and unused,
            # and the Emulator refuses a key of another form than kdv_live_ + 24 characters
            api_keys=[s.api_key] if s.api_key and not no_api else [],
            retention_days=RETENTION_DAYS,
        )
        if send_to:
            emu.check_url(send_to)  # before anything starts
    asyncio.run(
        _run(
            emu,
            send_to=send_to,
            events=events,
            port=None if no_api else port,
            unknown_secret=not s.webhook_secrets,
        )
    )
    if truth is not None:
        # what was sent, not what the world made: a stop or a disabled subscription leaves
        # events unsent, and no receiver could have them
        sent = emu.store.sent_event_keys()
        paths = emu.truth.write_parquet(truth, event_keys=sent)
        console.print(f"ground truth written: {', '.join(str(p) for p in paths.values())}")
        unsent = len(emu.truth) - len(sent)
        if unsent:
            print_note(f"{unsent} world events never sent are left out of the ground truth")


async def _watch(
    emu: Emulator,
    *,
    api: bool,
    every: float = 5.0,
    when_busy: bool = False,
    told: set[str] | None = None,
) -> None:
    """A line every few seconds while sending, so an unreachable or failing receiver shows
    at once (Kirim keeps retrying for about 31 hours, scaled by --time-compression). With
    ``when_busy`` (serving after the sending: replays, held deliveries released), a line
    only after a few seconds with new attempts."""
    seen = len(emu.store.attempts) if when_busy else 0
    told = set() if told is None else told  # subscriptions said to be disabled, once
    noted = False
    while True:
        await asyncio.sleep(every)
        for sub in emu.store.subscriptions.values():
            if sub.status == "disabled" and sub.id not in told:
                told.add(sub.id)
                resume = (
                    "make it active again through the API to resume"
                    if api
                    else "the run ends with its deliveries held; without --no-api, the API"
                    " can make it active again"
                )
                console.print(
                    f"subscription {sub.id} disabled after "
                    f"{emu.engine_config.auto_disable_after} failures in a row: new events are "
                    f"not sent to it ({resume})"
                )
        attempts = emu.store.attempts
        new, seen = attempts[seen:], len(attempts)
        if when_busy and not new:
            continue
        ok = sum(1 for a in attempts if a.outcome in _ACKNOWLEDGED)
        line = f"{len(attempts):,} attempts, {ok:,} acknowledged"
        failed = [a for a in new if a.outcome not in _ACKNOWLEDGED]
        if failed:
            last = failed[-1]
            why = last.error or f"HTTP {last.response_status_code}"
            line += f"; {len(failed):,} failed in the last {every:g} s, the last: {why}"
        console.print(line)
        # once, and only for a failure Kirim retries: a permanent 4xx (a wrong secret's 401)
        # ends its delivery at once, and the note said it would be tried for 31 h
        if any(a.outcome == "retry" for a in failed) and not when_busy and not noted:
            noted = True  # the sending may go on for Kirim's whole retry window
            print_note(_retry_note(emu.engine_config.time_compression))


async def _run(
    emu: Emulator,
    *,
    send_to: str | None,
    events: int,
    port: int | None,
    unknown_secret: bool = False,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        if stop.is_set() and server is not None:
            server.server.force_exit = True  # a second Ctrl-C: leave the requests in flight
        stop.set()
        emu.stop()
        if server is not None:
            emu.app.cut_latency()  # the requests --fault-latency slows are answered now
            server.request_stop()

    server: Served | None = None
    serving = None
    told: set[str] = set()  # shared by the progress lines of both phases
    if port is not None:
        try:
            sock = listen_socket("127.0.0.1", port)
        except ConfigError as exc:  # one line, not uvicorn's log line and then ours
            print_error(f"could not serve the API: {exc}")  # it names the port and why
            raise typer.Exit(2) from None  # as collect: a setting to change, as any ConfigError
        # The command owns SIGINT/SIGTERM (to stop sending too, and exit 0), not uvicorn;
        # uvicorn's own log format, as before Served (its default log_config).
        # A request in flight holds the stop only so long: uvicorn waits for every one by
        # default, and one slowed by --fault-latency (an hour, say) kept the command running
        # through Ctrl-C and SIGTERM alike (the stop now cuts that latency short, too).
        server = Served(emu.app, sock, log_config=uvicorn.config.LOGGING_CONFIG,
                        timeout_graceful_shutdown=STOP_GRACE)  # fmt: skip
        port = server.port  # the one taken, when 0 asked for any free one
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, request_stop)
    if server is not None:
        try:
            await server.start()
        except (ConfigError, RuntimeError) as exc:
            print_error(f"could not serve the API: {exc}")
            raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
        serving = asyncio.ensure_future(server.wait())
        console.print(
            f"Kirim API emulator on http://127.0.0.1:{port}/v1: point backfill and reconcile "
            f"at it with KIRIM_API_URL=http://127.0.0.1:{port} (key from KIRIM_KEY)"
        )
        if unknown_secret:
            # the history's subscription got a secret made from the seed, never shown; said
            # once the API is up (a port in use is then the only line)
            print_note(
                "without KIRIM_WEBHOOK_SECRET, replays are signed with a secret no handler"
                " holds: set it, or mint one (POST /v1/webhook_subscriptions/{id}/secrets),"
                " before replaying to a handler of yours",
                stderr=True,
            )
    if send_to:
        emu.subscribe(send_to)
        console.print(f"sending {events} world events to {shown_url(send_to)} ...")
        watch = asyncio.ensure_future(_watch(emu, api=server is not None, told=told))
        try:
            report = await emu.send(events)
        finally:
            watch.cancel()
        console.print(_summary(report, emu))
    else:
        emu.subscribe(_HISTORY_URL)
        for n, _ in enumerate(emu.iter_deliveries(events)):
            if n % 200 == 0:  # let the API answer and Ctrl+C act while the history grows
                await asyncio.sleep(0)
                if stop.is_set():
                    break
        console.print(f"recorded {len(emu.truth)} world events as delivery history (not sent)")
        console.print(_history(emu))
    if server is not None and serving is not None:
        if not stop.is_set():
            done = "sending done; the API keeps serving" if send_to else "the API serves it"
            console.print(f"{done} (replays are delivered). Ctrl+C stops.")
        watch = asyncio.ensure_future(_watch(emu, api=True, when_busy=True, told=told))
        async with emu.webhook_client() as client:
            replays = asyncio.ensure_future(emu.engine.run(None, client=client, forever=True))
            await asyncio.wait({serving, replays}, return_when=asyncio.FIRST_COMPLETED)
            request_stop()
            await asyncio.gather(serving, replays, return_exceptions=True)
        watch.cancel()
    console.print("emulator stopped")
