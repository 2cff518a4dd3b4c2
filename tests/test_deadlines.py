"""Deadlines: a timeout per await, grouped by the second (the receiver's body reads)."""

from __future__ import annotations

import asyncio

import pytest

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
    async def main() -> str:
        async with Deadlines(5).limit():
            await asyncio.sleep(0.01)
        return "done"

    assert asyncio.run(main()) == "done"


def test_a_block_past_its_deadline_raises_timeout_error_within_a_second_more() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with Deadlines(0.1).limit():
                await asyncio.sleep(30)
        return loop.time() - start

    assert 0.1 <= asyncio.run(main()) < 1.6


def test_many_blocks_share_one_timer_per_second_and_each_times_out() -> None:
    deadlines = Deadlines(0.1)

    async def main() -> tuple[list[str], int]:
        tasks = [asyncio.create_task(overrun(deadlines)) for _ in range(200)]
        await asyncio.sleep(0)
        groups = len(deadlines._groups._loops[asyncio.get_running_loop()])
        return list(await asyncio.gather(*tasks)), groups

    results, groups = asyncio.run(main())
    assert results == ["timeout"] * 200
    assert groups <= 2  # the 200 deadlines fell into one or two whole seconds


def test_a_cancellation_from_elsewhere_is_passed_on_not_made_a_timeout() -> None:
    async def main() -> None:
        async def read() -> None:
            async with Deadlines(30).limit():
                await asyncio.sleep(30)

        task = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


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

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_one_instance_keeps_its_deadlines_on_a_second_event_loop() -> None:
    # A second loop joined the first one's group of that second, whose timer had died with
    # the first loop: no deadline at all (a Receiver served by one loop, then another).
    deadlines = Deadlines(0.5)
    assert asyncio.run(overrun(deadlines, 0)) == "ran"
    assert asyncio.run(overrun(deadlines, 5)) == "timeout"
