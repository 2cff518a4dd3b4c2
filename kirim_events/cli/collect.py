"""``kirim-events collect``: receive webhooks into the journal and flush them into the lake.

The library logs and leaves logging to its host; this command is a host: it sends the logs
to stderr as text or JSON lines (:func:`configure_logging`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from kirim_events.cli._app import (
    DataOption,
    command,
    console,
    err_console,
    errors_to_exit,
    print_note,
    refuse_demo_folder,
    settings,
)
from kirim_events.collect import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_CONNECTIONS,
    collect,
)
from kirim_events.errors import ConfigError
from kirim_events.printable import printable
from kirim_events.receiver import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_PATH,
    webhook_path,
)

log = logging.getLogger(__name__)


def _utc_time(record: logging.LogRecord) -> str:
    """The record's time, ISO 8601 in UTC to the millisecond (``2026-05-01T09:00:00.123Z``)."""
    at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return at.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (``time``, ``level``, ``logger``, ``message``); ``time``
    is ISO 8601 in UTC to the millisecond (``2026-05-01T09:00:00.123Z``)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        doc: dict[str, Any] = {
            "time": _utc_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, one line per record, ``time`` in UTC as in JSON lines:
    control characters in the message (a header value anyone can send) are escaped, so it
    can neither forge lines nor drive the terminal (see
    :func:`~kirim_events.printable.printable`)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time in UTC, as :class:`JsonFormatter` gives it."""
        return _utc_time(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The record's line, escaped; a traceback follows it as it is."""
        return printable(super().formatMessage(record))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is then, not as it was when made: a host
    (or a test runner) that swaps stderr does not leave the logs on a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler's own assignment; the stream is always the current stderr


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send kirim_events logs (and uvicorn's warnings) to stderr as text or JSON lines; for the
    CLI: a library leaves logging to its host. Bodies and secrets are never logged."""
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    for name, at in (("kirim_events", level), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(at)
        logger.propagate = False


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}  # fmt: skip


def _level(name: str) -> int:
    """``--log-level``'s value as a logging level; ConfigError naming the choices."""
    level = LOG_LEVELS.get(name.strip().lower())
    if level is None:
        raise ConfigError(
            f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {printable(name[:60])!r}"
        )
    return level


@command("collect")
def collect_command(
    data: DataOption = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; loopback unless you mean otherwise.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")
    ] = 8000,
    path: Annotated[
        str, typer.Option("--path", help="Webhook path; other paths answer 404.")
    ] = DEFAULT_PATH,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Largest accepted body in bytes (413 above).")
    ] = DEFAULT_MAX_BODY,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            min=1,
            help="Connections served at once; 503 beyond (Kirim retries).",
        ),
    ] = DEFAULT_MAX_CONNECTIONS,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            help="Seconds a client has to send each request's head, from the connection's"
            " opening or its first byte after an answer (else the connection is closed), then"
            " its body (else 408).",
        ),
    ] = DEFAULT_BODY_TIMEOUT,
    flush_interval: Annotated[
        float,
        typer.Option("--flush-interval", help="Seconds between journal flushes into the lake."),
    ] = DEFAULT_FLUSH_INTERVAL,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="Log lines as 'text' (default) or 'json'. Env: KIRIM_LOG_FORMAT."
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            help="The least level logged: 'debug' (also a line per accepted delivery),"
            " 'info' (default), 'warning' or 'error'.",
        ),
    ] = "info",
) -> None:
    """Receive Kirim webhooks until SIGINT/SIGTERM, then drain, flush and exit 0.

    Secrets come only from KIRIM_WEBHOOK_SECRET (comma-separated for rotation); the
    signature freshness window from KIRIM_TOLERANCE (seconds, default 300; off or 0 turns
    it off).
    """
    s = settings(data_dir=data, log_format=log_format)
    with errors_to_exit():
        level = _level(log_level)
        refuse_demo_folder(s.data_dir)
        s.require_secrets()
        webhook_path(path)  # before the journal opens
        configure_logging(s.log_format, level)
        for note in s.secret_warnings():
            if s.log_format == "json":  # stderr is JSON lines then: a note is a warning
                log.warning(note)
            else:
                print_note(note, stderr=True)

        def ready(url: str) -> None:
            if s.log_format == "json":  # stderr is JSON lines then: the log says "listening on"
                return
            err_console.print(
                Text.assemble("collecting webhooks at ", (url, "bold"), f" into {s.data_dir}")
            )

        report = collect(
            s.data_dir,
            host=host,
            port=port,
            path=path,
            settings=s,
            max_body=max_body,
            max_connections=max_connections,
            body_timeout=body_timeout,
            flush_interval=flush_interval,
            on_ready=ready,
        )
    table = Table("", "count", title="kirim-events collect: stopped, journal flushed")
    table.add_row("requests received", str(report.received))
    table.add_row("new events", str(report.events_new))
    table.add_row("duplicate deliveries", str(report.duplicates))
    table.add_row("quarantined", str(report.quarantined))
    for reason, n in sorted(report.rejected.items()):
        table.add_row(f"rejected ({reason})", str(n))
    table.add_row("events still in the journal", str(report.backlog))
    console.print(table)
