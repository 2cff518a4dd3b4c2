"""The ``kirim-events`` command line: a thin typer skin over the library.

Each command lives in its own module under ``kirim_events.cli`` and registers itself on
``app`` when imported below; library errors become one-line messages here, at the edge.
(design.md sketches a single ``cli.py``; one module per command keeps each small.)
"""

from __future__ import annotations

from kirim_events.cli._app import app, main

# Command modules register themselves on import; keep this list sorted.
from kirim_events.cli import backfill as _backfill  # noqa: F401  isort: skip
from kirim_events.cli import collect as _collect  # noqa: F401  isort: skip
from kirim_events.cli import compact as _compact  # noqa: F401  isort: skip
from kirim_events.cli import demo as _demo  # noqa: F401  isort: skip
from kirim_events.cli import emulate as _emulate  # noqa: F401  isort: skip
from kirim_events.cli import info as _info  # noqa: F401  isort: skip
from kirim_events.cli import report as _report  # noqa: F401  isort: skip

__all__ = ["app", "main"]
