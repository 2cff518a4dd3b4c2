"""The public API: __all__ is sorted, complete and importable."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import kirim_events


def test_all_is_sorted_and_unique() -> None:
    assert list(kirim_events.__all__) == sorted(set(kirim_events.__all__))


def test_every_name_in_all_exists() -> None:
    for name in kirim_events.__all__:
        assert hasattr(kirim_events, name), name


def test_all_lists_every_public_export() -> None:
    public = {
        name
        for name in dir(kirim_events)  # the names load when first used: dir() lists them all
        if not name.startswith("_")
        and not isinstance(getattr(kirim_events, name), types.ModuleType)
        and name != "annotations"
    }
    assert public == set(kirim_events.__all__) - {"__version__"}


def test_the_package_loads_its_names_when_first_used() -> None:
    # import kirim_events (and the CLI before its commands load) takes no heavy library;
    # each name still is what its module defines, also the three named like their module
    code = (
        "import sys, kirim_events as ke, kirim_events.cli;"
        "heavy = [m for m in ('polars', 'duckdb', 'pyarrow', 'httpx') if m in sys.modules];"
        "import kirim_events.collect, kirim_events.backfill, kirim_events.reconcile;"
        "print(heavy, ke.collect.__module__, ke.backfill.__module__, ke.reconcile.__module__,"
        " ke.Lake.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "[]",
        "kirim_events.collect",
        "kirim_events.backfill",
        "kirim_events.reconcile",
        "kirim_events.lake",
    ]
    with pytest.raises(AttributeError, match="no attribute 'Lakes'"):
        kirim_events.Lakes  # noqa: B018
    assert kirim_events.testing.sign is kirim_events.sign  # a submodule, loaded when used


def test_contract_names_are_exported() -> None:
    for name in ("sign", "verify", "Settings", "Secret", "parse_delivery"):
        assert name in kirim_events.__all__


def test_the_lake_loads_no_pyarrow_dataset_until_one_is_read() -> None:
    # pyarrow.dataset imports pandas where it is installed (about 40 MB and a few tenths of
    # a second at every start of a command that opens a lake); only S3 and key=value lakes
    # need it, and they import it when they read
    code = (
        "import sys, kirim_events.lake, kirim_events.lake.sqlviews, kirim_events.backfill;"
        "print([m for m in ('pyarrow.dataset', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]"]


def test_a_type_checker_takes_every_time_the_docs_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/analytics.md: ``as_of`` (and ``since``, ``until``) take a NumPy ``datetime64``;
    mypy --strict flagged ``lake.as_of(np.datetime64(...))`` as an incompatible type."""
    api = pytest.importorskip("mypy.api")
    pytest.importorskip("numpy")
    user = tmp_path / "notebook_cell.py"
    user.write_text(
        "from datetime import UTC, date, datetime\n\n"
        "import numpy as np\n\n"
        "import kirim_events as ke\n\n"
        'lake = ke.Lake("data")\n'
        'lake.as_of(np.datetime64("2026-05-01T09:00"))\n'
        'lake.events(since=np.datetime64("2026-05-01"), until=date(2026, 5, 2))\n'
        "lake.as_of(datetime(2026, 5, 1, tzinfo=UTC)).as_of('12h')\n"
    )
    monkeypatch.setenv("MYPYPATH", str(Path(__file__).resolve().parent.parent))
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", os.devnull, str(user)]
    )
    assert status == 0, out + err
