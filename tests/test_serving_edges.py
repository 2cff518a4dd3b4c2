"""Served: IPv6 URLs and a cancelled waiter (cases found by mutation testing)."""

from __future__ import annotations

import asyncio

import pytest
from test_serving import HOST, Hello, get

from kirim_events.listen import listen_socket
from kirim_events.serving import Served


def test_an_ipv6_address_is_bracketed_in_the_url() -> None:
    try:
        sock = listen_socket("::1", 0)
    except Exception as exc:  # no IPv6 loopback here
        pytest.skip(f"no IPv6 loopback: {exc}")
    with sock:
        served = Served(Hello(), sock)
        assert served.url == f"http://[::1]:{sock.getsockname()[1]}"


def test_a_cancelled_waiter_does_not_stop_the_server() -> None:
    async def main() -> int:
        async with Served(Hello(), listen_socket(HOST, 0)) as served:
            waiter = asyncio.ensure_future(served.wait())
            await asyncio.sleep(0.05)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            return (await get(served.url)).status_code

    assert asyncio.run(main()) == 200
