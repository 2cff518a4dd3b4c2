"""The CLI entry points: --version, --help for every command, python -m."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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


def test_info_shows_the_api_url_the_client_uses() -> None:
    # "/v1" was shown though the client strips it
    url = "https://kirim.example/v1/"
    result = runner.invoke(app, ["info"], env={"KIRIM_API_URL": url})
    assert result.exit_code == 0, result.output
    assert "https://kirim.example " in result.output
    assert "/v1" not in result.output


def test_bad_environment_is_a_one_line_error() -> None:
    result = runner.invoke(app, ["info"], env={"KIRIM_API_URL": "ftp://nope"})
    assert result.exit_code == 2
    assert "KIRIM_API_URL" in result.output


def test_brackets_in_paths_and_messages_are_printed_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rich took "[lake]" (and "[notebook]" in an install hint) for styles and dropped them.
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--data", "my[lake]"])
    assert result.exit_code == 2
    assert "error: no lake at my[lake] (use" in " ".join(result.output.split())  # unwrapped
    result = runner.invoke(app, ["info", "--data", "my[lake]"])
    assert result.exit_code == 0
    assert "my[lake]" in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--html", "{tmp}/no-such-dir/r.html"], "--html"),
        (["report", "--html", "{tmp}"], "--html"),
        (["compact", "--data", "{tmp}/no-such-dir"], "no lake at"),
        (["demo", "--data", "{tmp}/a-file"], "cannot use"),
        (["emulate", "--no-api", "--send-to", "not-a-url"], "--send-to"),
        (["emulate", "--no-api", "--send-to", "http://127.0.0.1:9/h", "--truth", "{tmp}/a-file/x"],
         "--truth"),
        (["collect", "--port", "99999"], "--port"),
        (["collect", "--flush-interval", "nan"], "flush interval"),
        (["report", "--top", "99999999999999999999999"], "--top"),
        (["compact", "--target-mb", "99999999999999999999999999"], "--target-mb"),
    ],
)  # fmt: skip
def test_simple_mistakes_get_one_clear_error_and_no_traceback(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "events").mkdir()  # a lake folder for report to open
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if args[0] == "report":
        args += ["--data", str(tmp_path)]
    env = {"KIRIM_WEBHOOK_SECRET": "whsec_x", "KIRIM_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, OSError)
