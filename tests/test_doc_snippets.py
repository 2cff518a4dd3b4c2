"""The Python in README.md and docs/analytics.md runs as written on the demo's lake: a
snippet there (``select(min(), max())`` of one column, now ``lake.span()``) failed with a
DuplicateError."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import kirim_events as ke
from kirim_events.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/analytics.md")
_NAMES = {"lake", "pl", "ke"}  # what an inline snippet may name


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _inline(text: str) -> list[str]:
    """Inline code that reads the lake and runs alone (``lake.sql(...)`` does not)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found = []
    for code in re.findall(r"`([^`\n]+)`", prose):
        if not code.startswith("lake.") or "..." in code:
            continue
        tree = ast.parse(code, mode="eval")
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        if names <= _NAMES:
            found.append(code)
    return found


def _run(value: Any) -> Any:
    """Make a lazy result do its work, as a user's .collect() or .pl() would."""
    if isinstance(value, pl.LazyFrame):
        return value.collect()
    if isinstance(value, duckdb.DuckDBPyRelation):
        return value.pl()
    return value


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    run_demo(folder / "data", scale=0.05, seed=3)
    return folder


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_block_runs_on_the_demo_lake(
    doc: str, demo_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(demo_folder)  # the snippets open ke.Lake("data")
    blocks = _blocks((ROOT / doc).read_text())
    assert blocks, f"no python block in {doc}"
    for block in blocks:
        scope: dict[str, Any] = {}
        for statement in ast.parse(block).body:
            if isinstance(statement, ast.Expr):
                code = compile(ast.Expression(statement.value), doc, "eval")
                _run(eval(code, scope))  # noqa: S307 (our own docs, run as a reader would)
            else:
                exec(compile(ast.Module([statement], []), doc, "exec"), scope)  # noqa: S102
        assert isinstance(scope.get("lake"), ke.Lake)


def test_every_inline_lake_snippet_runs_on_the_demo_lake(
    demo_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(demo_folder)
    snippets = [code for doc in DOCS for code in _inline((ROOT / doc).read_text())]
    assert "lake.span()" in snippets  # where the one that failed stood
    scope = {"lake": ke.Lake("data"), "pl": pl, "ke": ke}
    results = {code: _run(eval(code, scope)) for code in snippets}  # noqa: S307
    first, last = results["lake.span()"]
    assert first <= last
