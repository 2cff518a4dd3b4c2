"""SecondGroups and the body timeout's bounds (cases found by mutation testing)."""

from __future__ import annotations

import asyncio
import math

import pytest
from virtualtime import run

from kirim_events.deadlines import SecondGroups
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
