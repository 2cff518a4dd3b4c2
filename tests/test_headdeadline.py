"""The request-head deadline on uvicorn's protocol, with apps other than the receiver."""

from __future__ import annotations

import socket
from typing import Any

from loopback import closed_by_peer, serve

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
