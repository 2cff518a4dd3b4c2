"""The one writer of benchmarks/RESULTS.md, shared by every benchmark's ``--write``
(and ``--results PATH``; the options are :func:`add_arguments`'s, the same in all).

RESULTS.md is the record of our measurements: a ``## `` section per benchmark, in which
later sessions add their own ``### `` subsections (checks, A/B runs, readings). A run never
replaces any of it. The rule: a run is a ``### Run of <date> (<commit>)`` subsection, put
first among its section's subsections, i.e. under the section's heading and any lead text
before its first ``###`` (so no text of the section changes its heading); every earlier run
and every hand-written subsection follow unchanged, and so does every other section. A
missing section is added at the end of the file (a missing file is created). The run's own
machine line (platform, cores, Python, load average, versions the benchmark names) and its
command are written by this module, so every run carries them.

Given a ``run_id``, the run carries two HTML comments that name it (under its heading and at
its end), and writing the same id again replaces that run only: writing a run twice is
writing it once.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results\n"
_HEADING = re.compile(r"(#{1,6}) ")
_FENCE = ("```", "~~~")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes for whether, where and as what its run is written.

    One convention for all: a run is written only when asked, by ``--write`` (to RESULTS.md)
    or by naming the file with ``--results PATH``. ``--no-write`` never writes: it is the
    default, still accepted from the scripts that used to write unasked. See :func:`target`."""
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add this run to the results file (default: only when --results names one)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="the results file to add this run to (implies --write; default: RESULTS.md)",
    )
    parser.add_argument(
        "--run-id", help="name this run: writing the same id again replaces that run only"
    )


def target(args: argparse.Namespace) -> Path | None:
    """The file the run is to be added to by the options of :func:`add_arguments`, or None
    when it is not to be written."""
    if args.write is False or (args.write is None and args.results is None):
        return None
    path: Path = args.results or RESULTS
    return path


def record(
    args: argparse.Namespace, heading: str, body: str, *, versions: Sequence[str] = ()
) -> str | None:
    """Add the run to its file when the options ask for it (:func:`target`), by
    :func:`write_run`; return the run as written, or None when not written."""
    path = target(args)
    if path is None:
        return None
    return write_run(heading, body, path=path, versions=versions, run_id=args.run_id)


def machine(*extra: str) -> str:
    """The machine line: OS, architecture, cores, Python, ``extra`` (versions), load now."""
    parts = [
        f"{platform.system()} {platform.machine()}",
        f"{os.cpu_count()} cores (shared with other jobs)",
        f"Python {platform.python_version()}",
        *extra,
    ]
    return f"Machine: {', '.join(parts)}; 1-min load average {os.getloadavg()[0]:.1f} at the end."


def commit() -> str:
    """The commit of the kirim_events package measured (where it is imported from), with
    "with uncommitted changes" when tracked files other than Markdown differ from it."""
    spec = importlib.util.find_spec("kirim_events")
    origin = spec.origin if spec is not None and spec.origin else __file__
    folder = Path(origin).resolve().parent
    try:
        head = _git(folder, "rev-parse", "--short", "HEAD").strip()
        status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    dirty = any(not line.rstrip().endswith(".md") for line in status.splitlines())
    return f"{head} with uncommitted changes" if dirty else head


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that made the run, with the script named from the repository."""
    args = list(sys.argv if argv is None else argv)
    return shlex.join([f"benchmarks/{Path(args[0]).name}", *args[1:]])


def write_run(
    heading: str,
    body: str,
    *,
    path: Path = RESULTS,
    versions: Sequence[str] = (),
    run_id: str | None = None,
    when: datetime | None = None,
    revision: str | None = None,
    argv: Sequence[str] | None = None,
) -> str:
    """Add a run of the benchmark whose section is ``heading`` (the ``## `` line) to the
    results file at ``path``, by the rule of this module; return the run as written.

    ``body`` is the run's figures and readings (Markdown); its headings of levels 1-3 are
    moved to level 4, so that they stay inside the run. ``versions`` go on the machine line.
    ``when``, ``revision`` (the commit) and ``argv`` default to now, :func:`commit` and the
    process's command line."""
    if not heading.startswith("## ") or "\n" in heading:
        raise ValueError(f"not a section heading: {heading!r}")
    if run_id is not None and (not run_id or "\n" in run_id or "--" in run_id):
        raise ValueError(f"a run id is one line without '--': {run_id!r}")
    stamp = (when or datetime.now(UTC)).astimezone(UTC)
    lines = [
        f"### Run of {stamp:%Y-%m-%d %H:%M} UTC ({revision or commit()})",
        "",
        f"{machine(*versions)} Command: `{command(argv)}`.",
        "",
        *_nested(body.strip("\n")).split("\n"),
    ]
    if run_id is not None:
        lines = [lines[0], f"<!-- run: {run_id} -->", *lines[1:], f"<!-- end of run: {run_id} -->"]
    run = "\n".join(lines) + "\n"
    text = path.read_text(encoding="utf-8") if path.exists() else TITLE
    path.write_text(insert_run(text, heading, run, run_id), encoding="utf-8")
    return run


def insert_run(text: str, heading: str, run: str, run_id: str | None = None) -> str:
    """``text`` with ``run`` (whole lines) added to the section ``heading``: in place of the
    run named ``run_id`` when the section has it, else first among its subsections. No other
    line of ``text`` changes."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    levels = _levels(lines)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == heading), None)
    if start is None or levels[start] != 2:
        tail = [] if not lines or lines[-1] == "\n" else ["\n"]
        return "".join([*lines, *tail, heading + "\n", "\n", run])
    end = next((i for i in range(start + 1, len(lines)) if 0 < levels[i] <= 2), len(lines))
    if run_id is not None:
        first = f"<!-- run: {run_id} -->\n"
        last = f"<!-- end of run: {run_id} -->\n"
        if first in lines[start:end]:
            a = lines.index(first, start, end) - 1  # the run's heading
            b = lines.index(last, a, end)
            return "".join([*lines[:a], run, *lines[b + 1 :]])
    at = next((i for i in range(start + 1, end) if levels[i] == 3), end)
    head = [] if lines[at - 1] == "\n" else ["\n"]  # a blank line before the run's heading
    after = ["\n"] if at < len(lines) else []  # and one between it and what follows
    return "".join([*lines[:at], *head, run, *after, *lines[at:]])


def _levels(lines: list[str]) -> list[int]:
    """The heading level of each line (0: not a heading; code blocks are not read)."""
    out, fenced = [], False
    for line in lines:
        if line.lstrip().startswith(_FENCE):
            fenced = not fenced
            out.append(0)
            continue
        match = None if fenced else _HEADING.match(line)
        out.append(len(match.group(1)) if match else 0)
    return out


def _nested(body: str) -> str:
    """``body`` with headings of levels 1-3 moved to level 4 (kept under the run)."""
    lines = body.split("\n")
    levels = _levels([line + "\n" for line in lines])
    return "\n".join(
        "####" + line[level:] if 0 < level < 4 else line
        for line, level in zip(lines, levels, strict=True)
    )
