"""The typer application object, shared options and error rendering."""

from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import duckdb
import polars as pl
import pyarrow as pa
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperOption

from kirim_events import __version__
from kirim_events.config import Settings
from kirim_events.demo import DEMO_MARKER
from kirim_events.errors import (
    AuthenticationError,
    ConfigError,
    KirimEventsError,
    NotALakeError,
)
from kirim_events.lake import Lake, refuse_foreign_folder
from kirim_events.lake.reader import vanished_file
from kirim_events.lake.state import check_version
from kirim_events.printable import printable
from kirim_events.stopsignals import handling


def _hide_flag_types() -> None:
    """typer 0.29 prints ``<bool>`` after a flag, which takes no value: ``--full <bool>``
    reads as ``--full true``, which is refused. Flags show no type (left as it is in a typer
    without the method)."""
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_flags_hidden", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._flags_hidden = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()

app = typer.Typer(
    name="kirim-events",
    help="Turn Kirim webhooks into analysis-ready data: collect, backfill, reconcile, analyse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# No markup parsing: paths, ids and Kirim's error titles may hold "[...]", which rich would
# take for a style and drop. Styled pieces are built as Text (print_error, Text.assemble).
# soft_wrap: a line of text is never broken by rich (a terminal wraps it on screen): piped to
# a file or a service log, rich takes 80 columns, and lines broke in the middle of paths.
console = Console(highlight=False, markup=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def counted(n: int, word: str, words: str = "") -> str:
    """``n`` and the word it counts: ``1 row``, ``2 rows`` (``words``: a plural other than
    ``word`` + s, e.g. ``deliveries``)."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def print_error(message: object) -> None:
    """One red ``error:`` line on stderr, the message printed as it is but for control
    characters and line breaks, escaped: it may quote what a server or a file said, which
    must not add lines of its own (see :func:`printable`)."""
    # soft_wrap: one line however narrow the terminal (it wraps it), never cut by rich
    text = printable(message)
    err_console.print(Text.assemble(("error:", "red"), " ", text), soft_wrap=True)


def require_folder(data_dir: Path, lake_uri: str | None = None) -> None:
    """ConfigError unless there is a lake to read: the data folder, or with ``--lake`` a lake
    kirim-events wrote. A typo in either would otherwise read an empty lake and print zeros."""
    if lake_uri is None:
        refuse_file(data_dir)
        if not data_dir.is_dir():
            raise ConfigError(f"no lake at {data_dir} (use --data DIR or KIRIM_DATA_DIR)")
        refuse_foreign_folder(data_dir)  # before a journal there is opened or flushed
    elif (
        "://" not in lake_uri
        and (path := Path(lake_uri).expanduser()).exists()
        and not path.is_dir()
    ):
        # not "lake storage failed to read '_state/lake.json': Not a directory"
        raise ConfigError(
            f"--lake {lake_uri} is a file, not a folder (give the lake's folder or"
            " s3://bucket/prefix)"
        )
    elif check_version(Lake(lake_uri).storage) is None:
        # an endpoint that is no S3 server (a web server answering 404 to everything) is
        # seen the same way: pyarrow takes a HEAD's 404 for a missing object
        where = (
            " (check the bucket, the prefix, and that AWS_ENDPOINT_URL is the S3 server"
            " holding them)"
            if lake_uri.startswith("s3://")
            else ""
        )
        raise ConfigError(f"no lake at {lake_uri}: nothing kirim-events wrote is there{where}")


def refuse_file(data_dir: Path) -> None:
    """ConfigError when ``data_dir`` is a file (or other non-folder) rather than a folder."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"{data_dir} is a file, not a folder (use --data DIR or KIRIM_DATA_DIR)")


def refuse_demo_folder(data_dir: Path) -> None:
    """ConfigError when ``data_dir`` holds the demo's lake: real events stored beside the
    emulated ones would be counted with them (the demo writes ./data, the default folder);
    or when it is a file; NotALakeError when it holds other things and none of a lake's
    (what ``compact`` and ``report`` refuse too: a command that writes refuses it before it
    writes anything there)."""
    refuse_file(data_dir)
    refuse_foreign_folder(data_dir)
    if (data_dir / DEMO_MARKER).is_file():
        raise ConfigError(
            f"{data_dir} holds the demo's emulated events ({DEMO_MARKER.as_posix()}): real "
            "events stored there would be counted with them. Use another folder (--data DIR "
            f"or KIRIM_DATA_DIR), or delete {data_dir} first"
        )


def print_note(message: object, *, stderr: bool = False) -> None:
    """One yellow ``note:`` line on stdout (or stderr): worth a look, not a failure (API
    text in it escaped as in :func:`print_error`)."""
    text = printable(message)
    out = err_console if stderr else console
    out.print(Text.assemble(("note:", "yellow"), " ", text), soft_wrap=True)


def _folder(value: str) -> Path:
    # Path("") is the current folder: --data "$DATA" with DATA unset would read or write
    # there (a blank KIRIM_DATA_DIR counts as unset, for the same reason)
    if not value.strip():
        raise typer.BadParameter("is blank; give a folder (or leave the option out)")
    return Path(value)


DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        parser=_folder,
        metavar="<path>",
        help="Data folder (the lake). Env: KIRIM_DATA_DIR; default ./data.",
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"kirim-events {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """Turn Kirim webhooks into analysis-ready data: collect, backfill, reconcile, analyse."""


def settings(**overrides: Any) -> Settings:
    """Resolve settings from CLI options (None = not given) and the process environment."""
    with errors_to_exit():
        return Settings.load(os.environ, **overrides)


# Errors that exit 2, as a bad option does (docs/cli.md, "Exit codes"): a setting to change.
# A --data or --lake that holds no lake is one: "no lake at ..." (the CLI's check) and
# "... is not a kirim-events lake" (the library's) exited 2 and 1.
BAD_SETTINGS = (ConfigError, NotALakeError)

# What the engines raise on a lake file they cannot read (damaged, truncated, not Parquet).
READ_ERRORS = (pl.exceptions.PolarsError, duckdb.Error, pa.ArrowException)


def _damaged(lake: str | Path) -> str | None:
    """One line naming the damaged files of ``lake`` (their footers unreadable), or None."""
    try:
        damaged = Lake(lake).damaged_files()
    except (KirimEventsError, *READ_ERRORS, OSError):
        return None
    if not damaged:
        return None
    listed = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
    return (
        f"{len(damaged)} damaged or foreign Parquet file(s) in the lake at {lake}: {listed}. "
        "Move them out of the lake and run again; kirim-events reconcile can fetch again "
        "the events of the last 30 days from Kirim's history"
    )


@contextmanager
def errors_to_exit(lake: str | Path | None = None) -> Iterator[None]:
    """Render library errors as one red line and exit 1 (2 for configuration errors and
    for a ``--data`` or ``--lake`` that holds no lake, :data:`BAD_SETTINGS`).

    With ``lake``, a damaged file in that lake, which the engines fail to read, is one
    line too.
    """
    try:
        yield
    except KirimEventsError as exc:
        print_error(exc)
        print_notes(exc)
        note_refused_key(exc)
        raise typer.Exit(2 if isinstance(exc, BAD_SETTINGS) else 1) from None
    except (*READ_ERRORS, FileNotFoundError) as exc:
        # only a damaged file, or one a compaction deleted under the read, is one line;
        # anything else may be a bug of ours: its traceback is what a report of it needs.
        # The lake reads of the commands are planned and run again first (lake.reader's
        # reread): a deleted file reaches here when compactions finished under each try.
        found = None if lake is None else _damaged(lake)
        if found is None and lake is not None and vanished_file(exc):
            found = VANISHED
        if found is None:
            raise
        print_error(found)
        print_notes(exc)  # a compaction stopped so that could not release its S3 lease
        raise typer.Exit(1) from None
    except OSError as exc:
        # pyarrow's own error for an S3 object deleted between its HEAD and its GET (no
        # FileNotFoundError: the GET answered 404); no damaged file is looked for, as a
        # denied or failed request (no vanished file either) would read as damage there
        if lake is None or not vanished_file(exc):
            raise
        print_error(VANISHED)
        print_notes(exc)
        raise typer.Exit(1) from None


def print_notes(exc: BaseException) -> None:
    """The notes an error or an interrupt carries (``add_note``: what else went wrong, as
    an S3 lease a compaction could not release, lake/lock.py), one ``note:`` line each on
    stderr, after the line that says how the command ended."""
    for note in getattr(exc, "__notes__", ()):
        print_note(note, stderr=True)


VANISHED = (
    "a file this read planned was deleted by a compaction that finished meanwhile (nothing "
    "is lost); run it again"
)
"""The one line for a read whose planned files compactions deleted under each try."""


def note_refused_key(*errors: BaseException) -> None:
    """After a 401, say where the key comes from: Kirim's own message (``invalid API key``,
    or ``expired_api_key`` as a code) does not name the variable to fix. Once, however many
    of ``errors`` are 401s."""
    if any(isinstance(e, AuthenticationError) and e.status_code == 401 for e in errors):
        print_note(
            "Kirim refused the API key: check KIRIM_KEY (wrong, expired or revoked?) and that"
            " KIRIM_API_URL is that key's Kirim",
            stderr=True,
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl+C raises KeyboardInterrupt (see :func:`sigterm_interrupts`)."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, systemd, ``docker stop``) stops the command as
    Ctrl+C does, raising :class:`Terminated`, so it stops cleanly: what it stored is kept,
    and it can say so, instead of dying silently with exit 143."""

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    # outside the main thread (a test runner's) SIGTERM is left as it is
    with handling(stop, (signal.SIGTERM,)):
        yield


def interrupt_code(exc: KeyboardInterrupt) -> int:
    """The exit code of a command stopped by ``exc``: 143 for SIGTERM, 130 for Ctrl+C."""
    return 143 if isinstance(exc, Terminated) else 130


@contextmanager
def stops_saying(said: str | Callable[[], str]) -> Iterator[None]:
    """Within the block, Ctrl+C and SIGTERM (:func:`sigterm_interrupts`) end the command
    with ``interrupted: <said>`` on stderr (what is kept, and how to go on) and exit 130 or
    143 (:func:`interrupt_code`); a callable ``said`` is asked then, for what depends on how
    far the command got."""
    try:
        with sigterm_interrupts():
            yield
    except KeyboardInterrupt as exc:
        text = said if isinstance(said, str) else said()
        err_console.print(f"interrupted: {text}", soft_wrap=True)
        # what else the run ended with (add_note), as errors_to_exit prints it: a compaction
        # stopped that could not release its S3 lease says so (lake/lock.py), or the next
        # run within ten minutes said "another compaction ... holds the lease" unexplained
        print_notes(exc)
        raise typer.Exit(interrupt_code(exc)) from None


def command(
    name: str, *, group: typer.Typer | None = None, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on the app, or on ``group`` (``@command("name")``), with its
    docstring as the help text, reflowed."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if "help" not in kwargs and fn.__doc__:
            kwargs["help"] = reflowed(fn.__doc__)
        return (group or app).command(name, **kwargs)(fn)

    return register


def reflowed(doc: str) -> str:
    """Help text with each paragraph on one line: the terminal wraps it (typer keeps the
    docstring's line breaks, which broke each line in two on an 80-column terminal)."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:  # a path or port the OS refused, met past the commands' checks
        print_error(exc)
        sys.exit(1)
