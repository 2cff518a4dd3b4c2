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
        if "lake" in block:  # one that reads the lake opened it as a reader would
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


_ROOTS = {"ke": "kirim_events", "kirim_events": "kirim_events", "Lake": "kirim_events.Lake"}
_ROOTS["Collector"] = "kirim_events.Collector"


def _api_references(text: str) -> list[str]:
    """Inline code in the prose naming the package's API: ``ke.collect()``,
    ``kirim_events.demo.run_demo("data", scale=1.0)``, ``Lake.write_events`` (line breaks
    inside one folded)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found = []
    for code in re.findall(r"`([^`]+)`", prose):
        code = " ".join(code.split())
        if re.fullmatch(r"(?:ke|kirim_events|Lake|Collector)(?:\.\w+)*(?:\(.*\))?", code):
            found.append(code)
    return found


def _resolve(dotted: str) -> Any:
    """What a reader gets for ``dotted``: attributes first (``kirim_events.collect`` is the
    function the package exports), a submodule where there is no such attribute."""
    import importlib

    root, *rest = dotted.split(".")
    path = _ROOTS[root].split(".")
    found: Any = importlib.import_module(path[0])
    for name in [*path[1:], *rest]:
        if not hasattr(found, name):  # AttributeError below: the doc names what is not there
            importlib.import_module(f"{found.__name__}.{name}")
        found = getattr(found, name)
    return found


def _check_call(code: str) -> None:
    """The arguments a doc shows fit the signature: a call binds, a signature written out
    (``f(events, *, copies=None)``) has the same parameters and defaults."""
    import inspect

    name, args = code.split("(", 1)
    signature = inspect.signature(_resolve(name))
    args = "(" + args.replace("…", "None")
    try:
        call = ast.parse("f" + args, mode="eval").body
    except SyntaxError:
        shown = ast.parse(f"def f{args}: pass").body[0]
        assert isinstance(shown, ast.FunctionDef)
        real = [p for p in signature.parameters.values() if p.name != "self"]
        written = [a.arg for a in shown.args.args] + [a.arg for a in shown.args.kwonlyargs]
        assert written == [p.name for p in real], code
        defaults = [ast.literal_eval(d) if d else None for d in shown.args.kw_defaults]
        kw_only = [p.default for p in real if p.kind is p.KEYWORD_ONLY]
        assert defaults == kw_only, code
        return
    assert isinstance(call, ast.Call)
    signature.bind(*call.args, **{k.arg: None for k in call.keywords if k.arg})


def test_the_api_the_docs_name_exists_and_takes_the_arguments_shown() -> None:
    """``kirim_events.x.y(...)`` in README.md and docs/: each name resolves, and each call
    or signature shown fits the function's own (a renamed parameter left the doc wrong)."""
    references = [
        code for doc in (*DOCS, "docs/cli.md") for code in _api_references((ROOT / doc).read_text())
    ]
    assert 'kirim_events.demo.run_demo("data", scale=1.0, on_progress=callback)' in references
    for code in references:
        name = code.split("(", 1)[0]
        _resolve(name)
        if "(" in code and not code.endswith("()"):
            _check_call(code)


def test_the_names_docs_analytics_lists_in_a_module_are_there() -> None:
    """docs/analytics.md lists the notebook module's functions and the schema's constants
    by their bare names."""
    text = " ".join((ROOT / "docs/analytics.md").read_text().split())
    listed = {
        "kirim_events.analytics.notebook": text.split("`kirim_events.analytics.notebook` has ")[
            1
        ].split("`kirim-events report")[0],
        "kirim_events.schema": text.split("`kirim_events.schema` (")[1].split(")")[0],
    }
    for module, words in listed.items():
        names = re.findall(r"`([a-z_A-Z]\w*)`", words)
        assert len(names) >= 2, module
        for name in names:
            _resolve(f"{module}.{name}")
