"""The examples in the package's docstrings run as doctests (style.md: "the examples run
as doctests"): an example whose shown output is not what the call returns fails here."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import kirim_events

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(kirim_events.__path__, prefix="kirim_events.")
    if not info.name.endswith("__main__")
)


def test_the_walk_finds_the_modules() -> None:
    assert "kirim_events.signing" in MODULES
    assert "kirim_events.lake" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, report=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
