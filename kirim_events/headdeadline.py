"""uvicorn's HTTP/1.1 protocol, plus deadlines for what uvicorn waits on without one.

uvicorn times a keep-alive connection out only once a response is done: a connection that
sends nothing, or sends its request line and headers a byte at a time, is never closed; nor
is one that keeps sending the body of a request answered early (404, 413, 408), or one that
never reads its answers (pipelined requests fill the send buffer and the answer waits). Each
holds one of ``collect --max-connections`` slots, so a few hundred of them would turn every
webhook away with 503.

Here a connection is closed when, for ``seconds`` (up to a second more):

* no request is being served and no complete next request head has come, counted from the
  connection's opening or from its first byte after an answer (uvicorn's keep-alive
  timeout, 5 s, closes one that sends nothing after an answer);
* or an answer has waited for the client to read it.

A request's body has its own deadline in the receiver. The deadline is armed and disarmed
in ``data_received`` and when writing pauses and resumes, nothing per answer: a request
served as usual costs one attribute check more.
"""

from __future__ import annotations

import asyncio
import logging

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
    stalled = protocol._between_requests() or protocol.flow.write_paused
    if stalled and not protocol.transport.is_closing():
        client = "{}:{}".format(*protocol.client) if protocol.client else "a client"
        why = "an answer unread" if protocol.flow.write_paused else "no next request"
        log.info("closed the connection of %s: %s in time", client, why)
        # abort, not close: close would wait for the unread answers to drain, and the
        # connection would keep its slot
        protocol.transport.abort()


class _HeadDeadlineProtocol(H11Protocol):
    _waiting: SecondGroups[_HeadDeadlineProtocol]
    _head_group: set[_HeadDeadlineProtocol] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm()

    def pause_writing(self) -> None:
        # the client does not read its answers (e.g. pipelined requests): that too must end
        super().pause_writing()
        if self._head_group is None and not self.transport.is_closing():
            self._head_group = self._waiting.add(self, self.loop)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        """No request is being served: the next head is awaited, or the rest of a body
        that was answered early (a 404, 413 or 408) trickles in."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if not (self._between_requests() or self.flow.write_paused):
            self._disarm()
        elif self._head_group is None and not self.transport.is_closing():
            self._head_group = self._waiting.add(self, self.loop)

    def _disarm(self) -> None:
        if self._head_group is not None:
            self._head_group.discard(self)
            self._head_group = None
