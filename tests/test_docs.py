"""Every CLI command has help text and a section in docs/cli.md, and so does every option."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer.main

from kirim_events.cli import app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    # typer vendors its own click, so walk by duck typing rather than click's classes.
    found: list[tuple[str, Any]] = []
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        found.append((full, cmd))
        if hasattr(cmd, "commands"):
            found.extend(_commands(cmd, prefix=f"{full} "))
    return found


def _all() -> list[tuple[str, Any]]:
    return _commands(typer.main.get_command(app))


def test_there_are_commands() -> None:
    assert "info" in dict(_all())


def test_every_command_has_help_text() -> None:
    missing = [name for name, cmd in _all() if not (cmd.help or "").strip()]
    assert missing == [], f"commands without help text: {missing}"


def test_help_paragraphs_are_one_line_each_so_the_terminal_wraps_them() -> None:
    # typer keeps a docstring's line breaks: on an 80-column terminal each line of a
    # 90-column docstring broke in two, leaving a word alone on every other line
    broken = [
        name
        for name, cmd in _all()
        if any("\n" in paragraph for paragraph in (cmd.help or "").split("\n\n"))
    ]
    assert broken == []


def test_no_option_name_is_cut_on_an_80_column_terminal_nor_a_flag_typed() -> None:
    """A flag with two names (--x/--no-x) gets a second column, and rich then cut long
    names in the first one (``--time-compressi…``)."""
    import subprocess
    import sys

    cut = {}
    for name, _ in _all():
        argv = [sys.executable, "-m", "kirim_events", *name.split(), "--help"]
        env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
        out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
        cut[name] = [line for line in out.splitlines() if re.search(r"│ +--\S*…", line)]
        # typer 0.29 printed "<bool>" after flags, which take no value ("--full true" fails)
        cut[name] += [line for line in out.splitlines() if "<bool>" in line]
    assert {k: v for k, v in cut.items() if v} == {}


def test_every_command_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [name for name, _ in _all() if f"kirim-events {name}" not in text]
    assert missing == [], f"commands missing from docs/cli.md: {missing}"


def test_every_option_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = []
    for name, cmd in _all():
        for param in cmd.params:
            if getattr(param, "param_type_name", "") != "option":
                continue
            longs = [o for o in param.opts if o.startswith("--") and o != "--help"]
            if longs and not any(o in text for o in longs):
                missing.append(f"{name} {longs[0]}")
    assert missing == [], f"options missing from docs/cli.md: {missing}"


def test_the_walk_finds_options() -> None:
    # Guard against a walk that silently sees nothing: `info` has --data.
    info = dict(_all())["info"]
    assert any("--data" in p.opts for p in info.params)


def test_help_names_the_environment_each_command_reads() -> None:
    """docs/cli.md says which commands need KIRIM_KEY (and KIRIM_API_URL for another Kirim)
    and that collect reads KIRIM_WEBHOOK_SECRET and KIRIM_TOLERANCE; secrets are never
    options, so --help is the only place a user of the command can find them."""
    needs = {
        "collect": ("KIRIM_WEBHOOK_SECRET", "KIRIM_TOLERANCE"),
        "backfill": ("KIRIM_KEY", "KIRIM_API_URL"),
        "reconcile": ("KIRIM_KEY", "KIRIM_API_URL"),
        "deliveries": ("KIRIM_KEY", "KIRIM_API_URL"),
        "deliveries list": ("KIRIM_KEY", "KIRIM_API_URL"),
        "deliveries replay": ("KIRIM_KEY", "KIRIM_API_URL"),
        "deliveries bulk-replay": ("KIRIM_KEY", "KIRIM_API_URL"),
        "emulate": ("KIRIM_WEBHOOK_SECRET", "KIRIM_KEY"),
    }
    commands = dict(_all())
    missing = {
        name: [var for var in names if var not in (commands[name].help or "")]
        for name, names in needs.items()
    }
    assert {k: v for k, v in missing.items() if v} == {}
