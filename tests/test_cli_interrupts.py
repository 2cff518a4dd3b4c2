"""Ctrl-C and SIGTERM on the commands that only read (``report``, ``info``): one line saying
nothing was changed, exit 130 or 143, in a real process stopped by a real signal.

They are stopped while their output waits for its reader: a terminal paused (Ctrl-S), a pager
or a pipe not read yet. Its stdout is a pipe filled to the brim before it starts, so the
command's first write blocks until the test reads; the signal comes while it is blocked
there (the kernel says so: ``/proc/PID/wchan``).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_lake import ev
from waiting import wait_until

import kirim_events as ke

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/wchan").exists(), reason="needs Linux's /proc/PID/wchan"
)


def _full_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) whose buffer is full: a write to it blocks."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"\0" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, 0)
    return r, w


def _blocked_writing(pid: int) -> bool:
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def _stopped_while_writing(args: list[str], sig: signal.Signals) -> tuple[int, str]:
    """Run ``kirim-events <args>`` with its stdout blocked, send ``sig`` once it waits to
    write, then read its stdout: its exit code and stderr."""
    r, w = _full_pipe()
    # (a child of a background job would start with SIGINT ignored)
    interruptible = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    env = {**os.environ, "KIRIM_KEY": "kdv_live_" + "A" * 24, "KIRIM_WEBHOOK_SECRET": "whsec_x"}
    proc = subprocess.Popen([sys.executable, "-m", "kirim_events", *args], stdout=w,
                            stderr=subprocess.PIPE, env=env, preexec_fn=interruptible)  # fmt: skip
    os.close(w)
    drained = threading.Thread(target=lambda: _drain(r), daemon=True)
    try:
        wait_until(lambda: proc.poll() is not None or _blocked_writing(proc.pid), 60,
                   what="the command blocked writing its output")  # fmt: skip
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(sig)
        drained.start()  # what it still holds to write (its stdout flushed as it ends)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


def _drain(fd: int) -> None:
    with os.fdopen(fd, "rb") as reader:
        while reader.read(65536):
            pass


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    ke.Lake(tmp_path / "data").write_events([ev("a"), ev("b")])
    return tmp_path / "data"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_report_stopped_says_it_changed_nothing(
    lake_dir: Path, sig: signal.Signals, code: int
) -> None:
    # Ctrl-C ended report with exit 130 and not a word; SIGTERM killed it (143, silent)
    returncode, err = _stopped_while_writing(["report", "--data", str(lake_dir)], sig)
    assert returncode == code, err
    assert err.splitlines() == ["interrupted: nothing was changed: report only reads the lake"]


def test_report_stopped_with_html_names_the_page_it_may_leave_half_written(
    lake_dir: Path, tmp_path: Path
) -> None:
    page = tmp_path / "r.html"
    args = ["report", "--data", str(lake_dir), "--html", str(page)]
    returncode, err = _stopped_while_writing(args, signal.SIGINT)
    assert returncode == 130, err
    (line,) = err.splitlines()
    assert line.startswith("interrupted: nothing was changed: report only reads the lake; ")
    assert f"{page} may be left incomplete, run it again" in line


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_info_stopped_says_it_changed_nothing(sig: signal.Signals, code: int) -> None:
    returncode, err = _stopped_while_writing(["info"], sig)
    assert returncode == code, err
    assert err.splitlines() == ["interrupted: nothing was changed: info only shows the settings"]
