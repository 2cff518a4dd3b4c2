"""benchmarks/_results.py, the one writer of benchmarks/RESULTS.md: a run is added to its
section and nothing already in the file is lost or changed."""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from kirim_events.lake import Lake

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = BENCH / "RESULTS.md"
WHEN = datetime(2026, 12, 2, 19, 30, tzinfo=UTC)
ARGV = ["/somewhere/benchmarks/bench_x.py", "--scale", "1", "--write"]

SAMPLE = """# Benchmark results

Intro of the file.

## One (bench_one.py)

### Run of 2026-11-01 10:00 UTC (aaaaaaa)

| a | b |
|---|---|
| 1 | 2 |

### Stop 30 check: hand-written

An A/B run someone measured by hand.

## Two (bench_two.py)

The lead of section two: what it measures.
It has no subsection yet.

## Three (bench_three.py)

Figures of an old run, not yet under a heading.
"""


@pytest.fixture
def results(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("_results")


def write(results: ModuleType, path: Path, heading: str, body: str, **kw: object) -> str:
    run: str = results.write_run(
        heading, body, path=path, when=WHEN, revision="1234abc", argv=ARGV, **kw
    )
    return run


def test_a_run_goes_first_in_its_section_and_every_other_byte_stays(
    results: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(SAMPLE, encoding="utf-8")
    run = write(results, path, "## One (bench_one.py)", "| c |\n|---|\n| 3 |\n")
    at = SAMPLE.index("### Run of 2026-11-01")
    assert path.read_text(encoding="utf-8") == SAMPLE[:at] + run + "\n" + SAMPLE[at:]
    assert run.startswith("### Run of 2026-12-02 19:30 UTC (1234abc)\n\nMachine: ")
    assert "Command: `benchmarks/bench_x.py --scale 1 --write`." in run
    assert run.endswith("| c |\n|---|\n| 3 |\n")


def test_a_run_goes_under_the_lead_of_its_section(results: ModuleType, tmp_path: Path) -> None:
    """Text before a section's first subsection is its lead: the run goes under it, so no
    text of the section comes to stand under the run's heading."""
    path = tmp_path / "RESULTS.md"
    path.write_text(SAMPLE, encoding="utf-8")
    run = write(results, path, "## Two (bench_two.py)", "figures\n")
    at = SAMPLE.index("## Three")
    assert path.read_text(encoding="utf-8") == SAMPLE[:at] + run + "\n" + SAMPLE[at:]
    run = write(results, path, "## Three (bench_three.py)", "figures\n")
    text = path.read_text(encoding="utf-8")
    assert text.endswith("Figures of an old run, not yet under a heading.\n\n" + run)


def test_runs_pile_up_newest_first(results: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(SAMPLE, encoding="utf-8")
    first = write(results, path, "## One (bench_one.py)", "first\n")
    second = write(results, path, "## One (bench_one.py)", "second\n")
    at = SAMPLE.index("### Run of 2026-11-01")
    want = SAMPLE[:at] + second + "\n" + first + "\n" + SAMPLE[at:]
    assert path.read_text(encoding="utf-8") == want


def test_a_missing_section_is_added_at_the_end(results: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(SAMPLE, encoding="utf-8")
    run = write(results, path, "## Four (bench_four.py)", "figures\n")
    assert path.read_text(encoding="utf-8") == SAMPLE + "\n## Four (bench_four.py)\n\n" + run


def test_a_missing_file_is_created(results: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    run = write(results, path, "## Four (bench_four.py)", "figures\n")
    assert path.read_text(encoding="utf-8") == (
        "# Benchmark results\n\n## Four (bench_four.py)\n\n" + run
    )


def test_a_heading_inside_another_text_is_not_the_section(
    results: ModuleType, tmp_path: Path
) -> None:
    """Only a line that is the heading is the section: not a longer heading it begins, and
    not a line in a code block."""
    path = tmp_path / "RESULTS.md"
    text = "# R\n\n## One (bench_one.py) again\n\nx\n\n```\n## One (bench_one.py)\n```\n"
    path.write_text(text, encoding="utf-8")
    run = write(results, path, "## One (bench_one.py)", "figures\n")
    assert path.read_text(encoding="utf-8") == text + "\n## One (bench_one.py)\n\n" + run


def test_the_same_run_id_replaces_that_run_only(results: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(SAMPLE, encoding="utf-8")
    write(results, path, "## One (bench_one.py)", "other run\n", run_id="b")
    write(results, path, "## One (bench_one.py)", "figures\n", run_id="a")
    once = path.read_text(encoding="utf-8")
    write(results, path, "## One (bench_one.py)", "figures\n", run_id="a")
    assert path.read_text(encoding="utf-8") == once
    run = write(results, path, "## One (bench_one.py)", "new figures\n", run_id="a")
    assert path.read_text(encoding="utf-8") == once.replace("\nfigures\n", "\nnew figures\n")
    assert "<!-- run: a -->" in run
    assert run.endswith("<!-- end of run: a -->\n")
    assert once.count("other run") == 1
    assert SAMPLE.split("## One (bench_one.py)\n\n")[1] in once  # the rest of the section


def test_a_run_id_is_one_line_without_comment_ends(results: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run id"):
        write(results, tmp_path / "R.md", "## One", "x\n", run_id="a -->")


def test_headings_in_a_run_stay_under_it(results: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(SAMPLE, encoding="utf-8")
    run = write(results, path, "## One (bench_one.py)", "### scale 1\n\n## oops\n\n#### kept\n")
    assert "\n#### scale 1\n\n#### oops\n\n#### kept\n" in run


def test_machine_date_and_commit_are_always_written(results: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    run = results.write_run("## One", "figures\n", path=path, versions=["polars 9.9"])
    heading = run.splitlines()[0]
    assert re.fullmatch(r"### Run of \d{4}-\d\d-\d\d \d\d:\d\d UTC \((.+)\)", heading)
    assert heading.split("(")[1].rstrip(")") == results.commit()
    assert re.match(r"[0-9a-f]{7,}( with uncommitted changes)?$|commit unknown$", results.commit())
    machine = run.splitlines()[2]
    assert machine.startswith("Machine: ")
    assert " cores " in machine
    assert "Python " in machine
    assert "polars 9.9" in machine


def test_every_section_of_our_results_file_keeps_every_byte(
    results: ModuleType, tmp_path: Path
) -> None:
    """On the real RESULTS.md: a run added to any section leaves every other line as it was,
    and lands right under that section's heading and lead."""
    original = RESULTS.read_text(encoding="utf-8")
    headings = [line for line in original.splitlines() if line.startswith("## ")]
    assert len(headings) >= 7
    for heading in headings:
        path = tmp_path / "RESULTS.md"
        shutil.copyfile(RESULTS, path)
        run = write(results, path, heading, "figures\n")
        text = path.read_text(encoding="utf-8")
        at = text.index(run)
        assert text[:at] + text[at + len(run) + 1 :] == original
        section = text[text.index(heading + "\n") : at]
        assert "\n### " not in section
        assert "\n## " not in section


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        ([], None),
        (["--no-write"], None),
        (["--write"], "RESULTS.md"),
        (["--results", "other.md"], "other.md"),
        (["--write", "--results", "other.md"], "other.md"),
        (["--no-write", "--results", "other.md"], None),
        (["--write", "--no-write"], None),  # the last one said wins
    ],
)
def test_a_run_is_written_only_when_asked(
    results: ModuleType, tmp_path: Path, argv: list[str], where: str | None
) -> None:
    """The one convention of every benchmark: ``--write``, or a file named by
    ``--results``; never by default, never with ``--no-write``."""
    parser = argparse.ArgumentParser()
    results.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / a) if a.endswith(".md") else a for a in argv])
    want = None if where is None else tmp_path / where
    assert results.target(args) == (results.RESULTS if where == "RESULTS.md" else want)
    if where == "RESULTS.md":
        return  # record() would write the real file
    run = results.record(args, "## One (bench_one.py)", "figures\n")
    other = tmp_path / "other.md"
    if want is None:
        assert run is None
        assert not other.exists()
    else:
        assert run is not None
        assert other.read_text(encoding="utf-8").endswith(run)


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_every_benchmark_takes_the_same_write_options(script: str) -> None:
    """All seven take ``--write`` / ``--no-write`` / ``--results`` / ``--run-id`` from
    ``_results.add_arguments`` (some took ``--write``, others ``--no-write``, and wrote
    unasked); a script that adds its own ``--write`` again fails to build its parser."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    usage = " ".join(done.stdout.split())
    assert "[--write | --no-write] [--results RESULTS] [--run-id RUN_ID]" in usage
    assert "add this run to the results file (default: only when --results names one)" in usage


@pytest.fixture
def analytics(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("bench_analytics")


def test_the_analytics_reading_counts_the_columns_it_measured(analytics: ModuleType) -> None:
    """The column counts in the reading are those the workers reported, not a fixed 6."""
    res = {}
    for task, ours in (("timelines", 24), ("lifecycles", 20)):
        for impl in (*analytics.IMPLS, analytics.IN_MEMORY):
            res[(task, impl)] = {"median": 1.0, "columns": ours if "ours" in impl else 5}
    reading = analytics._reading({1000: res})
    assert "The bare query returns 5 (timelines) and 5 (lifecycles) columns" in reading
    assert "ours returns 24 (timelines) and 20 (lifecycles):" in reading
    other = {**res, ("timelines", "duckdb-bare"): {"median": 1.0, "columns": 7}}
    reading = analytics._reading({1000: res, 2000: other})
    assert "The bare query returns 5-7 (timelines) and 5 (lifecycles) columns" in reading


def test_an_analytics_worker_reports_the_columns_of_its_result(
    analytics: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "lake"
    analytics.build_lake(2000, path)
    bare = analytics.worker("duckdb-bare", "timelines", path, 1)
    assert (bare["rows"], bare["columns"]) == analytics.shape(
        analytics._duckdb_bare(path, "timelines")
    )
    assert bare["columns"] == 6  # message_id, four first times, a count
    assert bare["rows"] > 0
    ours = analytics.worker("ours-polars", "lifecycles", path, 1)
    assert ours["columns"] == len(Lake(path).conversation_lifecycles().collect_schema())
