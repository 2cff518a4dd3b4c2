"""kirim-events: turn Kirim webhooks into analysis-ready data.

The public API is what ``__all__`` lists; everything else is internal.
"""

from __future__ import annotations

import logging

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
