"""The CLI entry points: --version, --help for every command, python -m."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

import kirim_events
from kirim_events.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert kirim_events.__version__ in result.output


def test_python_dash_m_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kirim_events", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "Usage" in result.stdout


def test_info_hides_secrets() -> None:
    result = runner.invoke(
        app,
        ["info"],
        env={"KIRIM_WEBHOOK_SECRET": "whsec_topsecret,whsec_two", "KIRIM_KEY": "kdv_x"},
    )
    assert result.exit_code == 0
    assert "2 configured" in result.output
    assert "topsecret" not in result.output
    assert "kdv_x" not in result.output


def test_bad_environment_is_a_one_line_error() -> None:
    result = runner.invoke(app, ["info"], env={"KIRIM_API_URL": "ftp://nope"})
    assert result.exit_code == 2
    assert "KIRIM_API_URL" in result.output
