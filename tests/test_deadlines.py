"""Deadlines: a timeout per await, grouped by the second (the receiver's body reads).

Every loop here runs on virtual time (``virtualtime.run``): a timer fires as soon as nothing
else is ready, so a 30 s sleep takes no real time and the deadlines land on exact seconds.
"""

from __future__ import annotations

import asyncio

import pytest
from virtualtime import run

from kirim_events.deadlines import Deadlines


async def overrun(deadlines: Deadlines, seconds: float = 30) -> str:
    """A block of ``seconds`` under ``deadlines``: "timeout", or "ran" when it ran out."""
    try:
        async with deadlines.limit():
            await asyncio.sleep(seconds)
    except TimeoutError:
        return "timeout"
    return "ran"


def test_a_block_within_its_deadline_runs_to_the_end() -> None:
    async def main() -> tuple[str, float]:
        async with Deadlines(5).limit():
            await asyncio.sleep(4.9)
        return "done", asyncio.get_running_loop().time()

    assert run(main()) == ("done", pytest.approx(4.9))


@pytest.mark.parametrize(
    ("start", "fired"),
    [(0.0, 1.0), (0.25, 1.0), (0.9, 1.0), (0.95, 2.0), (7.5, 8.0)],
)
def test_a_block_past_its_deadline_raises_timeout_error_within_a_second_more(
    start: float, fired: float
) -> None:
    async def main() -> float:
        with pytest.raises(TimeoutError, match=r"^$"):  # bare, as asyncio.timeout's
            async with Deadlines(0.1).limit():
                await asyncio.sleep(30)
        return asyncio.get_running_loop().time()

    # the deadline (start + 0.1) rounded up to its whole second, never before it
    assert run(main(), start=start) == pytest.approx(fired)
    assert start + 0.1 <= fired < start + 1.1


def test_many_blocks_share_one_timer_per_second_and_each_times_out() -> None:
    deadlines = Deadlines(0.1)

    async def main() -> tuple[list[str], int, float]:
        loop = asyncio.get_running_loop()
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        tasks = [asyncio.create_task(overrun(deadlines)) for _ in range(200)]
        await asyncio.sleep(0)
        groups = len(deadlines._groups._loops[loop])
        # one 30 s sleep each, and one deadline timer for them all
        assert len(loop._scheduled) - timers == 200 + 1  # type: ignore[attr-defined]
        return list(await asyncio.gather(*tasks)), groups, loop.time()

    results, groups, ended = run(main(), start=0.5)
    assert results == ["timeout"] * 200
    assert groups == 1  # the 200 deadlines fell into one whole second ...
    assert ended == pytest.approx(1.0)  # ... and all timed out when it came


def test_a_cancellation_from_elsewhere_is_passed_on_not_made_a_timeout() -> None:
    async def main() -> None:
        async def read() -> None:
            async with Deadlines(30).limit():
                await asyncio.sleep(30)

        task = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError, match=r"^$"):  # a plain cancel, passed on
        run(main())


def test_a_shutdown_at_the_deadline_is_still_a_cancellation() -> None:
    deadlines = Deadlines(30)

    async def main() -> None:
        async def read() -> None:
            async with deadlines.limit():
                await asyncio.sleep(30)

        task = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        groups = deadlines._groups._loops[asyncio.get_running_loop()]
        for second in list(groups):
            deadlines._groups._expire(groups, second)  # the deadline passes ...
        task.cancel()  # ... as a shutdown cancels the request
        await task

    with pytest.raises(asyncio.CancelledError, match=r"^$"):  # a plain cancel, passed on
        run(main())


def test_one_instance_keeps_its_deadlines_on_a_second_event_loop() -> None:
    # A second loop joined the first one's group of that second, whose timer had died with
    # the first loop: no deadline at all (a Receiver served by one loop, then another).
    # Both loops start at the same virtual instant, so their deadlines share a second.
    deadlines = Deadlines(0.5)
    assert run(overrun(deadlines, 0)) == "ran"
    assert run(overrun(deadlines, 5)) == "timeout"
