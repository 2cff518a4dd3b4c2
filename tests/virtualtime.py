"""An asyncio event loop on virtual time, for tests of code that waits on the loop's clock.

A timer fires as soon as nothing else is ready, so a 30 s sleep takes no real time, and what
happens at which instant is fixed: a test sleeps to a chosen instant and looks.

Work in other threads (a journal's writer) is not waited for while a timer is pending: the
loop moves on to the timer. Only with no timer left does it wait for their answer, for real.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
REAL_WAIT = 30.0


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that never waits: where the loop would sleep until its next timer, it moves
    the loop's virtual clock there instead (I/O already ready is still reported)."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer: only another thread's answer can wake the loop
            ready = super().select(REAL_WAIT)
            if not ready:
                raise RuntimeError(f"no timer, and nothing came in {REAL_WAIT} s: a deadlock")
            return ready
        # onto the timer itself: far from 0 (a unix time), now + (when - now) can fall short
        # of when by a rounding step, and the timer would never come due
        timers = self._loop._scheduled  # type: ignore[attr-defined]
        self._loop.now = max(self._loop.now + timeout, timers[0]._when if timers else 0.0)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` starts at ``start`` and moves only to its next timer."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        super().__init__(selector=_JumpingSelector(self))
        # a timer is due when earlier than now + this; the monotonic clock's 1 ns vanishes
        # in the rounding of a unix time (its step there is 0.24 us), and no timer came due
        self._clock_resolution = 1e-6

    def time(self) -> float:
        return self.now


def run(main: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """``asyncio.run(main)`` on a :class:`VirtualTimeLoop` starting at ``start``."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
