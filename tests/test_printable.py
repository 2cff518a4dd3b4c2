"""Webhook and API text shown on a terminal or in a log line: controls escaped, text kept."""

from __future__ import annotations

import logging
import sys

import pytest

from kirim_events.cli.collect import TextFormatter
from kirim_events.printable import printable

ATTACK = "\x1b]0;PWNED\x07\x1b[2K\r\x1b[32mINFO all good\x1b[0m\nforged line\u202etxt.exe\x9b31m"


def test_controls_and_bidi_marks_are_escaped_and_text_is_kept() -> None:
    shown = printable(ATTACK)
    assert shown == (
        "\\x1b]0;PWNED\\x07\\x1b[2K\\r\\x1b[32mINFO all good\\x1b[0m\\nforged line"
        "\\u202etxt.exe\\x9b31m"
    )
    assert shown.isprintable()
    text = 'Olá, 你好 😀 ñ – "quoted" [not markup] \\ back'  # printable text stays as it is
    assert printable(text) == text
    assert printable(None) == "None"
    assert printable(12) == "12"


def test_lines_mode_keeps_line_breaks_and_tabs_only() -> None:
    assert printable("a\nb\tc\rd\x1be", lines=True) == "a\nb\tc\\rd\\x1be"


def test_text_log_lines_cannot_forge_lines_or_drive_the_terminal() -> None:
    record = logging.LogRecord("kirim_events.x", logging.WARNING, "f", 1, "rejected %s", (ATTACK,),
                               None)  # fmt: skip
    line = TextFormatter().format(record)
    assert line.isprintable()  # one line, no escape sequence
    assert line.endswith("WARNING kirim_events.x: rejected " + printable(ATTACK))


def test_a_traceback_after_the_line_keeps_its_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("kirim_events.x", logging.ERROR, "f", 1, "failed", (), exc_info)
    text = TextFormatter().format(record)
    first, *rest = text.splitlines()
    assert first.endswith("ERROR kirim_events.x: failed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


def test_reconcile_shows_the_apis_ids_without_obeying_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from datetime import UTC, datetime

    from kirim_events.cli.backfill import _render_reconcile
    from kirim_events.reconcile import BulkWindow, ReconcileReport

    at = datetime(2026, 5, 1, tzinfo=UTC)
    report = ReconcileReport(since=at, until=at, dry_run=True)
    report.windows.append(BulkWindow("wbs_\x1b]0;owned\x1b\\\x1b[2J", "dead", at, at, 3))
    report.notes.append("subscription wbs_\x1b[31mred")
    _render_reconcile(report)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "bulk_replay wbs_\\x1b]0;owned" in out
