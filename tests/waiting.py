"""Waiting for what another thread or process does: ask again until it holds, with a deadline.

A fixed sleep that hopes the other side got there fails on a busy machine and wastes time on
an idle one; a poll returns as soon as the answer is there and fails loudly when it never is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 30.0, *, interval: float = 0.02, what: str = ""
) -> T:
    """``condition()``'s first truthy answer, asked every ``interval`` s; an AssertionError
    naming ``what`` when none came within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (answer := condition()):
        assert time.monotonic() < deadline, f"{what or 'the condition'} not within {timeout} s"
        time.sleep(interval)
    return answer
