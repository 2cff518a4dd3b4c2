"""The request-head deadline on uvicorn's protocol, with apps other than the receiver."""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

import pytest
import uvicorn
from loopback import closed_by_peer, free_port, running, serve
from waiting import wait_until

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
            # real seconds, for plain uvicorn has no clock to inject: 4 s is past the 2 s at
            # most that the deadline above takes to cut such a connection off
            assert not closed_by_peer(sock, b"x" * 1000, within=4)


async def chatty(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A 20 kB answer to every request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x" * 20_000})


def test_a_client_that_never_reads_its_answers_is_let_go_and_its_slot_freed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # It pipelines requests and never reads: the answers wait on the send buffer. Closing
    # the transport waited for them to drain, so the connection kept its slot; and each
    # further request switched the deadline off again.
    caplog.set_level(logging.INFO, logger="kirim_events.headdeadline")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            chatty, host="127.0.0.1", port=port, lifespan="off", log_level="critical",
            http=head_deadline_protocol(1),
        )
    )  # fmt: skip
    state = server.server_state
    with running(server), socket.socket() as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.connect(("127.0.0.1", port))
        greedy.settimeout(0.05)
        wait_until(lambda: state.connections, 10, what="the connection accepted")

        def let_go() -> bool:
            # ten more requests each time it is asked, every 20 ms: it never stops sending,
            # and 10 MB/s of answers fill the buffers on both sides within a second
            with contextlib.suppress(OSError):  # the send buffer is full, or it was let go
                greedy.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
            # a finished task leaves the set in a callback the loop runs just after
            return not state.connections and not state.tasks

        wait_until(let_go, 15, interval=0.02, what="the greedy connection let go")
    assert "an answer unread in time" in caplog.text
