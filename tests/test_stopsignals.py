"""stopsignals: real SIGINT/SIGTERM sent to this process reach a ``handling`` block's handler,
or wait for the end of a ``held`` block; the handlers before come back, however it ends."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import pytest
from spies import Seen

from kirim_events.stopsignals import STOP_SIGNALS, handling, held


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_in_the_block_goes_to_its_handler(before: Seen, sig: int) -> None:
    inside = Seen()
    with handling(inside) as installed:
        os.kill(os.getpid(), sig)
        signal.raise_signal(sig)
    assert installed
    assert inside.signals == [sig, sig]
    assert before.signals == []


def test_the_handlers_before_are_restored_and_get_the_signals_again(before: Seen) -> None:
    with handling(Seen()):
        pass
    for sig in STOP_SIGNALS:
        assert signal.getsignal(sig) is before
        os.kill(os.getpid(), sig)
    assert before.signals == list(STOP_SIGNALS)


def test_the_handlers_are_restored_when_the_block_raises(before: Seen) -> None:
    with pytest.raises(RuntimeError, match="the block failed"), handling(Seen()):
        raise RuntimeError("the block failed")
    assert all(signal.getsignal(sig) is before for sig in STOP_SIGNALS)


def test_a_handler_that_raises_stops_the_block_and_is_removed(before: Seen) -> None:
    # as the CLI's sigterm_interrupts does: SIGTERM raises where the block runs
    def stop(sig: int, frame: FrameType | None) -> None:
        raise RuntimeError(f"stopped by {signal.Signals(sig).name}")

    reached: list[bool] = []

    def block() -> None:
        with handling(stop, (signal.SIGTERM,)):
            signal.raise_signal(signal.SIGTERM)
            reached.append(True)

    with pytest.raises(RuntimeError, match="stopped by SIGTERM"):
        block()
    assert reached == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_only_the_signals_asked_for_are_caught(before: Seen) -> None:
    inside = Seen()
    with handling(inside, (signal.SIGTERM,)):
        assert signal.getsignal(signal.SIGINT) is before
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    assert inside.signals == [signal.SIGTERM]
    assert before.signals == [signal.SIGINT]


def test_nested_blocks_restore_each_other(before: Seen) -> None:
    outer, inner = Seen(), Seen()
    with handling(outer):
        with handling(inner):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)
    term = [signal.SIGTERM]
    assert (outer.signals, inner.signals, before.signals) == (term, term, term)


def test_outside_the_main_thread_nothing_changes(before: Seen) -> None:
    results: list[object] = []

    def other() -> None:
        with handling(Seen()) as installed:
            results.append(installed)
            results.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert results == [False, before]


def test_held_signals_wait_for_the_end_of_the_block(before: Seen) -> None:
    # backfill starts its workers so: a KeyboardInterrupt raised inside Thread.start left a
    # worker its pool did not know of, and the process could not exit until it had slept
    # out a ten-minute Retry-After
    seen_inside: list[list[int]] = []
    stop = threading.Event()
    # another thread, not holding them: a per-thread signal mask let it take the signals
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
            seen_inside.append(list(before.signals))
    finally:
        stop.set()
        other.join()
    assert seen_inside == [[]]
    assert before.signals == [signal.SIGTERM, signal.SIGINT]  # each once, in order
    for sig in STOP_SIGNALS:
        assert signal.getsignal(sig) is before


def test_a_held_ctrl_c_is_a_keyboard_interrupt_as_the_block_ends() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012
        with held():
            signal.raise_signal(signal.SIGINT)
            steps.append("the block ran on")
        steps.append("after the block")
    assert steps == ["the block ran on"]


def test_held_signals_come_when_the_block_raises(before: Seen) -> None:
    def block() -> None:
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError(f"boom, having seen {before.signals}")

    with pytest.raises(RuntimeError, match=r"boom, having seen \[\]"):
        block()
    assert before.signals == [signal.SIGTERM]


def test_every_held_signal_reaches_its_handler_when_the_first_one_raises() -> None:
    # a Ctrl+C then a SIGTERM: the SIGTERM handler (a collector's note, say) still runs
    noted: list[int] = []
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda sig, frame: noted.append(sig))

    def block() -> None:
        with held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)

    try:
        with pytest.raises(KeyboardInterrupt):
            block()
    finally:
        for sig, was in saved.items():
            signal.signal(sig, was)
    assert noted == [signal.SIGTERM]


def test_held_asks_the_block_to_stop_at_the_first_signal_and_holds_the_rest(before: Seen) -> None:
    # the demo so cancels its run at the first Ctrl-C; a second one, raised where the
    # servers were shutting down, cut that short with a traceback per request in flight
    asked: list[tuple[int, list[int]]] = []
    with held(first=lambda sig: asked.append((sig, list(before.signals)))):
        signal.raise_signal(signal.SIGTERM)
        assert asked == [(signal.SIGTERM, [])]  # at once, in the block
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        assert len(asked) == 1
        assert before.signals == []
    assert before.signals == [signal.SIGTERM, signal.SIGINT]


def test_a_signal_ignored_as_held_starts_stays_ignored(before: Seen) -> None:
    # a demo run as a background job (SIGINT ignored) was stopped by a Ctrl-C meant for
    # the shell's foreground job
    asked: list[int] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with held(first=asked.append):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
    assert asked == []
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is before


def test_held_lets_the_forced_signal_through_at_once(before: Seen) -> None:
    # the demo holds a second Ctrl-C while its servers drain; a third one escapes a drain
    # that hangs, raised where the block is rather than as it ends
    asked: list[int] = []
    reached = []
    with held(first=asked.append, force=3):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        assert before.signals == []
        signal.raise_signal(signal.SIGINT)
        reached.append(True)
        assert before.signals == [signal.SIGINT]  # at once, in the block
    assert asked == [signal.SIGINT]
    assert reached == [True]
    assert before.signals == [signal.SIGINT]  # not raised again as the block ends


def test_a_forced_ctrl_c_is_a_keyboard_interrupt_where_the_block_is() -> None:
    steps: list[str] = []

    def twice() -> None:
        with held(force=2):
            signal.raise_signal(signal.SIGINT)
            steps.append("held")
            signal.raise_signal(signal.SIGINT)
            steps.append("not reached")

    with pytest.raises(KeyboardInterrupt):
        twice()
    assert steps == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
