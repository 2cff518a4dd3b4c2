"""The CLI entry points: --version, --help for every command, python -m."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner
from waiting import wait_until

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


def test_info_names_the_variable_of_every_setting() -> None:
    # "data dir" and "signature tolerance" were shown without KIRIM_DATA_DIR and
    # KIRIM_TOLERANCE, while every other row named its variable
    from kirim_events.config import _ENV

    result = runner.invoke(app, ["info"], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "│" in line]  # not the head's ┃
    assert len(rows) == len(_ENV)
    for variable in _ENV:
        assert sum(f"({variable})" in row for row in rows) == 1, (variable, result.output)


def test_info_shows_the_api_url_the_client_uses() -> None:
    # "/v1" was shown though the client strips it
    url = "https://kirim.example/v1/"
    result = runner.invoke(app, ["info"], env={"KIRIM_API_URL": url})
    assert result.exit_code == 0, result.output
    assert "https://kirim.example " in result.output
    assert "/v1" not in result.output


def test_info_refuses_an_api_url_holding_the_key_without_showing_it() -> None:
    # info showed the URL whole, key and all (backfill and the others refuse it)
    key = "kdv_live_" + "K3y" * 8
    env = {"KIRIM_KEY": key, "KIRIM_API_URL": f"https://kirim.example/{key}"}
    result = runner.invoke(app, ["info"], env=env, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: KIRIM_API_URL holds the API key")
    assert "K3yK3y" not in result.output


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
        (["demo", "--data", "{tmp}/a-file"], "is a file, not a folder"),
        (["emulate", "--no-api", "--send-to", "not-a-url"], "--send-to"),
        (["emulate", "--no-api", "--send-to", "http://127.0.0.1:9/h", "--truth", "{tmp}/a-file/x"],
         "--truth"),
        (["collect", "--port", "99999"], "--port"),
        (["collect", "--flush-interval", "nan"], "flush interval"),
        (["collect", "--path", ""], "webhook path is blank"),
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


def _started(proc: subprocess.Popen[str]) -> bool:
    """Whether ``main()`` runs in ``proc``: it catches SIGTERM first (fails once it ended)."""
    assert proc.poll() is None, proc.communicate()
    return _catches(proc.pid, signal.SIGTERM)


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("command", "sig", "code"),
    [("collect", signal.SIGTERM, 0), ("collect", signal.SIGINT, 0),
     ("report", signal.SIGTERM, 143), ("report", signal.SIGINT, 130)],
)  # fmt: skip
def test_a_stop_while_the_commands_load_ends_as_the_command_would(
    tmp_path: Path, command: str, sig: int, code: int
) -> None:
    # The commands' imports take a second or more; a SIGTERM then killed collect (exit -15)
    # and a SIGINT printed a KeyboardInterrupt traceback.
    env = {**os.environ, "KIRIM_WEBHOOK_SECRET": "whsec_" + "a" * 32}
    argv = [sys.executable, "-m", "kirim_events", command, "--data", str(tmp_path / "d")]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: _started(proc), 60, interval=0.001, what="main() catching SIGTERM")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert f"received {signal.Signals(sig).name} while starting" in err
    assert "Traceback" not in err
    assert not (tmp_path / "d").exists()  # stopped before anything began


def test_a_library_errors_notes_are_shown_under_it(capsys: pytest.CaptureFixture[str]) -> None:
    # backfill notes on its error that the flush after it failed too: dropping the note
    # would hide the second failure from the CLI user
    import typer

    from kirim_events.cli._app import errors_to_exit

    error = kirim_events.StorageError("the page could not be stored")
    error.add_note("flushing the journal failed too: disk full")
    with pytest.raises(typer.Exit) as exit_info, errors_to_exit():
        raise error
    assert exit_info.value.exit_code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "error: the page could not be stored",
        "note: flushing the journal failed too: disk full",
    ]


@pytest.mark.parametrize(
    "command", [["report"], ["info"], ["compact"], ["demo"], ["collect"], ["backfill"],
                ["reconcile"]],
)  # fmt: skip
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_data_folder_is_refused_not_read_as_the_current_one(
    command: list[str], blank: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --data "$DATA" with DATA unset: Path("") is the current folder, which the command
    # would read as a lake or write a lake into
    monkeypatch.chdir(tmp_path)
    env = {"KIRIM_KEY": "kdv_test_x", "KIRIM_WEBHOOK_SECRET": "whsec_" + "x" * 24}
    result = CliRunner().invoke(app, [*command, "--data", blank], env=env)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--data': is blank" in result.output
    assert list(tmp_path.iterdir()) == []
