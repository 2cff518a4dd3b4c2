"""Send SIGINT and SIGTERM to a handler for the length of a block, then restore the ones before;
or hold them back for a block that a stop must not cut in two.

Every place that must not die on a stop (the CLI while its commands load, the collector
while it starts and flushes, a backfill that stops cleanly on SIGTERM) catches the signals
this way, so the handlers before it always come back, even when the block raises; so does
the demo, whose run a stop cancels so that its servers stop in order. (The
emulator's command, whose stop must run as a callback of its event loop, uses asyncio's
``loop.add_signal_handler`` instead.)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "Handler", "handling", "held"]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
"""The signals that ask a process to stop: Ctrl+C, and ``kill`` / systemd / ``docker stop``."""

Handler = Callable[[int, FrameType | None], Any]


@contextlib.contextmanager
def handling(handler: Handler, signals: Iterable[int] = STOP_SIGNALS) -> Iterator[bool]:
    """Within the block, ``signals`` (SIGINT and SIGTERM by default) go to ``handler``.

    Yields whether the handler was installed: Python sets signal handlers in the main
    thread only, so elsewhere (a test runner's or a notebook's worker thread) nothing
    changes and it yields False. On leaving, even by an exception, each signal gets back
    the handler it had before.

    Examples
    --------
    >>> import os, signal
    >>> seen = []
    >>> with handling(lambda sig, frame: seen.append(sig)):
    ...     os.kill(os.getpid(), signal.SIGTERM)
    >>> seen == [signal.SIGTERM]
    True
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: dict[int, Any] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        yield True
    finally:
        for sig, before in previous.items():
            # None: the handler before was set outside Python and cannot be set again; the
            # default is closer to it than leaving this block's handler in place
            signal.signal(sig, signal.SIG_DFL if before is None else before)


@contextlib.contextmanager
def held(
    signals: Iterable[int] = STOP_SIGNALS,
    *,
    first: Callable[[int], None] | None = None,
    force: int | None = None,
) -> Iterator[None]:
    """Within the block, ``signals`` wait: each one that came is raised again as it ends,
    for the handlers before it; when one of them raises (Ctrl+C's KeyboardInterrupt), the
    first such exception leaves the block once every handler has run. A signal ignored as
    the block starts (``SIG_IGN``: a background job's SIGINT) stays ignored.

    For a few steps that a stop must not land between: a KeyboardInterrupt raised inside
    ``Thread.start`` leaves a thread running that its pool does not know of, and that no
    shutdown waits for or warns. A handler that notes the signal, rather than a blocked
    signal mask, because the mask is per thread: any other thread (a progress bar's) would
    take the signal and Python would still run its handler in the main thread at once.
    Outside the main thread the block runs as it is (see :func:`handling`).

    ``first``, when given, is called with the first signal at once, from the handler: to
    ask the block's work to wind down (cancel a task) so that the block ends early, in its
    own order. Any signal after it, a second Ctrl+C pressed while that work winds down,
    waits too, and cuts nothing short.

    ``force``, when given, is how many signals it takes to stop holding: that one goes to
    the handler before at once (Ctrl+C's KeyboardInterrupt is raised where the block is),
    an escape from a wind-down that hangs. The signals before it are then not raised again.

    Examples
    --------
    >>> import signal
    >>> asked = []
    >>> try:
    ...     with held(first=asked.append):
    ...         signal.raise_signal(signal.SIGINT)
    ...         signal.raise_signal(signal.SIGINT)  # Ctrl+C twice
    ...         print("asked to stop:", asked == [signal.SIGINT])
    ... except KeyboardInterrupt:
    ...     print("then interrupted, once")
    asked to stop: True
    then interrupted, once
    """
    came: list[int] = []
    caught = [sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN]
    before = {sig: signal.getsignal(sig) for sig in caught}

    def note(sig: int, frame: FrameType | None) -> None:
        came.append(sig)
        if force is not None and len(came) >= force:
            came.clear()  # this one goes through now; none is raised again at the end
            _pass_on(sig, frame, before[sig])
        elif first is not None and len(came) == 1:
            first(sig)

    try:
        with handling(note, caught):
            yield
    finally:
        first_raised: BaseException | None = None
        for sig in dict.fromkeys(came):  # once each, in the order they came
            try:
                signal.raise_signal(sig)
            except BaseException as exc:  # each handler gets its signal; the first stop wins
                first_raised = first_raised or exc
        if first_raised is not None:
            raise first_raised


def _pass_on(sig: int, frame: FrameType | None, handler: Any) -> None:
    """Give ``sig`` to ``handler`` now, as if it had never been caught: a Python handler is
    called (Ctrl+C's raises KeyboardInterrupt); the default one ends the process."""
    if callable(handler):
        handler(sig, frame)
    elif handler is None or handler == signal.SIG_DFL:
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)
