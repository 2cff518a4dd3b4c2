"""The process's local time zone set for a test: what a machine elsewhere would see."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_zone(name: str) -> Iterator[None]:
    """Within the block the local time zone is ``name`` (``TZ`` and :func:`time.tzset`, which
    ``datetime`` and ``time.localtime`` follow); the one before is back after it."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()
