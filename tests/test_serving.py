"""Served: an ASGI app on a real loopback socket, started, drained, stopped and signalled."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from spies import Seen

from kirim_events.errors import ConfigError
from kirim_events.listen import listen_socket
from kirim_events.serving import Served
from kirim_events.stopsignals import STOP_SIGNALS

HOST = "127.0.0.1"
Scope = dict[str, Any]


class Hello:
    """An ASGI app answering ``200 hello``; with ``hold``, each answer waits for it."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.hold = hold
        self.arrived = asyncio.Event()

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[..., Any]
    ) -> None:
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(url)


def test_it_serves_on_the_socket_and_the_stop_closes_it() -> None:
    async def main() -> None:
        sock = listen_socket(HOST, 0)
        served = Served(Hello(), sock)
        assert served.url == f"http://{HOST}:{sock.getsockname()[1]}"
        await served.start()
        answer = await get(served.url + "/any")
        assert (answer.status_code, answer.text) == (200, "hello")
        await served.stop()
        assert sock.fileno() == -1
        assert refused(served.port)

    asyncio.run(main())


def test_a_request_in_flight_at_the_stop_is_answered() -> None:
    async def main() -> None:
        release = asyncio.Event()
        app = Hello(hold=release)
        async with Served(app, listen_socket(HOST, 0)) as served:
            request = asyncio.ensure_future(get(served.url))
            await asyncio.wait_for(app.arrived.wait(), 10)
            stopping = asyncio.ensure_future(served.stop())
            release.set()
            answer = await asyncio.wait_for(request, 10)
            await asyncio.wait_for(stopping, 10)
        assert (answer.status_code, answer.text) == (200, "hello")
        assert refused(served.port)

    asyncio.run(main())


def test_without_on_signal_the_callers_handlers_stay(before: Seen) -> None:
    async def main() -> None:
        async with Served(Hello(), listen_socket(HOST, 0)) as served:
            assert signal.getsignal(signal.SIGTERM) is before
            os.kill(os.getpid(), signal.SIGTERM)
            answer = await get(served.url)  # still serving
        assert answer.status_code == 200

    asyncio.run(main())
    assert before.signals == [signal.SIGTERM]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_with_on_signal_a_real_signal_stops_it_and_is_not_raised_again(
    before: Seen, sig: int
) -> None:
    got: list[int] = []

    async def main() -> None:
        served = Served(Hello(), listen_socket(HOST, 0), on_signal=got.append)
        await served.start()
        assert signal.getsignal(sig) is not before
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(served.wait(), 10)
        assert refused(served.port)

    asyncio.run(main())
    assert got == [sig]
    # uvicorn raises the signal again once drained, which killed the host's last work
    assert before.signals == []
    assert all(signal.getsignal(s) is before for s in STOP_SIGNALS)


def test_a_port_another_program_listens_on_is_a_config_error() -> None:
    # Both bound before either listens (SO_REUSEADDR allows it on Linux): the other one
    # listens first, as a program starting at the same moment would.
    ours = listen_socket(HOST, 0)
    port = ours.getsockname()[1]
    with listen_socket(HOST, port) as other:
        other.listen()

        async def main() -> None:
            await Served(Hello(), ours).start()

        with pytest.raises(ConfigError, match=rf"cannot serve on http://127\.0\.0\.1:{port}: "):
            asyncio.run(main())
    assert ours.fileno() == -1


def test_it_is_started_once() -> None:
    async def main() -> None:
        served = Served(Hello(), listen_socket(HOST, 0))
        with pytest.raises(RuntimeError, match="was not started"):
            await served.wait()
        async with served:
            with pytest.raises(RuntimeError, match="was started already"):
                await served.start()

    asyncio.run(main())
