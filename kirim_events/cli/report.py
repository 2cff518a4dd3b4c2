"""``kirim-events report``: funnel, failures and conversation times; optional HTML charts."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.table import Table
from rich.text import Text

from kirim_events.analytics.report import Report, build_report, write_html
from kirim_events.backfill import parse_when
from kirim_events.cli._app import (
    DataOption,
    command,
    console,
    errors_to_exit,
    require_folder,
    settings,
)
from kirim_events.errors import ConfigError
from kirim_events.lake import Lake
from kirim_events.printable import printable


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


_ANOMALY_LABELS = {
    "out_of_order": "messages with a status that arrived out of order",
    "read_without_delivered": "messages read, never seen delivered",
    "failed_after_delivered": "messages both failed and delivered",
    "never_sent": "messages with no sent status seen",
    "n_duplicates": "extra copies of status events received (beyond the first)",
    "missing_first_assignment": "conversations whose first assignment was never seen",
    "n_missing_assignments": "reassignments never seen",
}


def _left_out(failures: pl.DataFrame, top: int) -> str:
    """The caption's note of the reasons past ``--top``, if any."""
    rest = failures.slice(top)
    if rest.is_empty():
        return ""
    return f"; {rest.height} more reasons past --top {top}"


def render_report(report: Report, *, top: int) -> None:
    """Print a report as rich tables (shared by `report` and `demo`)."""
    when = f" as of {report.as_of.isoformat()}" if report.as_of else ""
    console.print(
        Text.assemble(
            (f"{report.n_messages:,}", "bold"),
            " outbound message, " if report.n_messages == 1 else " outbound messages, ",
            (f"{report.n_conversations:,}", "bold"),
            " conversation" if report.n_conversations == 1 else " conversations",
            f" ({report.n_open_conversations:,} open){when}",
        )
    )
    if report.n_messages == 0 and report.n_conversations == 0:
        # an empty folder, or an --as-of before the first event: say so, not just zeros
        console.print(f"(no message or conversation events in the lake{when})")
    funnel = Table("stage", "messages", "share", "of previous", title="Delivery funnel")
    for row in report.funnel.iter_rows(named=True):
        funnel.add_row(
            row["stage"], f"{row['messages']:,}", _pct(row["share"]), _pct(row["share_of_previous"])
        )
    console.print(funnel)
    console.print(f"delivery rate {_pct(report.delivery_rate)}, read rate {_pct(report.read_rate)}")
    failures = Table(
        "reason",
        "code",
        "title",
        "messages",
        "share",
        title="Top failures",
        # the funnel's failed stage counts final statuses; this table, every failed message
        caption="every message with a failed status, also those delivered after it"
        + _left_out(report.failures, top),
    )
    failures.columns[0].overflow = "fold"  # a long label wraps, never loses its end to "…"
    for row in report.failures.head(top).iter_rows(named=True):
        failures.add_row(  # code and title are webhook text
            row["error_label"],
            printable(row["error_code"] or "-"),
            printable(row["error_title"] or "-"),
            f"{row['messages']:,}",
            _pct(row["share"]),
        )
    console.print(failures)
    times = Table("time", "of", "n", "median", "p90", title="Times")
    for row in report.times.iter_rows(named=True):
        times.add_row(
            row["metric"], row["of"], f"{row['n']:,}", _secs(row["median"]), _secs(row["p90"])
        )
    console.print(times)
    flags = Table("anomaly", "count", title="What the data could not show cleanly")
    for name, count in report.anomalies.items():
        flags.add_row(_ANOMALY_LABELS.get(name, name), f"{count:,}")
    console.print(flags)


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
        typer.Option("--html", help="Also write the charts to this HTML file (works offline)."),
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
    with errors_to_exit(lake=lake_uri or s.data_dir):
        require_folder(s.data_dir, lake_uri)
        if html is not None:
            _check_writable(html)
        lake = Lake(lake_uri or s.data_dir)
        view = (
            lake.as_of(parse_when(as_of, now=datetime.now(UTC), name="--as-of"))
            if as_of is not None
            else lake
        )
        report = build_report(view)
        render_report(report, top=top)
        if html is not None:
            try:
                written = write_html(report, html, top=top)
            except OSError as exc:
                why = exc.strerror or exc
                raise ConfigError(f"--html {html}: cannot write it ({why})") from None
            console.print(f"charts written to {written}")


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
