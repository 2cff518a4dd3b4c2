"""The ``kirim-events`` command line: a thin typer skin over the library.

Each command lives in its own module under ``kirim_events.cli`` and registers itself on
``app`` when imported (:func:`_load`); library errors become one-line messages here, at the
edge. (design.md sketches a single ``cli.py``; one module per command keeps each small.)

Nothing heavy is imported with this package: :func:`main` first catches SIGINT and SIGTERM,
then loads the commands (polars, duckdb, pyarrow: a second or more), so a stop asked while
they load ends the process as the command would end, not with Python's default death.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from kirim_events.stopsignals import handling

if TYPE_CHECKING:
    import typer

__all__ = ["app", "main"]

SERVERS = frozenset({"collect", "emulate"})
"""Commands that run until stopped: a SIGINT or SIGTERM is how they end, with exit 0."""


def _load() -> typer.Typer:
    """The application, with every command registered (their modules register on import)."""
    from kirim_events.cli import backfill as _backfill  # noqa: F401
    from kirim_events.cli import collect as _collect  # noqa: F401
    from kirim_events.cli import compact as _compact  # noqa: F401
    from kirim_events.cli import demo as _demo  # noqa: F401
    from kirim_events.cli import emulate as _emulate  # noqa: F401
    from kirim_events.cli import info as _info  # noqa: F401
    from kirim_events.cli import report as _report  # noqa: F401
    from kirim_events.cli._app import app

    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stopped_early_code(sig: int, argv: list[str]) -> int:
    """The exit code for a stop asked before the command began: 0 for a server (the way it
    ends anyway), else 130 (SIGINT) or 143 (SIGTERM), as when the command is interrupted."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SERVERS:
        return 0
    return 130 if sig == signal.SIGINT else 143


def main() -> None:
    """Console-script entry point."""
    asked: list[int] = []

    def note(sig: int, frame: FrameType | None) -> None:
        asked.append(sig)

    with handling(note):
        _load()
        from kirim_events.cli._app import main as run
        from kirim_events.cli._app import print_note
    if asked:
        name = signal.Signals(asked[0]).name
        print_note(f"received {name} while starting: stopped before anything began", stderr=True)
        sys.exit(stopped_early_code(asked[0], sys.argv[1:]))
    run()
