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


def _sections() -> dict[str, str]:
    """docs/cli.md's text per command: ``## kirim-events X`` (or ``###``) up to the next."""
    text = DOCS.read_text(encoding="utf-8")
    parts = re.split(r"^#{2,3} kirim-events ", text, flags=re.M)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


# options a section names that belong to another command: emulate's --start reads a time
# "as `--since` reads it" (backfill's)
_CROSS_REFERENCES = {"emulate": {"--since"}}


def _long_options(cmd: Any) -> set[str]:
    return {
        o
        for p in cmd.params
        for o in [*p.opts, *getattr(p, "secondary_opts", [])]
        if o.startswith("--")
    }


def test_each_command_section_names_only_options_the_command_has() -> None:
    """A doc that kept an option after it was renamed or removed (or named another
    command's) would send a reader to `No such option`; each section is checked against
    its own command, not the whole file."""
    sections = _sections()
    wrong = {}
    for name, cmd in _all():
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", sections[name]))
        extra = named - _long_options(cmd) - {"--help"} - _CROSS_REFERENCES.get(name, set())
        if extra:
            wrong[name] = sorted(extra)
    assert wrong == {}


def test_each_option_is_documented_in_its_own_commands_section() -> None:
    sections = _sections()
    missing = {}
    for name, cmd in _all():
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", sections[name]))
        if lacking := _long_options(cmd) - named:
            missing[name] = sorted(lacking)
    assert missing == {}


def _documented_defaults(section: str) -> dict[str, str]:
    """``--opt`` -> the default its table row (``| `--opt N` | ... default 4 ...``) or its
    bullet (``- `--opt N` (4): ...``) states, where it states one."""
    found = {}
    for line in section.splitlines():
        row = re.match(r"^\| `(--[a-z][a-z0-9-]*)[^`]*` \| (.*)", line)
        bullet = re.match(r"^- `(--[a-z][a-z0-9-]*)[^`]*` \(([^)]+)\)", line)
        if bullet:
            found[bullet[1]] = bullet[2]
        elif row and (said := re.search(r"\bdefault:? `?([\w./-]+)", row[2])):
            found[row[1]] = said[1]
    return found


def test_documented_defaults_are_the_commands_defaults() -> None:
    """docs/cli.md states defaults in its option tables and bullets; each must be the
    default the command has (a changed default left the doc behind silently)."""
    sections = _sections()
    checked, wrong = [], {}
    for name, cmd in _all():
        params = {o: p for p in cmd.params for o in p.opts}
        for option, said in _documented_defaults(sections[name]).items():
            default = params[option].default
            if isinstance(default, bool) or default is None:
                continue  # flags, and defaults taken from the environment
            checked.append(f"{name} {option}")
            same = (
                float(said) == float(default)
                if isinstance(default, int | float) and re.fullmatch(r"[\d.]+", said)
                else said == str(default)
            )
            if not same:
                wrong[f"{name} {option}"] = (said, default)
    assert wrong == {}
    # the parse finds the defaults it should (a walk that sees nothing checks nothing)
    assert {"report --top", "emulate --port", "collect --path", "backfill --slices"} <= set(checked)


ROOT = DOCS.parent.parent
_READER_DOCS = ("README.md", "docs/cli.md", "docs/analytics.md")


def _invocations(text: str) -> list[str]:
    """Each ``kirim-events ...`` command line shown as code (fenced or inline), up to a
    comment, joined across a trailing backslash."""
    text = text.replace("\\\n", " ")
    code = re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`[^`\n]+`", text)
    found = []
    for block in code:
        for line in block.strip("`").splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            if re.search(r"(?:^|\s)kirim-events \w", line):
                found.append(line[line.index("kirim-events ") :])
    return found


def test_command_lines_in_the_docs_name_real_commands_and_their_options() -> None:
    """README.md and docs/*.md show command lines to copy; each option there must be one
    of that command's (a line a reader pastes should not fail with `No such option`)."""
    commands = dict(_all())
    wrong, checked = [], 0
    for doc in _READER_DOCS:
        for line in _invocations((ROOT / doc).read_text(encoding="utf-8")):
            words = line.split()[1:]
            options = {
                part
                for w in words
                if w.lstrip("[").startswith("--")
                for part in w.strip("[]").split("=")[0].split("/")
            }
            if not options:
                continue  # a command named in passing (some are not built yet)
            name = " ".join(words[:2]) if " ".join(words[:2]) in commands else words[0]
            checked += 1
            if name not in commands:
                wrong.append(f"{doc}: {line} (no command {name})")
            elif extra := options - _long_options(commands[name]) - {"--help"}:
                wrong.append(f"{doc}: {line} ({', '.join(sorted(extra))})")
    assert wrong == []
    assert checked > 20  # the README's and cli.md's examples were found


def test_the_metrics_docs_cli_md_lists_are_the_ones_served() -> None:
    """docs/cli.md lists what `GET /metrics` serves, for dashboards and alerts: a metric
    added to or renamed in the receiver would leave the list behind."""
    from kirim_events.receiver import Metrics

    served = set(re.findall(r"^# TYPE (\S+) ", Metrics().render(0), flags=re.M))
    paragraph = _sections()["collect"].split("`GET /metrics` serves", 1)[1].split("\n\n")[0]
    listed = set(re.findall(r"`(kirim_events_\w+)", paragraph))
    assert len(served) > 10
    assert listed == served


def test_the_readme_configuration_table_is_what_the_settings_read() -> None:
    """README.md's table names every variable the settings read, with their defaults, and
    the docs name no other KIRIM_ variable (one would be silently ignored)."""
    from kirim_events.config import _ENV, Settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(KIRIM_\w+)` \|.*\| ([^|]+) \|$", readme, flags=re.M))
    assert set(rows) == set(_ENV)
    defaults = Settings.load({})
    for variable, said in rows.items():
        value = getattr(defaults, _ENV[variable])
        if value in (None, ()):
            assert said.startswith("none"), variable
        else:
            shown = said.strip().strip("`")
            assert shown == str(value) or Path(shown) == value, (variable, said, value)
    named = {
        v for doc in ("README.md", *_READER_DOCS, "docs/emulator.md")
        for v in re.findall(r"KIRIM_[A-Z_]+", (ROOT / doc).read_text(encoding="utf-8"))
    }  # fmt: skip
    assert named <= set(_ENV)


# options a synopsis may leave out: kept only so that old scripts still run
_UNLISTED = {"emulate": {"--no-kirim-block"}}


def test_each_synopsis_lists_every_option_bracketed_unless_required() -> None:
    """The ``kirim-events X [--opt V] ...`` block opening a command's section is where a
    reader looks first: it names every option, and brackets exactly the optional ones (a
    required ``--since`` shown as ``[--since T]`` would read as optional)."""
    sections = _sections()
    wrong, checked = {}, 0
    for name, cmd in _all():
        blocks = re.findall(rf"```\n(kirim-events {name} .*?)```", sections[name], flags=re.S)
        if not blocks:
            assert hasattr(cmd, "commands"), f"no synopsis for {name}"  # a group's are below
            continue
        synopsis = " ".join(blocks[0].split())
        outside = re.sub(r"\[[^\]]*\]", "", synopsis)
        for param in cmd.params:
            names = [o for o in param.opts if o.startswith("--")]
            if getattr(param, "param_type_name", "") != "option" or not names:
                continue
            if set(names) <= _UNLISTED.get(name, set()):
                continue
            checked += 1
            shown = [o for o in names if re.search(rf"(?<![\w-]){o}(?![\w-])", synopsis)]
            alone = [o for o in names if re.search(rf"(?<![\w-]){o}(?![\w-])", outside)]
            if not shown:
                wrong[f"{name} {names[0]}"] = "not listed"
            elif bool(alone) != bool(param.required):
                wrong[f"{name} {names[0]}"] = "required" if param.required else "optional"
    assert wrong == {}
    assert checked > 40  # the synopses were found
