"""``kirim-events demo``: the whole pipeline end to end on the local emulator."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from kirim_events.analytics.report import build_report
from kirim_events.cli._app import (
    DataOption,
    command,
    console,
    err_console,
    errors_to_exit,
    interrupt_code,
    print_note,
    settings,
    sigterm_interrupts,
)
from kirim_events.cli.report import render_report
from kirim_events.demo import MAX_SCALE, DemoReport, run_demo
from kirim_events.lake import Lake


def _summary(report: DemoReport) -> Table:
    table = Table("pipeline", "value", title=f"demo finished in {report.seconds:.1f} s")
    table.add_row("world events (emulated Kirim)", f"{report.world_events:,}")
    table.add_row("webhook deliveries / attempts", f"{report.deliveries:,} / {report.attempts:,}")
    table.add_row("deliveries sent twice (a lost ack)", f"{report.duplicates_sent:,}")
    table.add_row("events sent while the collector was down", f"{report.outage_events:,}")
    table.add_row("deliveries Kirim gave up on (restart)", f"{report.dead_or_failed:,}")
    table.add_row("events never acknowledged", f"{report.unacknowledged_events:,}")
    table.add_row("found missing by reconcile", f"{report.reconcile_missing:,}")
    table.add_row("recovered by reconcile", f"{report.reconcile_recovered:,}")
    exact = Text("yes", "green") if report.reconcile_found_exactly else Text("no", "red")
    table.add_row("reconcile found exactly the unacknowledged events", exact)
    table.add_row("events in the lake (deduplicated)", f"{report.lake_events:,}")
    verdict = Text("yes", "green") if report.lake_matches_truth else Text("no", "red")
    table.add_row("lake equals the emulator's ground truth", verdict)
    return table


def _program() -> str:
    """How to run kirim-events again from this shell: the plain name when the shell finds
    this very script, else the path it was run by (the README's first command runs
    ``.venv/bin/kirim-events`` without activating the environment)."""
    ran = Path(sys.argv[0])
    if ran.name != "kirim-events":  # python -m kirim_events, a test runner
        return "kirim-events"
    found = shutil.which("kirim-events")
    if found is not None and Path(found).resolve() == ran.resolve():
        return "kirim-events"
    return shlex.quote(sys.argv[0])


@command("demo")
def demo(
    data: DataOption = None,
    scale: Annotated[
        float,
        typer.Option(
            "--scale",
            min=0.05,
            max=MAX_SCALE,
            help="Traffic multiplier (1.0: ~4 000 events, < 1 min).",
        ),
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the emulated world.")] = 7,
) -> None:
    """Run the pipeline end to end on a local Kirim emulator, then print the report.

    Starts the emulator and the collector on free loopback ports, streams a day of traffic
    (duplicates, out-of-order statuses, a secret rotation and a collector restart), runs
    reconcile to recover what the restart missed, compacts the lake and prints the report.
    """
    s = settings(data_dir=data)
    bar = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.completed:>6,.0f}/{task.total:<6,.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if not tasks:  # shown from the first progress on: a refusal before it prints only itself
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=max(total, 1))
        bar.update(tasks[stage], completed=done, total=max(total, 1))

    try:
        try:
            with sigterm_interrupts(), errors_to_exit():
                result = run_demo(s.data_dir, scale=scale, seed=seed, on_progress=on_progress)
        finally:
            if tasks:  # stop() prints a line even when never started
                bar.stop()
    except KeyboardInterrupt as exc:
        err_console.print(
            f"interrupted: the demo stopped part way; {s.data_dir} holds what it wrote so far,"
            " and the next kirim-events demo there starts afresh",
            soft_wrap=True,
        )
        raise typer.Exit(interrupt_code(exc)) from None
    console.print(_summary(result))
    for note in result.notes:
        print_note(note)
    with errors_to_exit():
        render_report(
            build_report(Lake(Path(s.data_dir))),
            top=5,
            more="the first {top} (kirim-events report lists 10, --top N more)",
        )
    notebook = "open notebooks/01-quickstart.ipynb"
    # the notebooks open the repository's ./data unless told otherwise; the paths are quoted
    # for a shell (a space split them in two when pasted)
    if Path(s.data_dir) != Path("data") or not Path("notebooks").is_dir():
        notebook += f" with KIRIM_DATA_DIR={shlex.quote(str(Path(s.data_dir).resolve()))} set"
    console.print(
        f"\nThe lake is in {s.data_dir}/ - try: {_program()} report --data "
        f"{shlex.quote(str(s.data_dir))}, or {notebook}"
    )
    if not result.lake_matches_truth:
        raise typer.Exit(1)
