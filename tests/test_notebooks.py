"""The notebooks run top to bottom offline, creating their data when the folder is empty."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = [
    "01-quickstart.ipynb",
    "02-message-delivery.ipynb",
    "03-conversations.ipynb",
    "04-delivery-health.ipynb",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Empty on purpose: the first notebook must create the lake with the emulator.
    return tmp_path_factory.mktemp("notebook-lake")


def test_the_four_notebooks_exist() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


def _in_git(name: str) -> str:
    """The notebook as git holds it (staged): running it in place (the README's ``jupyter
    execute --inplace``, or a save in JupyterLab) changes only the file, and failed this
    suite, the README's next command, with "has outputs committed". Outside a git checkout
    (or for a notebook git does not hold yet), the file."""
    try:
        shown = subprocess.run(
            ["git", "show", f":notebooks/{name}"], cwd=NOTEBOOKS, capture_output=True, check=False
        )
    except FileNotFoundError:  # no git
        shown = None
    if shown is None or shown.returncode != 0:
        return (NOTEBOOKS / name).read_text(encoding="utf-8")
    return shown.stdout.decode("utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_stripped_in_git(name: str) -> None:
    book = json.loads(_in_git(name))
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{name} has outputs committed"
            assert cell["execution_count"] is None


@pytest.mark.parametrize("name", NAMES)
def test_every_cell_has_a_unique_id(name: str) -> None:
    """nbformat 4.5 wants an id on every cell (it warned on cells added without one, and
    says it will refuse them)."""
    raw = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    ids = [cell.get("id") for cell in raw["cells"]]  # nbformat.read would fill them in
    assert None not in ids
    nbformat.validate(nbformat.from_dict(raw))
    assert len(set(ids)) == len(ids)


def _run(name: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute one notebook on the lake in ``data_dir``; return it, checked error-free."""
    monkeypatch.setenv("KIRIM_DATA_DIR", str(data_dir))
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        book,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert errors == []
    executed = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in executed)
    return book


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(
    name: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the folder is shared: the first notebook run finds it empty and makes the lake, the
    # others read it (they would make it the same way: test_every_notebook_makes_its_lake...)
    _run(name, data_dir, monkeypatch)
    # The first code cell ends with `lake`, and the lake exists afterwards.
    assert any(data_dir.glob("events/**/*.parquet"))


def _first_code_cell(name: str) -> str:
    book = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    return "".join(next(c for c in book["cells"] if c["cell_type"] == "code")["source"])


def test_every_notebook_makes_its_lake_as_the_first_does() -> None:
    """Each notebook makes the lake when the folder is empty, but the runs above share one
    folder: only the first finds it empty. The others' first cells are that one's, so its
    run covers theirs (a notebook that lost its ``run_demo`` passed here, and failed alone
    on an empty folder)."""
    first = _first_code_cell(NAMES[0])
    assert "run_demo(DATA" in first
    assert [_first_code_cell(name) for name in NAMES[1:]] == [first] * (len(NAMES) - 1)


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's lake early on: one message, sent and nothing more, one assignment."""
    from test_analytics_support import conversation, status

    import kirim_events as ke

    root = tmp_path_factory.mktemp("tiny-lake")
    ke.Lake(root).write_events(
        [status("wamid.A", "sent", 0, 1), conversation("evt_1", "assigned", "cnv_1", 0, 1)]
    )
    return root


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_a_lake_with_almost_nothing_in_it(
    name: str, tiny_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointed at one's own young lake, no cell may assume the demo's data (a read rate
    of None, no read message, no inbound message)."""
    _run(name, tiny_lake, monkeypatch)


def _data_folder_of_first_cell(
    monkeypatch: pytest.MonkeyPatch, value: str | None, home: Path
) -> Path:
    """The folder the notebooks' first cell opens for KIRIM_DATA_DIR ``value`` (None:
    unset), run from notebooks/ as Jupyter runs them: the cell up to its demo, which is not
    run (nothing is written)."""
    monkeypatch.setenv("HOME", str(home))
    if value is None:
        monkeypatch.delenv("KIRIM_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("KIRIM_DATA_DIR", value)
    monkeypatch.chdir(NOTEBOOKS)
    resolving, demo, _ = _first_code_cell(NAMES[0]).partition("\nif not any(")
    assert demo  # the cell still checks for a lake before it makes one
    scope: dict[str, Any] = {}
    exec(compile(resolving, "first cell", "exec"), scope)  # noqa: S102 - our own notebook
    return Path(scope["DATA"])


def test_the_first_cell_reads_kirim_data_dir_as_the_cli_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """KIRIM_DATA_DIR=~/kirim (quoted in a shell, or from an env file) is the home folder's
    kirim to the CLI; the notebooks opened a folder named "~" under the repository, found
    no lake there and made the demo's. A blank value is unset to the CLI (./data); to the
    notebooks it was the repository itself."""
    root = NOTEBOOKS.parent
    assert _data_folder_of_first_cell(monkeypatch, "~/kirim", tmp_path) == tmp_path / "kirim"
    assert _data_folder_of_first_cell(monkeypatch, "  ", tmp_path) == root / "data"
    assert _data_folder_of_first_cell(monkeypatch, None, tmp_path) == root / "data"
    assert _data_folder_of_first_cell(monkeypatch, "lake2", tmp_path) == root / "lake2"
    assert _data_folder_of_first_cell(monkeypatch, str(tmp_path), tmp_path) == tmp_path


def test_the_first_cell_on_a_collectors_unflushed_journal_says_what_to_do_in_a_notebook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """KIRIM_DATA_DIR names a collector's folder before its first flush: only ``_journal``.
    The first cell found no lake and ran the demo, which refused the folder telling the
    user to pass ``--data DIR``, a CLI option, in a notebook. The refusal now says how to
    read the journal's events (flush it, run the cell again) and, in the notebooks' terms,
    how to give the demo another folder; following it, the cell opens the user's events."""
    from typer.testing import CliRunner

    import kirim_events as ke
    from kirim_events import testing
    from kirim_events.cli import app
    from kirim_events.events import parse_delivery
    from kirim_events.journal import Journal

    data = tmp_path / "my lake"  # a space: the command shown must copy and paste
    real = parse_delivery(testing.encode(testing.kirim_event(event_id="evt_REAL")), {})
    with Journal(data) as journal:
        assert journal.append(real) == [True]
    monkeypatch.setenv("KIRIM_DATA_DIR", str(data))
    monkeypatch.chdir(NOTEBOOKS)
    cell = compile(_first_code_cell(NAMES[0]), "first cell", "exec")
    with pytest.raises(ke.ConfigError) as refused:
        exec(cell, {})  # noqa: S102 - our own notebook
    message = str(refused.value)
    assert "collector's journal" in message
    assert f"kirim-events compact --data {shlex.quote(str(data))}" in message
    assert "%env KIRIM_DATA_DIR=" in message  # the notebooks' way to another folder
    assert sorted(p.name for p in data.iterdir()) == ["_journal"]  # the demo wrote nothing
    result = CliRunner().invoke(app, ["compact", "--data", str(data)])
    assert result.exit_code == 0, result.output
    scope: dict[str, Any] = {}
    exec(cell, scope)  # noqa: S102 - run again, as the message says
    assert scope["lake"].events().collect()["event_id"].to_list() == ["evt_REAL"]


def test_the_quickstart_reads_a_lake_whose_path_holds_a_quote(
    tiny_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart's plain DuckDB read put the data folder into the SQL text between
    quotes: in a folder such as /home/o'brien/kirim it failed with DuckDB's "unterminated
    string literal". The path is now passed as a parameter."""
    import shutil

    quoted = tmp_path / "o'brien" / "kirim"
    shutil.copytree(tiny_lake, quoted)
    _run(NAMES[0], quoted, monkeypatch)
