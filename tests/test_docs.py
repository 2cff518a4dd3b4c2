"""Every CLI command has help text and a section in docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import click
import typer.main

from kirim_events.cli import app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        found.append((full, cmd))
        if isinstance(cmd, click.Group):
            found.extend(_commands(cmd, prefix=f"{full} "))
    return found


def test_there_are_commands() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    assert len(_commands(group)) >= 1


def test_every_command_has_help_text() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    missing = [name for name, cmd in _commands(group) if not (cmd.help or "").strip()]
    assert missing == [], f"commands without help text: {missing}"


def test_every_command_is_documented() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    text = DOCS.read_text(encoding="utf-8")
    missing = [name for name, _ in _commands(group) if f"kirim-events {name}" not in text]
    assert missing == [], f"commands missing from docs/cli.md: {missing}"


def test_every_option_is_documented() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    text = DOCS.read_text(encoding="utf-8")
    missing = []
    for name, cmd in _commands(group):
        for param in cmd.params:
            if isinstance(param, click.Option):
                longs = [o for o in param.opts if o.startswith("--") and o != "--help"]
                if longs and not any(o in text for o in longs):
                    missing.append(f"{name} {longs[0]}")
    assert missing == [], f"options missing from docs/cli.md: {missing}"
