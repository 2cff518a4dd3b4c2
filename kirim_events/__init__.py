"""kirim-events: turn Kirim webhooks into analysis-ready data.

The public API is what ``__all__`` lists; everything else is internal.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
import typing

if typing.TYPE_CHECKING:
    from kirim_events.backfill import BackfillReport, backfill
    from kirim_events.client import KirimClient
    from kirim_events.collect import Collector, collect
    from kirim_events.config import Secret, Settings
    from kirim_events.emulator import Emulator
    from kirim_events.errors import (
        ApiError,
        ConfigError,
        KirimEventsError,
        LakeError,
        PayloadError,
        PermanentApiError,
        RetryableApiError,
        SignatureError,
        StorageError,
    )
    from kirim_events.events import EventRecord, parse_delivery
    from kirim_events.journal import Journal
    from kirim_events.lake import Lake
    from kirim_events.receiver import Receiver
    from kirim_events.reconcile import ReconcileReport, reconcile
    from kirim_events.signing import sign, verify

# The names are imported when first used (PEP 562), not with the package: a command's
# process then starts in a fraction of the time, and catches SIGINT/SIGTERM from its first
# instant (kirim_events.cli.main), before polars, duckdb and pyarrow are loaded.
_EXPORTS = {
    "ApiError": "kirim_events.errors",
    "BackfillReport": "kirim_events.backfill",
    "Collector": "kirim_events.collect",
    "ConfigError": "kirim_events.errors",
    "Emulator": "kirim_events.emulator",
    "EventRecord": "kirim_events.events",
    "Journal": "kirim_events.journal",
    "KirimClient": "kirim_events.client",
    "KirimEventsError": "kirim_events.errors",
    "Lake": "kirim_events.lake",
    "LakeError": "kirim_events.errors",
    "PayloadError": "kirim_events.errors",
    "PermanentApiError": "kirim_events.errors",
    "Receiver": "kirim_events.receiver",
    "ReconcileReport": "kirim_events.reconcile",
    "RetryableApiError": "kirim_events.errors",
    "Secret": "kirim_events.config",
    "Settings": "kirim_events.config",
    "SignatureError": "kirim_events.errors",
    "StorageError": "kirim_events.errors",
    "backfill": "kirim_events.backfill",
    "collect": "kirim_events.collect",
    "parse_delivery": "kirim_events.events",
    "reconcile": "kirim_events.reconcile",
    "sign": "kirim_events.signing",
    "verify": "kirim_events.signing",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        # a submodule, as ``ke.lake`` or ``ke.testing`` (once found there as a side effect)
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Three names are both a function and the module defining it (``backfill``,
    ``collect``, ``reconcile``). Importing such a module sets it on the package under that
    name, which would hide the function; the package keeps the function's name instead."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

# A library leaves logging to its host: without this, Python's last-resort handler would
# print our warnings (a rejected delivery, a lease lost) to stderr of a host that set none.
logging.getLogger("kirim_events").addHandler(logging.NullHandler())

__all__ = [
    "ApiError",
    "BackfillReport",
    "Collector",
    "ConfigError",
    "Emulator",
    "EventRecord",
    "Journal",
    "KirimClient",
    "KirimEventsError",
    "Lake",
    "LakeError",
    "PayloadError",
    "PermanentApiError",
    "Receiver",
    "ReconcileReport",
    "RetryableApiError",
    "Secret",
    "Settings",
    "SignatureError",
    "StorageError",
    "__version__",
    "backfill",
    "collect",
    "parse_delivery",
    "reconcile",
    "sign",
    "verify",
]
