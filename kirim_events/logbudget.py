"""A budget of log lines per kind: a flood of alike warnings becomes a few lines and a count."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LogBudget", "Turn"]


@dataclass(frozen=True)
class Turn:
    """What :meth:`LogBudget.take` allows for one line."""

    log: bool
    """Log this line."""
    held: int
    """Lines of this kind held back in the interval that just ended: say so first."""
    held_for: float
    """Seconds that interval lasted (from its first line to now)."""
    first_held: bool
    """This is the first line held back in its interval: say that the next are too."""


@dataclass
class _Window:
    start: float
    logged: int = 1
    held: int = 0


class LogBudget:
    """At most ``burst`` lines of each kind in an interval of ``every`` seconds, which
    begins at the first line of that kind (logged at once); the lines past it are counted,
    and the count is given back once, by the next line allowed or by :meth:`held`.

    ``clock`` gives seconds (the receiver's ``now``): a clock that steps back begins a new
    interval rather than holding lines back until it has caught up again. Thread-safe.
    """

    def __init__(self, burst: int, every: float, clock: Callable[[], float]) -> None:
        if burst < 1 or not every > 0:
            raise ValueError(f"a log budget needs burst >= 1 and every > 0, got {burst}, {every}")
        self.burst = burst
        self.every = every
        self._clock = clock
        self._windows: dict[str, _Window] = {}  # one per kind seen; kinds are a few names
        self._lock = threading.Lock()

    def take(self, kind: str) -> Turn:
        """Count one line of ``kind`` and say whether to log it."""
        now = self._clock()
        with self._lock:
            w = self._windows.get(kind)
            if w is None or not w.start <= now < w.start + self.every:
                self._windows[kind] = _Window(now)
                held, held_for = (w.held, max(0.0, now - w.start)) if w else (0, 0.0)
                return Turn(True, held, held_for, False)
            if w.logged < self.burst:
                w.logged += 1
                return Turn(True, 0, 0.0, False)
            w.held += 1
            return Turn(False, 0, 0.0, w.held == 1)

    def held(self, final: bool = False) -> list[tuple[str, int, float]]:
        """``(kind, lines held back, seconds)`` for each interval that has ended with lines
        held back (every one, ended or not, when ``final``), each given back only once."""
        now = self._clock()
        out: list[tuple[str, int, float]] = []
        with self._lock:
            for kind, w in list(self._windows.items()):
                if not final and w.start <= now < w.start + self.every:
                    continue
                if w.held:
                    out.append((kind, w.held, max(0.0, now - w.start)))
                del self._windows[kind]  # the next line of this kind begins a new interval
        return out
