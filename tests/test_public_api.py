"""The public API: __all__ is sorted, complete and importable."""

from __future__ import annotations

import types

import kirim_events


def test_all_is_sorted_and_unique() -> None:
    assert list(kirim_events.__all__) == sorted(set(kirim_events.__all__))


def test_every_name_in_all_exists() -> None:
    for name in kirim_events.__all__:
        assert hasattr(kirim_events, name), name


def test_all_lists_every_public_export() -> None:
    public = {
        name
        for name, value in vars(kirim_events).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(kirim_events.__all__) - {"__version__"}


def test_contract_names_are_exported() -> None:
    for name in ("sign", "verify", "Settings", "Secret", "parse_delivery"):
        assert name in kirim_events.__all__
