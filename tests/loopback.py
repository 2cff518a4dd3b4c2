"""Real HTTP on 127.0.0.1 for the tests: a free port, and an ASGI app served by uvicorn."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from waiting import wait_until


def free_port() -> int:
    """A port nobody listens on now (the OS picks it; free until someone binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: Any, *, port: int | None = None, **config: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yield its base URL, stop it on exit.

    ``config`` goes to ``uvicorn.Config`` (defaults: no lifespan, quiet logs). Raises if the
    server has not started within 10 s, so a test never hangs waiting for it.
    """
    port = port or free_port()
    settings: dict[str, Any] = {"lifespan": "off", "log_level": "critical", **config}
    with running(uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **settings))):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def running(server: uvicorn.Server) -> Iterator[uvicorn.Server]:
    """Run ``server`` in a thread once it has started; stop it on exit. Raises if it has not
    started within 10 s, so a test never hangs waiting for it."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: server.started or not thread.is_alive(),
            10,
            interval=0.01,
            what=f"uvicorn starting on port {server.config.port}",
        )
        if not server.started:
            raise RuntimeError(f"uvicorn did not start on port {server.config.port}")
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def closed_by_peer(sock: socket.socket, trickle: bytes = b"", within: float = 15.0) -> bool:
    """Whether the server closes ``sock`` within ``within`` s while the client sends
    ``trickle`` a byte every 0.2 s (a slow request head) or stays silent."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle[:1])
                trickle = trickle[1:] or trickle
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def server_side_open(server_port: int, client_port: int) -> bool:
    """Whether the server end of a loopback IPv4 connection is still open: its row in
    ``/proc/net/tcp`` (Linux), found by its local and peer ports. A server that closes a
    connection gracefully keeps that end open until its unsent answers drain."""
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for row in table:
            local, peer = (int(end.split(":")[1], 16) for end in row.split()[1:3])
            if (local, peer) == (server_port, client_port):
                return True
    return False


def fails_then_hangs(status: int, body: bytes, arrived: Any) -> Any:
    """An ASGI handler that answers its first request ``status`` and never answers the
    next ones; ``arrived`` (an ``asyncio.Event``) is set when one of those comes."""
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        arrived.set()
        await asyncio.sleep(3600)

    return app
