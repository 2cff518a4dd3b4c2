"""SecondGroups and the body timeout's bounds (cases found by mutation testing)."""

from __future__ import annotations

import asyncio
import math

import pytest
from virtualtime import run

from kirim_events.deadlines import Deadlines, SecondGroups
from kirim_events.errors import ConfigError
from kirim_events.receiver import check_body_timeout


def test_a_group_is_forgotten_once_it_expired() -> None:
    # one group per second of a collector's life: kept after expiry, they pile up for ever
    async def main() -> tuple[list[int], int]:
        expired: list[int] = []
        groups: SecondGroups[int] = SecondGroups(1.0, expired.append)
        loop = asyncio.get_running_loop()
        for i in range(3):
            groups.add(i)
            await asyncio.sleep(1)
        await asyncio.sleep(2)
        return expired, len(groups._loops[loop])

    assert run(main()) == ([0, 1, 2], 0)


@pytest.mark.parametrize("seconds", [0.0, -1.0, 3600.5, math.inf, math.nan])
def test_a_body_timeout_beyond_an_hour_or_not_above_zero_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigError, match="body timeout must be above 0 and at most 3600 s"):
        check_body_timeout(seconds)
    assert check_body_timeout(3600.0) == 3600.0


def test_a_block_that_ended_in_time_is_never_cancelled_later() -> None:
    # the receiver reads a body under the deadline, then writes the journal without one
    async def main() -> str:
        deadlines = Deadlines(2)
        async with deadlines.limit():
            await asyncio.sleep(0.1)
        await asyncio.sleep(5)  # past the second its deadline fell in
        return "ran"

    assert run(main()) == "ran"


def test_a_shutdown_after_an_earlier_timeout_is_a_cancellation() -> None:
    # a task that timed out once, then cancelled (a shutdown) in its next block
    async def inner(deadlines: Deadlines, timed_out: asyncio.Event) -> None:
        try:
            async with deadlines.limit():
                await asyncio.sleep(30)
        except TimeoutError:
            timed_out.set()
        async with deadlines.limit():
            await asyncio.sleep(0.5)

    async def main() -> str:
        deadlines, timed_out = Deadlines(1), asyncio.Event()
        task = asyncio.ensure_future(inner(deadlines, timed_out))
        await timed_out.wait()
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            return "timeout"
        return "ran"

    assert run(main()) == "cancelled"
