"""``kirim-events compact``: flush the collector's journal into the lake, then compact it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from kirim_events.cli._app import (
    DataOption,
    command,
    console,
    errors_to_exit,
    require_folder,
    settings,
    stops_saying,
)
from kirim_events.journal import Journal
from kirim_events.journal_index import journal_path
from kirim_events.lake import Lake

_STOPPED = (
    "nothing is lost; the next kirim-events compact finishes what this one began (until then"
    " a plain Parquet reader may see an event twice; Lake and its views do not)"
)
# The lake records a full run once it begins rewriting (_state/full-compaction.json), and
# the next run of either kind rewrites the groups it did not reach
_STOPPED_FULL = (
    "nothing is lost; the lake records this full compaction as unfinished, and the next"
    " kirim-events compact, scheduled or --full, finishes it (until then a plain Parquet reader"
    " may see an event twice; Lake and its views do not)"
)
# stopped before that (while flushing the journal, or waiting for another flush)
_STOPPED_FULL_UNBEGUN = (
    "nothing is lost; the full compaction had not begun, and a scheduled run will not do it:"
    " run kirim-events compact --full again"
)


def stopped_saying(lake: Lake | None, full: bool, since: str = "") -> str:
    """What a stopped ``compact`` says it left: a full run is finished by the next run once
    the lake records it, which it does as it begins (nothing to finish before then).
    ``since``: when this command began (UTC, as the record writes it): a record begun
    before is an older full run's, which the next run finishes, not this one."""
    if not full:
        return _STOPPED
    try:
        record = None if lake is None else lake.unfinished_full_compaction()
        begun = record is not None and record >= since
    except Exception:  # unreadable now (S3 gone?): say what holds either way
        return (
            "nothing is lost; if the full compaction had begun, the next kirim-events compact"
            " finishes it; if not, run kirim-events compact --full again"
        )
    return _STOPPED_FULL if begun else _STOPPED_FULL_UNBEGUN


@command("compact")
def compact_command(
    data: DataOption = None,
    lake_uri: Annotated[
        str | None,
        typer.Option(
            "--lake",
            help="Lake location when it is not the data folder, e.g. s3://bucket/prefix "
            "(standard AWS environment).",
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Rewrite every partition, compacted or not, through the current dedup and "
            "file schema (after an upgrade or restoring a copy), not only those changed since "
            "the last compaction.",
        ),
    ] = False,
    target_mb: Annotated[
        int,
        typer.Option(
            "--target-mb", min=1, max=1_000_000, help="Target size of merged files, in MB."
        ),
    ] = 256,
    flush: Annotated[
        bool,
        typer.Option("--flush/--no-flush", help="Flush the journal into the lake first."),
    ] = True,
) -> None:
    """Flush the journal (DATA/_journal, when present) into the lake and compact the lake.

    Merges each changed partition's small files, keeping each event's first received copy.
    Safe to interrupt at any moment.
    """
    s = settings(data_dir=data)
    # SIGTERM (cron's timeout, systemd) as Ctrl-C: the run unwinds, releasing an S3 lease
    # that would otherwise block compactions for ten minutes, and says so
    lake: Lake | None = None
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # as the lake records a run
    with (
        stops_saying(lambda: stopped_saying(lake, full, since)),
        errors_to_exit(lake=lake_uri or s.data_dir),
    ):
        if lake_uri is None:
            require_folder(s.data_dir)
        lake = Lake(lake_uri or s.data_dir)
        flushed = None
        if flush and journal_path(s.data_dir).exists():
            with Journal(s.data_dir) as journal:
                flushed = journal.flush(lake)
        if lake_uri is not None:  # after the flush: a journal may have made a lake there
            require_folder(s.data_dir, lake_uri)
        report = lake.compact(full=full, target_file_bytes=target_mb * 1024 * 1024)
    table = Table("", "value", title=f"compacted {lake_uri or s.data_dir}")
    if flushed is not None:
        table.add_row("journal: events flushed", f"{flushed.events:,}")
        table.add_row("journal: receipts flushed", f"{flushed.receipts:,}")
    if report.finished_full_run is not None:
        table.add_row("finished the --full run begun", report.finished_full_run)
    table.add_row("partitions rewritten", f"{report.partitions:,}")
    table.add_row("rows in / out", f"{report.rows_in:,} / {report.rows_out:,}")
    table.add_row("duplicates removed", f"{report.duplicates_removed:,}")
    table.add_row("files in / out", f"{report.files_in:,} / {report.files_out:,}")
    table.add_row("old files deleted", f"{report.files_deleted:,}")
    table.add_row("MB in / out", f"{report.bytes_in / 1e6:,.1f} / {report.bytes_out / 1e6:,.1f}")
    table.add_row("seconds", f"{report.seconds:.2f}")
    console.print(table)
    for said in report.warnings:  # the library logs them, to no one unless its host says
        typer.echo(f"warning: {said}", err=True)
