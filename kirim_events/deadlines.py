"""Deadlines for many short awaits at once, cheaper than a timer each.

The receiver gives every request's body read a deadline. ``asyncio.timeout`` schedules and
cancels one timer per request, about 3.5 us: some 3 % of the collector's loop time per
request. Here requests are grouped by the whole second their deadline falls in, and one
timer per second cancels the reads of its group still running; a request costs a set insert
and removal. A deadline is met up to a second late.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

__all__ = ["Deadlines", "SecondGroups"]

Task = asyncio.Task[Any]
T = TypeVar("T", bound=Hashable)


class SecondGroups(Generic[T]):
    """Items that expire ``seconds`` after they are added, grouped by the whole second their
    deadline falls in: one loop timer per second calls ``expire`` on each item of its group
    still there. Adding and discarding an item is a set insert and removal."""

    def __init__(self, seconds: float, expire: Callable[[T], object]) -> None:
        self.seconds = seconds
        self._expire_item = expire
        # per event loop: a timer runs on the loop that scheduled it, and expires only its
        # own items (one instance serving one loop after another, e.g. in tests)
        self._loops: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, set[T]]] = (
            WeakKeyDictionary()
        )

    def add(self, item: T, loop: asyncio.AbstractEventLoop | None = None) -> set[T]:
        """Put ``item`` in the group of its deadline; return the group (to discard it from)."""
        loop = loop or asyncio.get_running_loop()
        groups = self._loops.get(loop)
        if groups is None:
            groups = self._loops[loop] = {}
        second = math.ceil(loop.time() + self.seconds)
        group = groups.get(second)
        if group is None:
            group = groups[second] = set()
            loop.call_at(second, self._expire, groups, second)
        group.add(item)
        return group

    def _expire(self, groups: dict[int, set[T]], second: int) -> None:
        for item in groups.pop(second, ()):
            self._expire_item(item)


class Deadlines:
    """``async with deadlines.limit():`` raises TimeoutError when the block runs for more
    than ``seconds`` (up to a second more); one instance serves every task, of any loop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._groups: SecondGroups[Task] = SecondGroups(seconds, self._cancel)
        self._expired: set[Task] = set()

    def limit(self) -> _Limit:
        """Run the block under the deadline (TimeoutError when it is passed)."""
        return _Limit(self)

    def _enter(self, task: Task) -> set[Task]:
        return self._groups.add(task)

    def _cancel(self, task: Task) -> None:
        self._expired.add(task)
        task.cancel()


class _Limit:
    """One use of :meth:`Deadlines.limit` (a class: a generator-based context manager cost
    more than the timer it replaces)."""

    __slots__ = ("_cancelling", "_deadlines", "_group", "_task")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self._task: Task | None = None
        self._group: set[Task] = set()
        self._cancelling = 0

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        if self._task is not None:  # outside a task there is nothing to cancel
            self._cancelling = self._task.cancelling()
            self._group = self._deadlines._enter(self._task)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = self._task
        if task is None:
            return
        self._group.discard(task)
        expired = self._deadlines._expired
        if task in expired:
            expired.discard(task)
            # our cancellation is a timeout, unless another one (a shutdown) came too
            if task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from None
