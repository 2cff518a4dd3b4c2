"""``kirim-events backfill``, ``reconcile`` and ``deliveries``: Kirim's history from the CLI."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated

import httpx
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from kirim_events.backfill import (
    BackfillProgress,
    BackfillReport,
    backfill,
    check_order,
)
from kirim_events.cli._app import (
    DataOption,
    app,
    command,
    console,
    counted,
    err_console,
    errors_to_exit,
    note_refused_key,
    print_error,
    print_note,
    refuse_demo_folder,
    require_folder,
    stops_saying,
)
from kirim_events.cli._app import settings as load_settings
from kirim_events.cli.listing import deliveries_view
from kirim_events.client import Delivery, KirimClient, check_id, format_time
from kirim_events.errors import ApiError, AuthenticationError, ConfigError, RateLimitTooLong
from kirim_events.events import parse_time
from kirim_events.history_filter import TIME_FILTER, FilterTally, HistoryFilter
from kirim_events.history_slices import ORDER_SLACK, Slice
from kirim_events.lake import Lake
from kirim_events.printable import printable
from kirim_events.reconcile import (
    ACTIONS,
    BulkWindow,
    ReconcileReport,
    bulk_replay_window,
    reconcile,
)
from kirim_events.subscription_health import SubscriptionAlert
from kirim_events.timearg import parse_when

_FLAGS = ("--since", "--until")  # the library's errors name its arguments; ours, the flags


def _window(
    since: str | None, until: str | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """``--since`` and ``--until`` read and checked here, so that errors name the flags
    (each None when not given). A --since not in the past is refused: the history ends now."""
    lo = None if since is None else parse_when(since, now=now, name="--since")
    hi = None if until is None else parse_when(until, now=now, name="--until")
    if lo is not None:
        check_order(lo, hi, now=now, names=_FLAGS)
    return lo, hi


HISTORY_DAYS = 30  # Kirim purges delivery rows 30 days after creation (kirim-api.md §3)


def _note_purged(since: datetime | None, now: datetime) -> None:
    """Say so when ``--since`` reaches past Kirim's 30 days of history: that part of the
    range holds nothing, whatever the receiver missed there (a run looked complete)."""
    kept = now - timedelta(days=HISTORY_DAYS)
    if since is not None and since < kept:
        print_note(
            f"--since is more than {HISTORY_DAYS} days ago: Kirim purges its delivery history"
            f" after {HISTORY_DAYS} days, so nothing before {_fmt(kept)} can be read",
            stderr=True,
        )


SinceOption = Annotated[
    str,
    typer.Option(
        "--since",
        help="Start of the range of delivery times: ISO 8601, a date, or a span ago (7d, 12h).",
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="End of the range (exclusive); default: now, fixed at start."),
]


def _given(value: str | None) -> str | None:
    """A filter given empty (``--event-id ""``: a shell variable not set) is refused: it
    was read as no filter, and the command went over every row (``deliveries list`` showed
    them, a backfill stored them all)."""
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty (leave the option out to take every value)")
    return value


SubscriptionOption = Annotated[
    str | None,
    typer.Option("--subscription-id", help="Only this subscription (wbs_...).", callback=_given),
]
EventTypeOption = Annotated[
    str | None,
    typer.Option(
        "--event-type", help="Only this event type (e.g. message.status).", callback=_given
    ),
]


class _RetryNote:
    """Says once, on stderr, that a request to the API is being retried: a wrong
    KIRIM_API_URL or a closed port looked like a hang for the tens of seconds of silent
    retries before the error. One per command's client (``KirimClient(on_retry=...)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._said = False

    def __call__(self, delay: float, error: ApiError) -> None:
        with self._lock:  # the slices retry in parallel: one note, not one each
            if self._said:
                return
            self._said = True
        note = f"retrying in {delay:.2f}s after {error} (it retries a while before it gives up)"
        print_note(note, stderr=True)


def _client(data: object = None) -> KirimClient:
    s = load_settings(data_dir=data)
    with errors_to_exit():
        client = KirimClient(s.api_url, s.require_api_key(), on_retry=_RetryNote())
    url = httpx.URL(client.base_url)
    if url.scheme == "http" and url.host not in ("127.0.0.1", "localhost", "::1"):
        note = f"{client.base_url} is plain http: the API key crosses the network unencrypted"
        print_note(note, stderr=True)
    return client


def _fmt(value: datetime | None) -> str:
    return "-" if value is None else format_time(value)


# --------------------------------------------------------------------------- backfill


def _eta(p: BackfillProgress) -> str:
    """The estimate as ``H:MM:SS``, hours past a day included (``51:00:00``, not the
    ``2 days, 3:00:00`` that squeezed the bar off an 80-column line)."""
    if p.eta is None:
        return "?"
    hours, rest = divmod(int(p.eta), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@command("backfill")
def backfill_command(
    since: SinceOption,
    until: UntilOption = None,
    data: DataOption = None,
    slices: Annotated[
        int,
        typer.Option(
            "--slices",
            min=1,
            max=64,
            help="Parallel fetchers, sharing one rate limit (the range is cut into 4 time "
            "slices per fetcher).",
        ),
    ] = 4,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=100, help="Rows per page, 1-100.")
    ] = 100,
    subscription_id: SubscriptionOption = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only deliveries in this Kirim status.", callback=_given),
    ] = None,
    event_type: EventTypeOption = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bar (on stderr by default).")
    ] = False,
) -> None:
    """Pull Kirim's delivery history into the store; an unfinished run resumes when run again.

    Rows go to the deliveries table; rows that carry their payload become events through the
    collector's dedup index. Needs KIRIM_KEY (and KIRIM_API_URL for a non-default Kirim).
    """
    s = load_settings(data_dir=data)
    client = _client(data)
    with errors_to_exit():  # a bad time fails here, before a progress bar is drawn
        refuse_demo_folder(s.data_dir)
        now = datetime.now(UTC)
        lo, hi = _window(since, until, now)
    _note_purged(lo, now)
    if hi is not None and hi > now:  # Kirim's history ends now; the run's range is cut there
        note = f"--until is in the future: the history is read up to now ({_fmt(now)})"
        print_note(note, stderr=True)
    # The bar is the share of the time range walked, not of the rows (their number is not
    # known before the end); the estimate of the time left assumes the rest of the range as
    # dense as what was walked (docs/cli.md says so).
    bar = Progress(
        TextColumn("[bold]backfill"),
        BarColumn(bar_width=12),  # the line fits 80 columns at a million rows
        TaskProgressColumn(),
        TextColumn("of range  {task.fields[rows]}"),
        TextColumn("{task.fields[rate]}/s"),
        TimeElapsedColumn(),
        TextColumn("~{task.fields[eta]} left"),
        console=err_console,
        disable=no_progress,
        transient=False,
    )
    task = bar.add_task("backfill", total=100.0, rows=counted(0, "row"), rate="0", eta="?")

    stored = False  # a page stored by this run (the note after an error needs one)
    said: set[str] = set()  # notes shown while the run went on: not again in the summary

    def update(p: BackfillProgress) -> None:
        nonlocal stored
        stored = True
        if p.note is not None and p.note not in said:
            said.add(p.note)
            print_note(p.note, stderr=True)  # above the bar, at once
        bar.update(
            task,
            completed=100.0 * p.fraction,
            rows=counted(p.rows, "row"),
            rate=f"{p.rows_per_second:.0f}",
            eta=_eta(p),
        )

    try:
        with (
            stops_saying(
                "the pages fetched so far are stored and checkpointed; the same command resumes"
                " the run"
            ),
            errors_to_exit(),
            bar,
            client,
        ):
            report = backfill(
                s.data_dir,
                client=client,
                since=since,
                until=until,
                subscription_id=subscription_id,
                status=status,
                event_type=event_type,
                slices=slices,
                page_size=page_size,
                progress=update,
            )
    except typer.Exit as exc:
        if exc.exit_code == 1 and stored:  # Kirim or the disk failed mid-run
            print_note(
                "the pages fetched so far are stored and checkpointed: the same command resumes"
                " the run",
                stderr=True,
            )
        raise
    _render_backfill(report, said)


def _render_backfill(r: BackfillReport, said: set[str]) -> None:
    table = Table("", "value", title="backfill", show_header=False)
    table.add_row("range", f"{_fmt(r.since)} .. {_fmt(r.until)}")
    asked = " ".join(  # in the flags' order, fresh or resumed (the checkpoint sorts them)
        f"--{name.replace('_', '-')} {r.filters[name]}"
        for name in ("subscription_id", "status", "event_type")
        if name in r.filters
    )
    table.add_row("filters", printable(asked or "none"))
    # killed, Ctrl-C, SIGTERM or an error: each leaves a checkpoint the same command resumes
    table.add_row("resumed an unfinished run", "yes" if r.resumed else "no")
    table.add_row("pages / requests / retries", f"{r.pages} / {r.requests} / {r.retries}")
    table.add_row("history rows read", str(r.rows))
    table.add_row("new events", str(r.events_new))
    table.add_row("events already stored", str(r.events_duplicate))
    table.add_row("rows without payload", str(r.rows_without_payload))
    if r.rows_without_time:
        table.add_row("rows without a readable time (kept once)", str(r.rows_without_time))
    if r.items_unreadable:
        table.add_row("page items that are no delivery (skipped)", str(r.items_unreadable))
    if r.filtered.outside:
        skipped = sum(r.filtered.outside.values())
        table.add_row("rows outside the filters asked (skipped)", str(skipped))
    table.add_row("quarantined payloads", str(r.quarantined))
    flushed = f"{counted(r.flushed_events, 'event')}, {counted(r.flushed_deliveries, 'row')}"
    table.add_row("flushed to the lake", flushed)
    table.add_row("seconds", f"{r.seconds:.1f}")
    console.print(table)
    for note in r.notes:
        if note not in said:
            print_note(note)
    _render_subscriptions(r.subscriptions, r.subscriptions_unread)


def _render_subscriptions(alerts: list[SubscriptionAlert], unread: str | None) -> None:
    """The subscriptions Kirim sends nothing to, or whose deliveries all fail: a warning
    each, on every run (a run that stored or recovered everything it found looked like the
    end of the trouble), without failing it; one note when they could not be read."""
    for alert in alerts:
        console.print(
            Text.assemble(("warning:", "bold yellow"), " ", printable(alert.message)),
            soft_wrap=True,
        )
    if unread is not None:
        print_note(unread)


# --------------------------------------------------------------------------- reconcile


@command("reconcile")
def reconcile_command(
    since: SinceOption,
    until: UntilOption = None,
    data: DataOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; import and replay nothing.")
    ] = False,
    warn_days: Annotated[
        float,
        typer.Option(
            "--warn-days", min=0, max=30, help="Warn about events this close to the purge."
        ),
    ] = 3.0,
    subscription_id: Annotated[
        str | None,
        typer.Option(
            "--subscription-id",
            help="The subscription (wbs_...) that feeds this collector; needed when Kirim's "
            "history holds several.",
            callback=_given,
        ),
    ] = None,
    lake_uri: Annotated[
        str | None,
        typer.Option(
            "--lake",
            help="The lake the journal flushes into when it is not the data folder, e.g. "
            "s3://bucket/prefix (as for compact).",
        ),
    ] = None,
) -> None:
    """Report the events Kirim knows that the lake lacks, and recover them.

    Payloads in the history are imported; the rest are replayed by Kirim to your collector
    (bulk_replay for dead/failed deliveries when it takes fewer calls). Needs KIRIM_KEY (and
    KIRIM_API_URL for a non-default Kirim).
    """
    s = load_settings(data_dir=data)
    client = _client(data)
    # what it imported is in the journal (durable, flushed by the next run); a replay asked
    # for is pending at Kirim, and a pending delivery is not replayed again
    with (
        stops_saying(
            "nothing is lost; events it imported wait in the journal (the next reconcile or"
            " compact flushes them), replays it asked for go ahead, and the same command"
            " finishes the rest"
        ),
        errors_to_exit(lake=lake_uri or s.data_dir),
        client,
    ):
        now = datetime.now(UTC)
        lo, _ = _window(since, until, now)  # as reconcile() checks its range
        _note_purged(lo, now)
        # a mistyped folder holds none of the events Kirim knows: every one would be
        # imported there or replayed to the collector
        require_folder(s.data_dir)
        if not dry_run:
            refuse_demo_folder(s.data_dir)
        if lake_uri is not None:
            require_folder(s.data_dir, lake_uri)  # a typo would read an empty lake
        lake = None if lake_uri is None else Lake(lake_uri)
        report = reconcile(
            s.data_dir, client=client, since=since, until=until, dry_run=dry_run,
            warn_days=warn_days, subscription_id=subscription_id, lake=lake,
        )  # fmt: skip
    _render_reconcile(report)


def _render_reconcile(r: ReconcileReport) -> None:
    head = "reconcile (dry run: nothing changed)" if r.dry_run else "reconcile"
    console.print(
        Text.assemble(
            (head, "bold"),
            f"  {_fmt(r.since)} .. {_fmt(r.until)}: "
            f"{counted(r.history_rows, 'history row')}, "
            f"{counted(len(r.missing), 'event')} missing from the lake",
        )
    )
    if r.missing:
        table = Table("day", "type", "missing", title="missing events, oldest first")
        for event_type, day, n in r.by_type_day:
            table.add_row(day, printable(event_type), str(n))
        console.print(table)
    if r.near_purge:
        console.print(
            Text.assemble(
                ("warning:", "yellow"),
                f" {counted(r.near_purge, 'missing event')}"
                f" {'was' if r.near_purge == 1 else 'were'} first delivered before"
                f" {_fmt(r.warn_before)}: Kirim purges history after 30 days; recover"
                f" {'it' if r.near_purge == 1 else 'them'} now",
            )
        )
    plan = Table("action", "events", "meaning", title="plan" if r.dry_run else "recovery")
    for action, n in sorted(r.actions.items()):
        plan.add_row(action, str(n), ACTIONS.get(action, ""))
    if r.missing:
        console.print(plan)
    for w in r.windows:
        console.print(
            f"  bulk_replay {printable(w.subscription_id)} status={w.status} "
            f"{_fmt(w.created_after)} .. {_fmt(w.created_before)} (~{counted(w.rows, 'row')})"
        )
    if r.unparseable:
        kept = "" if r.dry_run else f" ({r.quarantined} newly kept under quarantine/)"
        one = r.unparseable == 1
        console.print(
            f"{counted(r.unparseable, 'history payload')} {'is' if one else 'are'} no known"
            f" body: a replay would bring the same bytes, so {'it is' if one else 'they are'}"
            f" kept in quarantine, not replayed{kept}"
        )
    if not r.dry_run and r.missing:
        failed = f"; {counted(len(r.failures), 'call')} failed (below)" if r.failures else ""
        console.print(
            f"imported {r.imported}; replayed {r.replayed}; bulk_replay calls {r.bulk_calls} "
            f"({r.bulk_enqueued} enqueued){failed}. Replays reach your collector, not this"
            " command."
        )
    for note in r.notes:
        print_note(note)
    _render_subscriptions(r.subscriptions, r.subscriptions_unread)
    for line in r.errors:
        print_error(line)
    note_refused_key(*r.failures)  # once, not per call
    if r.errors:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- deliveries

deliveries_app = typer.Typer(
    help="Inspect Kirim's delivery history and ask Kirim to replay deliveries. Needs"
    " KIRIM_KEY (and KIRIM_API_URL for a non-default Kirim).",
    short_help="Inspect Kirim's delivery history and ask Kirim to replay deliveries.",
    no_args_is_help=True,
)
app.add_typer(deliveries_app, name="deliveries")


@command("list", group=deliveries_app)
def deliveries_list(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Created at or after: ISO 8601, a date, or a span ago (7d, 12h)."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Created before (same forms); default: now.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="succeeded, pending, failed, dead...", callback=_given),
    ] = None,
    event_type: EventTypeOption = None,
    subscription_id: SubscriptionOption = None,
    event_id: Annotated[
        str | None, typer.Option("--event-id", help="Only this event.", callback=_given)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most rows to show.")] = 25,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List deliveries, newest first (the payload is not shown).

    Needs KIRIM_KEY (and KIRIM_API_URL for a non-default Kirim).
    """
    if limit < 1:
        raise typer.BadParameter("--limit must be at least 1")
    # Ctrl-C while Kirim pages ended it with exit 130 and not a word (SIGTERM: 143, killed)
    with stops_saying("nothing was changed: deliveries list only reads Kirim's history"):
        _list(since, until, HistoryFilter(subscription_id, status, event_type, event_id),
              limit=limit, as_json=as_json)  # fmt: skip


LOOK_AHEAD_PAGES = 2
"""Pages ``deliveries list`` reads past the one that filled ``--limit``, looking for one
more matching row (to say "Kirim has more"). A Kirim that ignores a filter (``--since``
above all) answers with rows outside it: looking until one matched walked all 30 days of
its history. Past these pages the list says more *may* exist."""


def _list(
    since: str | None, until: str | None, flt: HistoryFilter, *, limit: int, as_json: bool
) -> None:
    client = _client()
    now = datetime.now(UTC)
    with errors_to_exit(), client:
        after, before = _window(since, until, now)
        shown: list[Delivery] = []
        tally = FilterTally()  # Kirim may ignore a filter: its rows outside are not shown
        # one row more than shown: the row that tells whether --limit cut the list
        pages = client.iter_pages(
            limit=min(100, limit + 1), created_after=after, created_before=before, **flt.asked()
        )
        # a matching row past the last one shown: --limit cut the list. Rows past it that
        # only Kirim kept (outside a filter it ignored) are no more: "Kirim has more (raise
        # --limit)" was said over them, and a higher --limit showed nothing new
        more = maybe = False
        past = 0  # whole pages read after the one that filled --limit
        # The order Kirim pages in, as its rows show it (kirim-api.md §7.3 only assumes
        # newest first): newest first, no row after one older than --since (by more than
        # the clock skew ORDER_SLACK allows) can be inside it. A Kirim ignoring --since
        # (§7.4 only assumes the filter) was paged to the end of its history when fewer
        # rows than --limit matched; an order not seen (yet) is read on, as before.
        order = Slice(after="", before="")
        for page, _ in pages:
            if len(shown) >= limit:
                past += 1
            order.note_order(d.created_at for d in page.deliveries if d.created_at)
            for d in page.deliveries:
                if not _in_range(d, after, before):
                    tally.outside[TIME_FILTER] += 1
                elif len(shown) < limit:
                    if tally.keep(flt, d):
                        shown.append(d)
                elif (outside := flt.check(d)[0]) is not None:
                    tally.outside[outside] += 1
                else:
                    more = True
                    break
            if more or _past_since(order, after):
                break
            if past >= LOOK_AHEAD_PAGES and page.has_more:
                maybe = True  # Kirim has pages left, unread: what they hold is not known
                break
    for note in tally.notes(flt, stored="shown"):
        print_note(note, stderr=True)  # stderr: --json output stays one object per line
    if not shown:  # not an empty table without a word
        print_note("no delivery in Kirim's history matches the range and filters", stderr=True)
        return
    newest = "delivery is" if limit == 1 else f"{limit} deliveries are"
    if more:
        print_note(f"the newest {newest} shown; Kirim has more (raise --limit)", stderr=True)
    elif maybe:
        print_note(
            f"the newest {newest} shown; Kirim may have more: the"
            f" {counted(LOOK_AHEAD_PAGES, 'page')} read past them held no other match (rows"
            " outside the range or filters), and the rest of its history was not read (raise"
            " --limit to look further)",
            stderr=True,
        )
    if as_json:
        for d in shown:
            row = {
                "id": d.id, "status": d.status, "event_id": d.event_id,
                "event_type": d.event_type, "subscription_id": d.subscription_id,
                "attempt": d.attempt, "response_status_code": d.response_status_code,
                "replayed_from": d.replayed_from,
                "created_at": None if d.created_at is None else format_time(d.created_at),
                "has_payload": d.payload is not None,
            }  # fmt: skip
            typer.echo(json.dumps(row))
        return
    # the ids are what `deliveries replay` and `--event-id` take: whole, to be copied
    console.print(deliveries_view(shown, console))


def _past_since(order: Slice, since: datetime | None) -> bool:
    """Whether the rows read show Kirim paging newest first and already past ``since``, so
    that no row still to come can be inside it."""
    low = parse_time(order.low) if order.low else None
    return (
        since is not None
        and low is not None
        and order.direction() == "newest first"
        and low + ORDER_SLACK < since
    )


def _in_range(d: Delivery, after: datetime | None, before: datetime | None) -> bool:
    """Whether ``d`` is inside ``[after, before)`` (a row without a time cannot be shown
    outside it)."""
    when = d.created_at
    return when is None or ((after is None or when >= after) and (before is None or when < before))


@command("replay", group=deliveries_app)
def deliveries_replay(
    ids: Annotated[
        list[str], typer.Argument(metavar="ID", help="Delivery ids (wbd_...) to send again.")
    ],
) -> None:
    """Ask Kirim to send these deliveries again (each becomes a new delivery row).

    Needs KIRIM_KEY (and KIRIM_API_URL for a non-default Kirim).
    """
    # Each id once, and all of them checked before any is asked for: an id given twice was
    # replayed twice, and a bad one (../x) was refused only after those before it went out.
    ids = list(dict.fromkeys(ids))
    for ident in ids:
        try:
            check_id(ident)
        except ValueError:
            raise typer.BadParameter(
                f"{printable(repr(ident))} is no delivery id (wbd_...): nothing was replayed"
            ) from None
    client = _client()
    failed = 0
    refused: ApiError | None = None
    sent: dict[str, int] = {}  # replays asked for, per subscription (when it can be read)
    stopped = (
        "the replays answered above are queued at Kirim; one asked for as it stopped may be"
        " too (deliveries list --event-id shows it), the ids after it were not asked for"
    )
    with stops_saying(stopped), client:
        for ident in ids:
            try:
                with_errors = client.replay(ident)
            except ApiError as exc:
                failed += 1
                print_error(f"{ident}: {exc}")
                refused = exc
                if isinstance(exc, (AuthenticationError, RateLimitTooLong)):
                    # the same answer waits for every id after it: one line, not one each
                    left = len(ids) - ids.index(ident) - 1
                    if left:
                        after = (
                            "the id after it was" if left == 1 else f"the {left} ids after it were"
                        )
                        print_note(f"{after} not asked for", stderr=True)
                        failed += left
                    break
                continue
            answer = f"{with_errors.get('id', '?')} ({with_errors.get('status')})"
            console.print(f"{ident} -> {printable(answer)}")
            sub = with_errors.get("subscription_id") or _subscription_of(client, ident)
            if isinstance(sub, str):
                sent[sub] = sent.get(sub, 0) + 1
        held = {sub: _inactive(client, sub) for sub in sent}
    if refused is not None:
        note_refused_key(refused)  # once, not per id
    for sub, n in sent.items():
        _note_held(sub, held[sub], "this replay waits" if n == 1 else f"these {n} replays wait")
    if failed:
        raise typer.Exit(1)


def _subscription_of(client: KirimClient, delivery_id: str) -> str | None:
    """The subscription of a delivery (Kirim's replay answer documents no
    ``subscription_id``), or None when it cannot be read."""
    try:
        return client.get_delivery(delivery_id).subscription_id
    except ApiError:
        return None


@command("bulk-replay", group=deliveries_app)
def deliveries_bulk_replay(
    subscription_id: Annotated[
        str,
        typer.Option(
            "--subscription-id", help="The subscription (wbs_...); required.", callback=_given
        ),
    ],
    status: Annotated[str, typer.Option("--status", help="dead or failed.")] = "dead",
    event_type: EventTypeOption = None,
    since: Annotated[
        str, typer.Option("--since", help="Created at or after (default: 30 days ago).")
    ] = "30d",
    until: UntilOption = None,
) -> None:
    """Replay every dead (or failed) delivery of a subscription in a time window.

    Kirim replays at most 1000 per call; when it says "capped", the window is halved and
    both halves are replayed again (a few deliveries may then be sent twice; the collector
    deduplicates them).

    Needs KIRIM_KEY (and KIRIM_API_URL for a non-default Kirim).
    """
    client = _client()
    now = datetime.now(UTC)
    stopped = (
        "the bulk_replay calls Kirim answered went ahead, one asked for as it stopped may"
        " have too, and the rest of the window was not replayed: the same command replays it"
        " (a delivery may then be sent twice; the collector deduplicates it)"
    )
    with stops_saying(stopped), errors_to_exit(), client:
        if status not in {"dead", "failed"}:
            raise ConfigError("--status must be 'dead' or 'failed'")
        lo, asked = _window(since, until, now)
        assert lo is not None  # --since is required here
        hi = now if asked is None else asked
        report = ReconcileReport(since=lo, until=hi, dry_run=False)
        window = BulkWindow(subscription_id, status, lo, hi, 0)
        try:
            bulk_replay_window(client, window, report, event_type=event_type)
        except (AuthenticationError, RateLimitTooLong) as exc:  # the window's rest not sent
            report.errors.append(f"bulk_replay {subscription_id} {status}: {exc}")
            report.failures.append(exc)
        held = _inactive(client, subscription_id) if report.bulk_enqueued else None
    # the errors first; the count only when a call went through ("0 deliveries enqueued in
    # 0 calls" above a refusal read as a success that found nothing to replay)
    for line in report.errors:
        print_error(line)
    note_refused_key(*report.failures)
    if report.bulk_calls:
        failed = f"; {counted(len(report.failures), 'call')} failed" if report.failures else ""
        enqueued = counted(report.bulk_enqueued, "delivery", "deliveries")
        console.print(f"{enqueued} enqueued in {counted(report.bulk_calls, 'call')}{failed}")
    _note_held(subscription_id, held, "these replays wait")
    if report.errors:
        raise typer.Exit(1)


def _inactive(client: KirimClient, subscription_id: str) -> str | None:
    """The status of a subscription Kirim sends nothing to (``disabled`` after its
    auto-disable, kirim-api.md §3), or None: active, or unreadable (the replays were asked
    for all the same; reconcile holds them instead, as it decides what to replay)."""
    try:
        status = client.get_subscription(subscription_id).get("status")
    except ApiError:
        return None
    return None if status is None or status == "active" else str(status)


def _note_held(subscription_id: str, status: str | None, waiting: str) -> None:
    """The note after replays to a subscription that is not active (``status`` from
    :func:`_inactive`; None: nothing to say): Kirim queues them and sends nothing, and how
    to make it active again. ``waiting``: what waits, e.g. ``these replays wait``."""
    if status is None:
        return
    print_note(
        f"subscription {subscription_id} is {status}: Kirim sends nothing to it, so {waiting}"
        " in its queue. Once the collector answers, make it active again"
        f' (PATCH /v1/webhook_subscriptions/{subscription_id} with {{"status": "active"}},'
        " or in Kirim's dashboard)"
    )
