"""The API key never reaches a log record while a KirimClient runs, whoever logs it."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kirim_events.client import KirimClient
from kirim_events.config import Secret
from kirim_events.errors import ApiError, AuthenticationError

KEY = "kdv_live_" + "Echo" * 6


@contextmanager
def echoing_server(status_line: bytes, headers: list[bytes], body: bytes) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that answers every request with ``status_line`` (so
    with the reason phrase it gives, which no ASGI server lets an app choose)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                lines = [status_line, *headers, b"Content-Type: application/json",
                         b"Content-Length: %d" % len(body), b"Connection: close"]  # fmt: skip
                conn.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_reason_phrase_echoing_the_key_is_logged_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A gateway that quotes the Authorization header it refused in its status line and in a
    # header: httpx logs the status line at INFO, httpcore it and the headers at DEBUG.
    said = f"refused Bearer {KEY}".encode()
    body = json.dumps({"error": {"type": "authentication_error", "code": "invalid_api_key",
                                 "message": "no", "request_id": "req_1"}}).encode()  # fmt: skip
    caplog.set_level(logging.DEBUG)  # every logger, the root's handler captures them all
    with (
        echoing_server(b"HTTP/1.1 401 " + said, [b"X-Seen: " + said], body) as url,
        KirimClient(url, Secret(KEY), max_attempts=1) as client,
        pytest.raises(AuthenticationError),
    ):
        client.request("GET", "/v1/me")
    names = {record.name for record in caplog.records}
    assert {"httpx", "httpcore.http11"} <= names  # the stack's own lines were captured
    for record in caplog.records:
        assert KEY not in record.getMessage(), record.name
    assert KEY not in caplog.text
    # the line is kept, the key blanked in it
    assert '"HTTP/1.1 401 refused Bearer **********"' in caplog.text


def test_lines_without_the_key_are_left_as_they_were(caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"data": [], "has_more": False, "next_cursor": None}).encode()
    caplog.set_level(logging.DEBUG)
    with (
        echoing_server(b"HTTP/1.1 200 Fine Thanks", [], body) as url,
        KirimClient(url, Secret(KEY), max_attempts=1) as client,
    ):
        client.list_deliveries()
    (line,) = [r for r in caplog.records if r.name == "httpx"]
    assert line.msg.startswith("HTTP Request: %s")  # untouched: its arguments still apart
    assert line.args
    assert line.getMessage().endswith('"HTTP/1.1 200 Fine Thanks"')


def test_a_key_is_hidden_while_any_client_with_it_is_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    first = KirimClient("http://127.0.0.1:9", Secret(KEY))
    second = KirimClient("http://127.0.0.1:9", Secret(KEY))
    first.close()
    first.close()  # twice: still one release
    logging.getLogger("httpx").info("echo %s", KEY)
    second.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines == ["echo **********"]


@pytest.mark.parametrize("status", [b"401", b"404", b"502"])
def test_an_error_worded_from_a_reason_phrase_echoing_the_key_hides_it(
    status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A gateway's page (no Kirim error envelope) under a status line quoting the key: the
    # error took the reason phrase as its message, key and all, and the CLI printed it, as
    # did kirim_events.client's "giving up" log line (no logger the filter sits on).
    caplog.set_level(logging.DEBUG)
    line = b"HTTP/1.1 " + status + b" refused Bearer " + KEY.encode()
    with (
        echoing_server(line, [], b"<html>refused</html>") as url,
        KirimClient(url, Secret(KEY), max_attempts=1) as client,
        pytest.raises(ApiError) as raised,
    ):
        client.request("GET", "/v1/me")
    assert KEY not in str(raised.value)
    assert "refused Bearer **********" in str(raised.value)  # the phrase is kept, blanked
    assert "kirim api error (giving up)" in caplog.text
    assert KEY not in caplog.text


def test_a_key_with_a_backslash_or_quotes_is_hidden_as_httpcore_writes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # httpcore logs the headers as bytes reprs: a backslash doubled, a quote escaped. A key
    # holding them (KirimClient takes any printable ASCII) was logged in that form, which
    # the filter did not look for.
    key = "kdv_live_Echo\\Echo'Echo\"EchoEcho"
    escaped = repr(key.encode())[2:-1]
    assert escaped != key
    caplog.set_level(logging.DEBUG)
    with (
        echoing_server(b"HTTP/1.1 200 OK", [b"X-Seen: " + key.encode()], b"{}") as url,
        KirimClient(url, Secret(key), max_attempts=1) as client,
    ):
        client.request("GET", "/v1/me")
    assert "httpcore.http11" in {record.name for record in caplog.records}
    assert escaped not in caplog.text
    assert key not in caplog.text
    assert "(b'X-Seen', b'**********')" in caplog.text


def test_an_error_quoting_a_status_line_as_bytes_hides_a_key_with_a_backslash() -> None:
    # h11 refuses a status line it cannot read and quotes it as bytes: the error's text
    # held such a key as a repr writes it (backslash doubled), past the client's blanking.
    key = "kdv_live_Echo\\Echo\\EchoEchoEcho"
    with (
        echoing_server(b"HTTP/1.1 4O1 refused Bearer " + key.encode(), [], b"{}") as url,
        KirimClient(url, Secret(key), max_attempts=1) as client,
        pytest.raises(ApiError) as raised,
    ):
        client.request("GET", "/v1/me")
    said = str(raised.value)
    assert "illegal status line" in said  # the error is the one that quotes it
    assert repr(key.encode())[2:-1] not in said
    assert key not in said
