"""``kirim-events report``: funnel, failures and conversation times; optional HTML charts."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.cells import cell_len
from rich.table import Table

from kirim_events.analytics.notebook import require_chart_libraries
from kirim_events.analytics.report import (
    Report,
    build_report,
    headline,
    is_empty,
    notes,
    tables,
    write_html,
)
from kirim_events.analytics.report import Table as ReportTable
from kirim_events.cli._app import (
    DataOption,
    command,
    console,
    errors_to_exit,
    print_note,
    require_folder,
    settings,
    stops_saying,
)
from kirim_events.errors import ConfigError, StorageError
from kirim_events.journal_index import JournalView, lake_identity
from kirim_events.lake import Lake
from kirim_events.printable import printable
from kirim_events.timearg import to_utc


def render_report(report: Report, *, top: int, more: str = "--top {top}") -> None:
    """Print a report (shared by `report` and `demo`): its headline and notes, then, unless
    there is nothing to show, its tables. ``more``: how to see the reasons past ``top``."""
    console.print(headline(report))
    for line in notes(report):
        console.print(line)
    if is_empty(report):
        return
    for table in tables(report, top=top, more=more):
        console.print(_shown(table, console.width))


# a column of text that wraps keeps at least this many characters a line when the columns
# of single words are kept whole
_FREE_TEXT_WIDTH = 8


def _shown(table: ReportTable, width: int) -> Table:
    """``table`` for a terminal ``width`` wide: no cell ends in "…" (a cell too wide wraps,
    folding a word only when it must), and a column of single words (reason names, codes,
    figures) stays whole, left to right, as long as the table still fits with it (printable
    leaves no line break in a cell)."""
    rows = [tuple(printable(cell) for cell in row) for row in table.rows]  # may be webhook text
    columns = [[name, *(row[i] for row in rows)] for i, name in enumerate(table.columns)]
    natural = [max(cell_len(cell) for cell in cells) for cells in columns]  # one line each
    words = [all(len(cell.split()) <= 1 for cell in cells[1:]) for cells in columns]
    borders = len(columns) + 1
    whole = [False] * len(columns)
    for i in (i for i, is_words in enumerate(words) if is_words):
        whole[i] = True
        needed = sum(  # each column and its padding
            2 + (natural[j] if whole[j] else min(natural[j], _FREE_TEXT_WIDTH))
            for j in range(len(columns))
        )
        whole[i] = borders + needed <= width
    shown = Table(title=table.title, caption=table.caption or None)
    for name, keep in zip(table.columns, whole, strict=True):
        shown.add_column(name, no_wrap=keep, overflow="fold")  # fold: wrap, never "…"
    for row in rows:
        shown.add_row(*row)
    return shown


@command("report")
def report_command(
    data: DataOption = None,
    lake_uri: Annotated[
        str | None,
        typer.Option(
            "--lake",
            help="Lake location when it is not the data folder, e.g. s3://bucket/prefix.",
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write the report, its tables and charts, to this HTML file (works offline).",
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Report as the world looked at this instant: ISO 8601, a date (its 00:00 UTC) "
            "or a span ago (12h, 7d).",
        ),
    ] = None,
    top: Annotated[
        int,
        typer.Option("--top", min=1, max=1000, help="Failure reasons to list (and to chart)."),
    ] = 10,
) -> None:
    """Summarise the lake: delivery funnel, read rate, top failures, conversation times.

    Reads the lake only: run kirim-events compact first to include events still in the
    collector's journal.
    """
    s = settings(data_dir=data)
    said = "nothing was changed: report only reads the lake"
    if html is not None:
        said += f"; {html} may be left incomplete, run it again to write it whole"
    # Ctrl-C in a long read ended it with exit 130 and not a word (SIGTERM: 143, killed)
    with stops_saying(said), errors_to_exit(lake=lake_uri or s.data_dir):
        require_folder(s.data_dir, lake_uri)
        if html is not None:
            # "~/r.html" as --data and --lake read "~" (and write_html does): the check below
            # looked for a folder named "~" and refused a path the writer takes
            html = html.expanduser()
            _check_writable(html)
            try:
                require_chart_libraries()
            except ConfigError as exc:
                raise ConfigError(f"--html {exc}") from None
        lake = Lake(lake_uri or s.data_dir)
        view = (
            lake.as_of(to_utc(as_of, now=datetime.now(UTC), name="--as-of"))
            if as_of is not None
            else lake
        )
        report = build_report(view)
        # the page first: a reader that stops early (`| head`) ends the command while the
        # tables print, and a page that cannot be written is said before them
        written = None if html is None else _write_html(report, html, top=top)
        render_report(report, top=top)
        waiting = _in_journal(s.data_dir, lake)
        if waiting:
            events = "event" if waiting == 1 else "events"
            elsewhere = f" --lake {lake_uri}" if lake_uri else ""
            print_note(
                f"the journal of {s.data_dir} holds {waiting:,} received {events} not yet in "
                f"the lake: kirim-events compact --data {s.data_dir}{elsewhere} moves them there"
            )
        if written is not None:
            console.print(f"report written to {written}")


def _write_html(report: Report, html: Path, *, top: int) -> Path:
    try:
        return write_html(report, html, top=top)
    except OSError as exc:
        raise ConfigError(f"--html {html}: cannot write it ({exc.strerror or exc})") from None


def _in_journal(data_dir: Path, lake: Lake) -> int:
    """Events waiting in the data folder's journal to be flushed into ``lake`` (read-only;
    0 without a journal, or when it last flushed into another lake)."""
    try:
        view = JournalView(data_dir)
        target = view.flush_target()
        if (target or "data folder") != lake_identity(lake, data_dir):
            return 0  # its events go to another lake (collect flushes into its --data)
        return len(view.inbox_keys())
    except StorageError:
        return 0


def _check_writable(html: Path) -> None:
    """ConfigError unless ``html`` names a file that can be written, checked before the
    report is built (it failed after printing the whole report, naming no option)."""
    if html.is_dir() or not html.parent.is_dir():
        raise ConfigError(f"--html {html}: needs a file name in an existing folder")
    try:
        with tempfile.TemporaryFile(dir=html.parent):
            pass
    except OSError as exc:
        raise ConfigError(f"--html {html}: cannot write there ({exc.strerror or exc})") from None
