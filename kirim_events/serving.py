"""Serve an ASGI app with uvicorn on a bound socket, as a task of the running event loop.

The collector, the emulator's command and the demo each serve this way: the socket comes
from :func:`kirim_events.listen.listen_socket` (a busy port is a ConfigError before any
server exists), :meth:`Served.start` returns once connections are accepted, and
:meth:`Served.stop` drains the requests in flight and closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from kirim_events.errors import ConfigError
from kirim_events.stopsignals import handling

if TYPE_CHECKING:
    import uvicorn

__all__ = ["Served"]

# uvicorn's own logging setup and access log are left out: logging belongs to the host
# (the CLI's configure_logging), and a line per request would drown it.
DEFAULTS: dict[str, Any] = {
    "lifespan": "off",
    "access_log": False,
    "log_level": "warning",
    "log_config": None,
}
POLL = 0.01  # seconds between looks at uvicorn's `started` flag (it has no event to wait on)


class Served:
    """An ASGI app served by uvicorn on ``sock`` in the running event loop.

    Parameters
    ----------
    app
        The ASGI application.
    sock
        A bound socket (:func:`~kirim_events.listen.listen_socket`); uvicorn listens on it,
        and it is closed when the server stops.
    on_signal
        None (the default): the caller owns SIGINT and SIGTERM, uvicorn installs no
        handler. A callable: while serving, SIGINT and SIGTERM call it with the signal,
        then the server stops gracefully (a second SIGINT cuts the drain short). Unlike
        uvicorn's own handling, the signal is not raised again once drained: that killed
        the process before the host's last work (the collector's final flush).
    config
        More ``uvicorn.Config`` options (``timeout_graceful_shutdown``, ``http``, ...);
        by default no lifespan, no access log, warnings only, the host's logging setup.

    Examples
    --------
    >>> import asyncio, httpx
    >>> from starlette.responses import PlainTextResponse
    >>> from kirim_events.listen import listen_socket
    >>> async def main() -> str:
    ...     async with Served(PlainTextResponse("hi"), listen_socket("127.0.0.1", 0)) as s:
    ...         async with httpx.AsyncClient() as client:
    ...             return (await client.get(s.url)).text
    >>> asyncio.run(main())
    'hi'
    """

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        on_signal: Callable[[int], None] | None = None,
        **config: Any,
    ) -> None:
        import uvicorn  # when serving, not with this module (collect() imports it once
        # its signal handlers are in place)

        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.server = _server_class(on_signal)(uvicorn.Config(app, **{**DEFAULTS, **config}))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Start serving; return once connections are accepted.

        Raises ConfigError when uvicorn cannot listen on the socket (another program
        listens on the port too), RuntimeError when it stopped before it started.
        """
        if self._task is not None:
            raise RuntimeError(f"the server on {self.url} was started already")
        self._task = asyncio.ensure_future(self._serve())
        while not self.server.started:
            if self._task.done():
                self.sock.close()
                self._task.result()  # its exception, if it ended by one
                raise RuntimeError(f"the server on {self.url} stopped before it started")
            await asyncio.sleep(POLL)

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        except OSError as exc:
            if self.server.started:
                raise
            raise ConfigError(f"cannot serve on {self.url}: {exc.strerror or exc}") from None
        except SystemExit:  # uvicorn's way to say it could not start (a lifespan failure)
            raise RuntimeError(f"the server on {self.url} could not start") from None

    def request_stop(self) -> None:
        """Ask the server to stop (it drains the requests in flight); safe in a signal
        handler or a loop callback. :meth:`wait` returns once it has."""
        self.server.should_exit = True

    async def wait(self) -> None:
        """Return once the server has stopped (by :meth:`request_stop`, :meth:`stop` or a
        signal with ``on_signal``); raise what stopped it, if it failed."""
        if self._task is None:
            raise RuntimeError(f"the server on {self.url} was not started")
        try:
            await asyncio.shield(self._task)
        finally:
            if self._task.done():
                self.sock.close()

    async def stop(self) -> None:
        """Stop accepting connections, finish the requests in flight (up to uvicorn's
        ``timeout_graceful_shutdown``) and close the socket."""
        self.request_stop()
        if self._task is not None:
            await self.wait()
        self.sock.close()

    async def __aenter__(self) -> Served:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _server_class(on_signal: Callable[[int], None] | None) -> type[uvicorn.Server]:
    """uvicorn's Server with its signal handling replaced: none, or ``on_signal``'s."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if on_signal is None:
                yield
                return
            with handling(self._signalled):
                yield

        def _signalled(self, sig: int, frame: FrameType | None) -> None:
            assert on_signal is not None
            on_signal(sig)
            self.handle_exit(sig, frame)

    return _Server
