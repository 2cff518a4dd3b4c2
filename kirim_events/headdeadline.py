"""uvicorn's HTTP/1.1 protocol, plus a deadline for the request head.

uvicorn times a keep-alive connection out only once a response is done: a connection that
sends nothing, or sends its request line and headers a byte at a time, is never closed. Each
such connection holds one of ``collect --max-connections`` slots, so a few hundred of them
would turn every webhook away with 503. Here a connection must finish each request head
(its first byte included) within ``seconds`` of opening, or of its first byte after a
response; else it is closed. The body has its own deadline in the receiver.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from kirim_events.deadlines import SecondGroups

__all__ = ["head_deadline_protocol"]

log = logging.getLogger(__name__)


def head_deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """An ``H11Protocol`` class (uvicorn's ``http=``) closing connections whose request head
    is not in within ``seconds`` (up to a second more)."""
    waiting: SecondGroups[_HeadDeadlineProtocol] = SecondGroups(seconds, _expired)
    return type("HeadDeadlineProtocol", (_HeadDeadlineProtocol,), {"_waiting": waiting})


def _expired(protocol: _HeadDeadlineProtocol) -> None:
    protocol._head_group = None
    if protocol._awaiting_head() and not protocol.transport.is_closing():
        client = "{}:{}".format(*protocol.client) if protocol.client else "a client"
        log.info("closed the connection of %s: no complete request head in time", client)
        protocol.transport.close()


class _HeadDeadlineProtocol(H11Protocol):
    _waiting: SecondGroups[_HeadDeadlineProtocol]
    _head_group: set[_HeadDeadlineProtocol] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_group = self._waiting.add(self, self.loop)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._awaiting_head():
            self._disarm()
        elif self._head_group is None and not self.transport.is_closing():
            # the first byte of the next request head on a kept-alive connection
            self._head_group = self._waiting.add(self, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return bool(self.conn.their_state is h11.IDLE)

    def _disarm(self) -> None:
        if self._head_group is not None:
            self._head_group.discard(self)
            self._head_group = None
