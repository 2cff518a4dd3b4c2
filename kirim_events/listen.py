"""The listening socket of a server we run (the collector, the emulator's API)."""

from __future__ import annotations

import socket

from kirim_events.errors import ConfigError

__all__ = ["listen_socket"]


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn to serve on: binding it here makes a busy
    port one clear ConfigError (not uvicorn's log line and exit), and port 0 works. An empty
    ``host`` is refused: ``bind`` takes it for every interface, and ``--host "$HOST"`` with
    ``HOST`` unset must not expose the server."""
    if not host.strip():
        raise ConfigError(
            "the host to listen on is empty: give one (127.0.0.1 by default; 0.0.0.0 for every"
            " interface)"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle + delayed ACKs add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
