"""The request-head deadline on uvicorn's protocol, with apps other than the receiver."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import uvicorn
from loopback import closed_by_peer, free_port, running, serve

from kirim_events.headdeadline import head_deadline_protocol


async def early(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers at once, reading no body and keeping the connection alive (unlike the
    receiver, which closes after an early answer)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_body_of_a_request_answered_early_cannot_trickle_in_for_ever() -> None:
    with serve(early, http=head_deadline_protocol(1)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert closed_by_peer(sock, b"x" * 1000, within=15)


def test_without_the_deadline_uvicorn_keeps_such_a_connection() -> None:
    # the case above is a real one: plain uvicorn keeps the trickling connection open
    with serve(early) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert not closed_by_peer(sock, b"x" * 1000, within=4)


async def chatty(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A 20 kB answer to every request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x" * 20_000})


def test_a_client_that_never_reads_its_answers_is_let_go_and_its_slot_freed() -> None:
    # It pipelines requests and never reads: the answers wait on the send buffer. Closing
    # the transport waited for them to drain, so the connection kept its slot; and each
    # further request switched the deadline off again.
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            chatty, host="127.0.0.1", port=port, lifespan="off", log_level="critical",
            http=head_deadline_protocol(1),
        )
    )  # fmt: skip
    with running(server), socket.socket() as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.connect(("127.0.0.1", port))
        greedy.settimeout(0.05)
        end = time.monotonic() + 4  # a request every 20 ms, well past the deadline
        with contextlib.suppress(OSError):
            while time.monotonic() < end:
                greedy.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.02)
        end = time.monotonic() + 10
        state = server.server_state
        # a finished task leaves the set in a callback the loop runs just after
        while (state.connections or state.tasks) and time.monotonic() < end:
            time.sleep(0.1)
        assert not state.connections
        assert not state.tasks
