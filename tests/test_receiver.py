"""The receiver over real HTTP: in-process (httpx.ASGITransport) for most cases, and every kind
of answer once more over a loopback socket (uvicorn); answers, dedup, receipts."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import random
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import virtualtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback import serve

import kirim_events as ke
from kirim_events import atomicfile, testing
from kirim_events import receiver as receiver_module
from kirim_events.errors import StorageError
from kirim_events.journal import Journal
from kirim_events.lake import Lake
from kirim_events.receiver import RECEIPT_TEXT_MAX, Receiver
from kirim_events.replays import HeaderKeyedReplays

SECRET = "whsec_current"
OLD_SECRET = "whsec_previous"
PATH = "/webhooks/kirim"
NOW = 1_779_531_500.0  # pinned clock: 2026-05-23T10:18:20Z
MADE_UP = f"t={int(NOW)},v1=" + "0" * 64  # fresh and well formed: the body is read, then fails

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path)
    yield j
    j.close()


@pytest.fixture
def receiver(journal: Journal) -> Receiver:
    return Receiver(journal, [SECRET, OLD_SECRET], max_body=64 * 1024, now=lambda: NOW)


def client(app: Receiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://collector")


async def post(app: Receiver, req: testing.SignedRequest) -> httpx.Response:
    async with client(app) as c:
        return await c.post(PATH, content=req.body, headers=req.headers)


def signed(body: Any = None, secret: str = SECRET, **kw: Any) -> testing.SignedRequest:
    body = testing.kirim_event() if body is None else body
    return testing.signed_request(body, secret, timestamp=int(NOW), **kw)


def lake_after_flush(journal: Journal) -> Lake:
    lake = Lake(journal.data_dir)
    journal.flush(lake)
    return lake


async def test_new_then_duplicate(receiver: Receiver, journal: Journal) -> None:
    req = signed()
    first, again = await post(receiver, req), await post(receiver, req)
    assert (first.status_code, first.json()["outcome"]) == (200, "new")
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    lake = lake_after_flush(journal)
    assert lake.events().collect().height == 1
    outcomes = lake.deliveries().collect()["outcome"].to_list()
    assert sorted(outcomes) == ["duplicate", "new"]


@pytest.mark.parametrize("shape", ["kirim", "meta_status", "meta_message", "legacy"])
async def test_every_body_shape_is_accepted(receiver: Receiver, shape: str) -> None:
    body = testing.sample_bodies(random.Random(7))[shape]
    resp = await post(receiver, signed(body))
    assert resp.status_code == 200
    assert resp.json() == {"outcome": "new", "events": 1, "new": 1}


async def test_a_receipt_names_the_type_as_the_lake_does(
    receiver: Receiver, journal: Journal
) -> None:
    """The third shape's ``message.status_updated`` is stored as ``message.status``; its
    receipts must be too, or delivery health splits one type over two rows."""
    body = {
        "id": "wbd_01",
        "event": "message.status_updated",
        "delivered_at": "2026-05-23T10:00:00Z",
        "data": {"message": {"id": "wamid.X", "status": "delivered"}},
    }
    req = signed(body, delivery_id="wbd_01")
    assert req.headers["X-Kirim-Event"] == "message.status_updated"
    for _ in range(2):
        assert (await post(receiver, req)).status_code == 200
    lake = lake_after_flush(journal)
    health = lake.delivery_health().collect()
    assert health["event_type"].to_list() == ["message.status"]
    row = health.row(0, named=True)
    assert (row["deliveries"], row["duplicates"], row["n_events"]) == (2, 1, 1)


async def test_rotation_and_the_256_header_name(receiver: Receiver) -> None:
    old = await post(receiver, signed(secret=OLD_SECRET))
    alt = await post(receiver, signed(signature_header="X-Kirim-Signature-256"))
    assert (old.status_code, alt.status_code) == (200, 200)


async def test_an_upper_case_hex_signature_is_accepted(
    receiver: Receiver, journal: Journal
) -> None:
    # kirim-api.md §2.1 says lowercase hex; an upper-cased digest (the same MAC) got a 401,
    # which Kirim takes as final: the event was lost for good.
    req = signed(testing.kirim_event(event_id="evt_UPPER"))
    t, mac = req.headers["X-Kirim-Signature"].split(",v1=")
    upper = {**req.headers, "X-Kirim-Signature": f"{t},v1={mac.upper()}"}
    wrong = {**req.headers, "X-Kirim-Signature": f"{t},v1={mac.upper()[:-1]}G"}
    async with client(receiver) as c:
        ok = await c.post(PATH, content=req.body, headers=upper)
        bad = await c.post(PATH, content=req.body, headers=wrong)
    assert (ok.status_code, ok.json().get("outcome")) == (200, "new")
    assert (bad.status_code, bad.json()["reason"]) == (401, "mismatch")
    assert lake_after_flush(journal).events().collect()["event_id"].to_list() == ["evt_UPPER"]


def _split_signature(req: testing.SignedRequest, how: str) -> list[tuple[str, str]]:
    """``req``'s headers with its signature sent as several field lines of one header."""
    t, *macs = req.headers["X-Kirim-Signature"].split(",")
    lines = {
        "t then v1s": [t, ",".join(macs)],
        "a line per secret": [f"{t},{mac}" for mac in macs],
        "a line per secret, ours first": [f"{t},{mac}" for mac in reversed(macs)],
    }[how]
    rest = [(k, v) for k, v in req.headers.items() if k != "X-Kirim-Signature"]
    return rest + [("X-Kirim-Signature", line) for line in lines]


@pytest.mark.parametrize(
    "how", ["t then v1s", "a line per secret", "a line per secret, ours first"]
)
def test_a_signature_over_several_header_lines_is_one_list(receiver: Receiver, how: str) -> None:
    """RFC 9110 5.3: a list header may come as several field lines; the last line alone
    (no t=, or another secret's v1) had given 401, which Kirim takes as final."""
    req = testing.signed_request(testing.kirim_event(), ["whsec_other", SECRET], timestamp=int(NOW))
    with serve(receiver) as url:
        resp = httpx.post(url + PATH, content=req.body, headers=_split_signature(req, how))
    assert (resp.status_code, resp.json()["outcome"]) == (200, "new")


def test_signature_lines_with_two_signing_times_are_malformed(receiver: Receiver) -> None:
    body = testing.encode(testing.kirim_event())
    ours = ke.sign(body, SECRET, timestamp=int(NOW))
    other = f"t={int(NOW) - 1},v1=" + "0" * 64
    headers = [("X-Kirim-Signature", ours), ("X-Kirim-Signature", other)]
    with serve(receiver) as url:
        for lines in (headers, headers[::-1]):  # either order: no one signing time
            resp = httpx.post(url + PATH, content=body, headers=lines)
            assert (resp.status_code, resp.json()["reason"]) == (401, "malformed")


def _tamper(req: testing.SignedRequest) -> testing.SignedRequest:
    return testing.SignedRequest(
        req.body.replace(b'"livemode":true', b'"livemode":false'), req.headers
    )


def _header(req: testing.SignedRequest, value: str | None) -> testing.SignedRequest:
    headers = {k: v for k, v in req.headers.items() if k != "X-Kirim-Signature"}
    if value is not None:
        headers["X-Kirim-Signature"] = value
    return testing.SignedRequest(req.body, headers)


BAD_SIGNATURES = {
    "missing": lambda r: _header(r, None),
    "malformed": lambda r: _header(r, "v1=abc"),
    "mismatch": lambda r: _header(r, ke.sign(r.body, "whsec_wrong", timestamp=int(NOW))),
    "stale": lambda r: testing.signed_request(r.body, SECRET, timestamp=int(NOW) - 301),
    "tampered": _tamper,
    # int() of these raised (OverflowError, then ValueError past 4300 digits): a 500
    "malformed-t400": lambda r: _header(r, f"t={'9' * 400},v1=00"),
    "malformed-t5000": lambda r: _header(r, f"t={'9' * 5000},v1=00"),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGNATURES))
async def test_bad_signatures_get_401_and_reach_no_table(
    receiver: Receiver, journal: Journal, case: str
) -> None:
    resp = await post(receiver, BAD_SIGNATURES[case](signed()))
    assert resp.status_code == 401
    expected = {"tampered": "mismatch"}.get(case, case.split("-")[0])
    assert resp.json()["reason"] == expected
    lake = lake_after_flush(journal)
    assert lake.events().collect().height == 0
    receipt = lake.deliveries().collect().to_dicts()
    assert [(r["outcome"], r["reason"]) for r in receipt] == [("rejected", expected)]


@pytest.mark.parametrize("attempt", [b"\xb2", "\u0661".encode(), b"9" * 5000, b"-1", b"", b"2"])
async def test_an_odd_attempt_header_is_kept_as_unknown_never_a_5xx(
    receiver: Receiver, journal: Journal, attempt: bytes
) -> None:
    # "²".isdigit() is true, yet int("²") raises: that was a 500 before the signature check.
    req = signed()
    async with client(receiver) as c:
        ok = await c.post(
            PATH, content=req.body, headers={**req.headers, "X-Kirim-Attempt": attempt}
        )
        bad = await c.post(PATH, content=req.body, headers={"X-Kirim-Attempt": attempt})
    assert (ok.status_code, ok.json()["outcome"], bad.status_code) == (200, "new", 401)
    receipts = lake_after_flush(journal).deliveries().collect()
    assert set(receipts["attempt"].to_list()) == ({2} if attempt == b"2" else {None})


async def test_an_unsigned_request_stores_no_more_than_a_short_receipt(
    receiver: Receiver, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    # receipts are written before the signature check: 8 KB headers were kept whole (and
    # logged), so anyone reaching the port could fill the disk a few KB at a time
    long = {k: "x" * 8000 for k in ("X-Kirim-Delivery-Id", "X-Kirim-Event-Id", "X-Kirim-Event")}
    async with client(receiver) as c:
        resp = await c.post(PATH, content=b"{}", headers=long)
    assert resp.status_code == 401
    [row] = lake_after_flush(journal).deliveries().collect().to_dicts()
    for column in ("delivery_id", "event_id", "event_type"):
        assert row[column] == "x" * RECEIPT_TEXT_MAX
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)
    assert any("rejected delivery" in r.getMessage() for r in caplog.records)


async def test_a_header_cannot_drive_the_terminal_through_the_log(
    receiver: Receiver, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kirim_events")
    forged = "\x1b]0;PWNED\x07\x1b[2K\rINFO kirim_events.collect: all good\nnext"
    async with client(receiver) as c:
        resp = await c.post(PATH, content=b"{}", headers={"X-Kirim-Delivery-Id": forged})
    assert resp.status_code == 401
    [line] = [r.getMessage() for r in caplog.records if "rejected delivery" in r.getMessage()]
    assert line.isprintable()
    assert "\\x1b]0;PWNED\\x07" in line
    [row] = lake_after_flush(journal).deliveries().collect().to_dicts()
    assert row["delivery_id"] == forged  # the receipt keeps what was sent


async def test_a_signed_request_keeps_a_long_delivery_id_whole(
    receiver: Receiver, journal: Journal
) -> None:
    # its events keep the header whole, so its receipts must too: copies are counted by
    # joining the two on delivery_id
    req = signed()
    long_id = "wbd_" + "x" * 300
    for _ in range(2):
        assert (await post(receiver, _with(req, {"X-Kirim-Delivery-Id": long_id}))).is_success
    lake = lake_after_flush(journal)
    assert set(lake.deliveries().collect()["delivery_id"]) == {long_id}
    assert lake.event_copies().collect()["n_copies"].to_list() == [2]


def _with(req: testing.SignedRequest, headers: dict[str, str]) -> testing.SignedRequest:
    return testing.SignedRequest(req.body, {**req.headers, **headers})


async def test_too_large_by_content_length_is_413(receiver: Receiver, journal: Journal) -> None:
    big = testing.kirim_event(data={"blob": "x" * 70_000})
    resp = await post(receiver, signed(big))
    assert resp.status_code == 413
    assert lake_after_flush(journal).events().collect().height == 0


async def test_a_content_length_of_thousands_of_digits_is_413(receiver: Receiver) -> None:
    # Straight ASGI: an HTTP client would not send it. int() of 5000 digits raised: a 500.
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "headers": [(b"content-length", b"9" * 5000)],
    }
    await receiver(scope, receive, send)
    assert sent[0]["status"] == 413


async def test_size_limit_is_enforced_while_streaming(receiver: Receiver, journal: Journal) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked upload
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"x" * 8192

    async with client(receiver) as c:
        resp = await c.post(PATH, content=chunks(), headers={"X-Kirim-Signature": MADE_UP})
    assert resp.status_code == 413
    assert sent < 20  # stopped reading soon after 64 KiB, not after 8 MB
    assert lake_after_flush(journal).events().collect().height == 0


def test_a_body_that_trickles_in_gets_408_which_kirim_retries(journal: Journal) -> None:
    # on virtual time: the deadline passes, and the 30 s stall lasts, in no real time
    receiver = Receiver(journal, [SECRET], body_timeout=0.2, now=lambda: NOW)
    req = signed()

    async def trickle() -> AsyncIterator[bytes]:
        yield req.body[:10]
        await asyncio.sleep(30)  # the answer must not wait for this
        yield req.body[10:]

    async def post() -> tuple[httpx.Response, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with client(receiver) as c:
            resp = await c.post(PATH, content=trickle(), headers=req.headers)
        return resp, loop.time() - start

    resp, after = virtualtime.run(post())
    assert (resp.status_code, resp.json()["reason"]) == (408, "body_timeout")
    assert 0.2 <= after <= 1.2  # the deadline, up to a second late; not the stall's end
    lake = lake_after_flush(journal)
    assert lake.events().collect().height == 0
    assert lake.deliveries().collect()["reason"].to_list() == ["body_timeout"]


def test_a_stalled_upload_over_a_socket_is_answered_408(journal: Journal) -> None:
    receiver = Receiver(journal, [SECRET], body_timeout=0.3, now=lambda: NOW)
    req = signed()
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(req.body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    with (
        serve(receiver) as url,
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock,
    ):
        sock.sendall(head.encode() + req.body[:10])
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("bad", [None, "sha256=abc", " ", "t=1,v1=00"])
async def test_an_unusable_first_signature_header_does_not_hide_a_good_256_one(
    receiver: Receiver, bad: str | None
) -> None:
    good = signed(signature_header="X-Kirim-Signature-256")
    headers = dict(good.headers) | ({} if bad is None else {"X-Kirim-Signature": bad})
    resp = await post(receiver, testing.SignedRequest(good.body, headers))
    assert resp.status_code == 200


async def test_the_signature_time_comes_from_the_header_that_verified(
    receiver: Receiver, journal: Journal
) -> None:
    body = testing.meta_status()
    del body["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"]  # no time of its own
    good = signed(body, signature_header="X-Kirim-Signature-256")
    headers = {**good.headers, "X-Kirim-Signature": "t=946684800,v1=" + "0" * 64}  # 2000-01-01
    assert (await post(receiver, testing.SignedRequest(good.body, headers))).status_code == 200
    event = lake_after_flush(journal).events().collect().row(0, named=True)
    assert event["time_source"] == "signature"
    assert event["occurred_at"].timestamp() == int(NOW)


async def test_a_quarantined_body_keeps_both_signature_headers(
    receiver: Receiver, journal: Journal
) -> None:
    good = signed(b"not json", signature_header="X-Kirim-Signature-256")
    headers = {**good.headers, "X-Kirim-Signature": "t=946684800,v1=" + "0" * 64}
    resp = await post(receiver, testing.SignedRequest(good.body, headers))
    assert resp.json()["outcome"] == "quarantined"
    [kept] = (journal.data_dir / "quarantine").rglob("*.json")
    names = set(json.loads(kept.read_text())["headers"])
    assert {"x-kirim-signature", "x-kirim-signature-256"} <= names


async def test_when_both_signature_headers_fail_the_first_ones_reason_is_given(
    receiver: Receiver,
) -> None:
    req = signed()
    stale = testing.signed_request(req.body, SECRET, timestamp=int(NOW) - 301)
    headers = {**req.headers, "X-Kirim-Signature": "v1=abc"}
    headers["X-Kirim-Signature-256"] = stale.headers["X-Kirim-Signature"]
    resp = await post(receiver, testing.SignedRequest(req.body, headers))
    assert (resp.status_code, resp.json()["reason"]) == (401, "malformed")


async def test_a_tolerance_of_0_turns_the_freshness_check_off_visibly(journal: Journal) -> None:
    receiver = Receiver(journal, [SECRET], tolerance=0, now=lambda: NOW)
    assert receiver.tolerance is None  # what collect() reads to warn that the check is off
    old = testing.signed_request(testing.kirim_event(), SECRET, timestamp=int(NOW) - 100_000)
    assert (await post(receiver, old)).status_code == 200


async def test_a_large_body_is_parsed_off_the_event_loop(
    receiver: Receiver, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    parse = receiver_module.parse_delivery

    def watched(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return parse(*args, **kwargs)

    monkeypatch.setattr(receiver_module, "parse_delivery", watched)
    receiver.max_body = 1024 * 1024
    small = signed()
    large = signed(testing.kirim_event(data={"blob": "x" * receiver_module.PARSE_IN_THREAD_BYTES}))
    assert [(await post(receiver, r)).status_code for r in (small, large)] == [200, 200]
    assert threads[0] == threading.current_thread().name
    assert threads[1] != threading.current_thread().name
    assert lake_after_flush(journal).events().collect().height == 2


async def test_other_methods_and_paths(receiver: Receiver, journal: Journal) -> None:
    req = signed()
    async with client(receiver) as c:
        assert (await c.get(PATH)).status_code == 405
        assert (await c.put(PATH, content=req.body, headers=req.headers)).status_code == 405
        assert (
            await c.post("/webhooks/other", content=req.body, headers=req.headers)
        ).status_code == 404
        assert (await c.get("/")).status_code == 404
    assert lake_after_flush(journal).events().collect().height == 0


async def test_a_wrong_secret_is_hinted_once_a_minute(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Every delivery signed with another secret: one "rejected ... (mismatch)" line each, and
    # nothing said that Kirim takes a 401 as final, nor how to get the events back.
    caplog.set_level(logging.WARNING, logger="kirim_events.receiver")
    for _ in range(3):
        assert (await post(receiver, signed(secret="whsec_wrong"))).status_code == 401
    lines = [r.getMessage() for r in caplog.records]
    assert sum("(mismatch): 401" in line for line in lines) == 3
    hints = [line for line in lines if "KIRIM_WEBHOOK_SECRET" in line]
    assert len(hints) == 1
    assert "2 secret(s)" in hints[0]
    assert "kirim-events reconcile" in hints[0]
    assert SECRET not in caplog.text


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_a_flood_of_rejections_is_logged_within_a_budget(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """Every rejected request logged a warning, with no limit: a flood of made-up requests
    flooded the log. The first of a reason is still logged at once (secret rotation is
    debugged by it); then at most REJECT_LOG_BURST a reason in REJECT_LOG_EVERY seconds,
    and how many were held back is said."""
    clock = [NOW]
    receiver = Receiver(journal, SECRET, now=lambda: clock[0])
    burst, every = receiver_module.REJECT_LOG_BURST, receiver_module.REJECT_LOG_EVERY
    caplog.set_level(logging.WARNING, logger="kirim_events.receiver")
    wrong = signed(secret="whsec_wrong")
    stale = testing.signed_request(testing.kirim_event(), SECRET, timestamp=int(NOW) - 301)
    async with client(receiver) as c:
        assert (await c.post(PATH, content=wrong.body, headers=wrong.headers)).status_code == 401
        assert _warnings(caplog)[0].endswith("(mismatch): 401")  # the first, at once
        for _ in range(burst + 14):
            await c.post(PATH, content=wrong.body, headers=wrong.headers)
        assert (await c.post(PATH, content=stale.body, headers=stale.headers)).status_code == 401
        metrics = (await c.get("/metrics")).text
    assert f'kirim_events_rejected_total{{reason="mismatch"}} {burst + 15}' in metrics
    lines = _warnings(caplog)
    assert sum(m.endswith("(mismatch): 401") for m in lines) == burst
    assert sum(m.endswith("(stale): 401") for m in lines) == 1  # its own budget
    assert [m for m in lines if m.startswith("more than")] == [
        f"more than {burst} rejected deliveries (mismatch) within {every:.0f} s: the next"
        " ones in that time are only counted"
    ]
    # the next interval: its first line comes after the count of those held back
    clock[0] += every
    caplog.clear()
    async with client(receiver) as c:
        await c.post(PATH, content=wrong.body, headers=wrong.headers)
    held, line = _warnings(caplog)[:2]
    assert held == f"rejected deliveries (mismatch) not logged in the last {every:.0f} s: 15"
    assert line.startswith("rejected delivery")
    assert line.endswith("(mismatch): 401")
    assert "whsec_" not in caplog.text  # no secret in any line


async def test_rejections_held_back_are_said_when_their_interval_ends(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    # a flood that stops: the count comes when the interval ends (the collector asks at
    # each flush tick), not only with the next rejection, maybe days later
    clock = [NOW]
    receiver = Receiver(journal, SECRET, now=lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="kirim_events.receiver")
    async with client(receiver) as c:
        for _ in range(receiver_module.REJECT_LOG_BURST + 3):
            assert (await c.post(PATH, content=b"{}")).status_code == 401  # no signature
    caplog.clear()
    clock[0] += receiver_module.REJECT_LOG_EVERY - 1
    receiver.log_held()
    assert _warnings(caplog) == []  # not yet over
    clock[0] += 1
    receiver.log_held()
    receiver.log_held()  # said once
    assert _warnings(caplog) == ["rejected deliveries (missing) not logged in the last 60 s: 3"]


async def test_busy_answers_are_logged_within_a_budget(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    # large bodies with made-up signatures past the memory budget: one warning each
    receiver = Receiver(journal, [SECRET], max_body=1 << 20, now=lambda: NOW)
    receiver.max_buffered = 0
    caplog.set_level(logging.WARNING, logger="kirim_events.receiver")
    big = b"x" * (receiver_module.FREE_BODY_BYTES + 1)
    async with client(receiver) as c:
        for _ in range(receiver_module.REJECT_LOG_BURST + 5):
            response = await c.post(PATH, content=big, headers={"X-Kirim-Signature": MADE_UP})
            assert response.status_code == 503
    lines = _warnings(caplog)
    assert sum(m.endswith("answering 503") for m in lines) == receiver_module.REJECT_LOG_BURST
    assert len(lines) == receiver_module.REJECT_LOG_BURST + 1  # and one: the next are counted
    receiver.log_held(final=True)  # the collector stops
    assert _warnings(caplog)[-1] == "'busy' 503 answers not logged in the last 0 s: 5"


async def test_a_post_to_another_path_is_counted_and_logged_once_a_minute(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # A subscription URL with the wrong path: Kirim's POSTs got 404 with no log line and no
    # counter, until Kirim disabled the subscription.
    req = signed()
    caplog.set_level(logging.WARNING, logger="kirim_events.receiver")
    async with client(receiver) as c:
        for path in ("/webhooks", "/webhook/kirim%1B[2J", "/webhooks"):
            response = await c.post(path, content=req.body, headers=req.headers)
            assert response.status_code == 404
        assert (await c.get(PATH)).status_code == 405
        assert (await c.get("/favicon.ico")).status_code == 404
        metrics = (await c.get("/metrics")).text
    assert "kirim_events_unrouted_total 5" in metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once a minute
    assert "POST to /webhooks answered 404" in warnings[0]
    assert PATH in warnings[0]
    hint = receiver._unrouted_hint
    assert hint.last is not None
    hint.last -= receiver_module.UNROUTED_LOG_EVERY  # a minute later
    async with client(receiver) as c:
        await c.post("/webhook/kirim%1B[2J", content=req.body, headers=req.headers)
    later = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][1:]
    assert len(later) == 1
    assert "\x1b" not in later[0]  # the path is escaped


@pytest.mark.parametrize(
    "body", [b"not json", b"\xff\xfe", b"[1,2]", b'{"hello":"world"}', b'{"type":"Bad","data":{}}']
)
async def test_signed_unparseable_is_quarantined_byte_exact(
    receiver: Receiver, journal: Journal, body: bytes
) -> None:
    resp = await post(receiver, signed(body))
    assert resp.status_code == 200
    assert resp.json()["outcome"] == "quarantined"
    kept = list((journal.data_dir / "quarantine").rglob("*.body"))
    assert [p.read_bytes() for p in kept] == [body]
    lake = lake_after_flush(journal)
    assert lake.events().collect().height == 0
    assert lake.deliveries().collect()["outcome"].to_list() == ["quarantined"]


async def test_retries_of_an_unparseable_delivery_are_kept_once_and_counted(
    journal: Journal,
) -> None:
    """Kirim retries a delivery up to 8 times (its 2xx lost, or a 503): each retry of a
    signed unparseable body was kept again, one more copy each. Now one copy per body and
    delivery, its ``count`` written before each 200; another bad body is kept too."""
    clock = [NOW]
    receiver = Receiver(journal, SECRET, now=lambda: clock[0])
    kept = journal.data_dir / "quarantine"
    async with client(receiver) as c:
        for attempt in range(1, 4):
            req = testing.signed_request(b"{not json", SECRET, timestamp=int(clock[0]),
                                         delivery_id="wbd_BAD", event_id="evt_BAD",
                                         attempt=attempt)  # fmt: skip
            resp = await c.post(PATH, content=req.body, headers=req.headers)
            assert (resp.status_code, resp.json()["outcome"]) == (200, "quarantined")
            paths = list(kept.rglob("*.body"))  # already there when the 200 is sent
            assert len(paths) == 1
            meta = json.loads(paths[0].with_suffix(".json").read_text())
            assert (meta.get("count"), meta["headers"]["x-kirim-attempt"]) == (attempt, "1")
            clock[0] += 10 * attempt  # Kirim's schedule: 10 s, then 30 s
        other = signed(b"[not, json]", delivery_id="wbd_OTHER")
        assert (await post(receiver, other)).status_code == 200
    assert sorted(p.read_bytes() for p in kept.rglob("*.body")) == [b"[not, json]", b"{not json"]
    # the lake still has a receipt per attempt, as for any delivery
    outcomes = lake_after_flush(journal).deliveries().collect()["outcome"].to_list()
    assert outcomes == ["quarantined"] * 4


async def test_retries_of_an_unparseable_delivery_at_once_are_kept_once(journal: Journal) -> None:
    # a retry may come while the first attempt is still being written (its 2xx too late)
    receiver = Receiver(journal, SECRET, now=lambda: NOW)
    reqs = [signed(b"{not json", delivery_id="wbd_BAD", attempt=n) for n in range(1, 9)]
    async with client(receiver) as c:
        answers = await asyncio.gather(
            *(c.post(PATH, content=r.body, headers=r.headers) for r in reqs)
        )
    assert [a.status_code for a in answers] == [200] * 8
    (path,) = (journal.data_dir / "quarantine").rglob("*.body")
    assert json.loads(path.with_suffix(".json").read_text())["count"] == 8


class _DiskFull:
    """atomicfile's writes: the ``fail``-th one from now (1: the first) writes half its
    bytes, then raises ENOSPC, as a full disk does; the others write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: int) -> None:
        self.calls, self.fail = 0, fail
        self.real = atomicfile._write_all
        monkeypatch.setattr(atomicfile, "_write_all", self)

    def __call__(self, fd: int, data: bytes | str) -> None:
        self.calls += 1
        if self.calls != self.fail:
            return self.real(fd, data)
        raw = data.encode() if isinstance(data, str) else data
        os.write(fd, raw[: len(raw) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("full_at", ["body", "description", "count of a retry"])
async def test_a_full_disk_while_quarantining_is_a_503_and_a_retry_keeps_the_body(
    journal: Journal, monkeypatch: pytest.MonkeyPatch, full_at: str
) -> None:
    """ENOSPC while a body is kept: never a 200 without its copy and description on disk,
    no part of a file left, a count kept before it untouched; Kirim's retry, once there is
    room again, is kept (and counted) as any other."""
    receiver = Receiver(journal, SECRET, now=lambda: NOW)
    kept = journal.data_dir / "quarantine"

    def req(attempt: int) -> testing.SignedRequest:
        return signed(b"{not json", delivery_id="wbd_BAD", event_id="evt_BAD", attempt=attempt)

    async with client(receiver) as c:

        async def send(attempt: int) -> int:
            r = req(attempt)
            return (await c.post(PATH, content=r.body, headers=r.headers)).status_code

        attempt = 1
        if full_at == "count of a retry":
            assert await send(attempt) == 200
            attempt += 1
        full = _DiskFull(monkeypatch, fail=2 if full_at == "description" else 1)
        assert await send(attempt) == 503
        assert full.calls == full.fail  # it did fail there
        files = sorted(p.name for p in kept.rglob("*") if p.is_file())
        assert not [f for f in files if f.endswith(".tmp")]  # no part of a file left
        if full_at == "body":
            assert files == []
        else:
            (body,) = kept.rglob("*.body")
            assert body.read_bytes() == b"{not json"
        if full_at == "count of a retry":
            assert json.loads(next(kept.rglob("*.json")).read_text())["count"] == 1
        monkeypatch.setattr(atomicfile, "_write_all", full.real)  # room again
        assert await send(attempt + 1) == 200
    (body,) = kept.rglob("*.body")
    assert body.read_bytes() == b"{not json"
    meta = json.loads(body.with_suffix(".json").read_text())
    assert meta["count"] == (2 if full_at == "count of a retry" else 1)
    # the 503 left no receipt: one per 200
    outcomes = lake_after_flush(journal).deliveries().collect()["outcome"].to_list()
    assert outcomes == ["quarantined"] * meta["count"]


async def test_an_id_with_half_a_utf16_pair_is_quarantined_not_a_503(
    receiver: Receiver, journal: Journal
) -> None:
    # Valid JSON, yet "\\ud800" is no Unicode text: the journal insert failed (503 for ever,
    # and for every delivery committed with it). A pair (an emoji) is fine.
    bad = testing.encode(testing.kirim_event(event_id="evt_X")).replace(b"evt_X", rb"evt_\ud800")
    emoji = testing.encode(testing.kirim_event(event_id="evt_Y")).replace(
        b"evt_Y", rb"evt_\ud83d\ude00"
    )
    async with client(receiver) as c:
        answers = await asyncio.gather(
            *(c.post(PATH, content=r.body, headers=r.headers) for r in map(signed, [bad, emoji]))
        )
    assert [(a.status_code, a.json()["outcome"]) for a in answers] == [
        (200, "quarantined"),
        (200, "new"),
    ]
    assert lake_after_flush(journal).events().collect()["event_id"].to_list() == ["evt_\U0001f600"]


async def test_storage_failure_is_503_so_kirim_retries(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    app = Receiver(journal, SECRET, now=lambda: NOW)
    journal.close()  # storage gone
    assert (await post(app, signed())).status_code == 503
    # The quarantine file is written, but its receipt cannot be: still a storage failure.
    assert (await post(app, signed(b"not json"))).status_code == 503
    async with client(app) as c:
        assert (await c.get("/healthz")).status_code == 503


@pytest.mark.parametrize("gone", ["journal file", "data folder"])
async def test_a_journal_deleted_under_a_running_receiver_is_a_503_not_a_lost_200(
    tmp_path: Path, gone: str
) -> None:
    """Deleted under a running collector, the journal's open connection kept committing
    (with fsync) into the unlinked file: 200 for events no flush could read again, and the
    flush read a new, empty journal that it made at the path."""
    journal = Journal(tmp_path / "data")
    app = Receiver(journal, SECRET, now=lambda: NOW)
    assert (await post(app, signed(testing.kirim_event(event_id="evt_kept")))).status_code == 200
    journal.flush(Lake(journal.data_dir))
    shutil.rmtree(journal.path.parent if gone == "journal file" else journal.data_dir)
    resp = await post(app, signed(testing.kirim_event(event_id="evt_refused")))
    assert resp.status_code == 503  # Kirim retries; no acknowledgement of a lost event
    async with client(app) as c:
        assert (await c.get("/healthz")).status_code == 503
    with pytest.raises(StorageError, match="was deleted, moved or replaced while open"):
        journal.flush(Lake(journal.data_dir))
    assert not journal.path.exists()  # no new, empty journal made by the reader
    journal.close()
    # a new collector starts a new journal there; the refused event comes again and is new
    with Journal(tmp_path / "data") as fresh:
        again = Receiver(fresh, SECRET, now=lambda: NOW)
        assert (await post(again, signed(testing.kirim_event(event_id="evt_refused")))).json()[
            "outcome"
        ] == "new"


async def test_two_hundred_concurrent_deliveries_of_one_event_give_one_row(
    receiver: Receiver, journal: Journal
) -> None:
    body = testing.encode(testing.meta_status("delivered"))
    reqs = [signed(body, attempt=1 + i % 8) for i in range(200)]
    async with client(receiver) as c:
        resps = await asyncio.gather(
            *(c.post(PATH, content=r.body, headers=r.headers) for r in reqs)
        )
    assert {r.status_code for r in resps} == {200}
    assert sorted(r.json()["outcome"] for r in resps) == ["duplicate"] * 199 + ["new"]
    lake = lake_after_flush(journal)
    assert lake.events().collect().height == 1
    assert lake.deliveries().collect().height == 200


def test_every_kind_of_answer_over_a_loopback_socket(receiver: Receiver, journal: Journal) -> None:
    # The cases above go through httpx.ASGITransport; here the same receiver is served by
    # uvicorn on 127.0.0.1 and every kind of answer is asked for over a socket.
    req, garbage = signed(), signed(b"not json")
    big = signed(testing.kirim_event(data={"blob": "x" * 70_000}))

    def chunks() -> Iterator[bytes]:  # no Content-Length: a chunked upload past the limit
        for _ in range(100):
            yield b"x" * 8192

    with serve(receiver) as url, httpx.Client(base_url=url) as c:
        answers = {
            "new": c.post(PATH, content=req.body, headers=req.headers),
            "duplicate": c.post(PATH, content=req.body, headers=req.headers),
            **{
                case: c.post(PATH, content=bad.body, headers=bad.headers)
                for case, make in BAD_SIGNATURES.items()
                for bad in [make(signed())]
            },
            "too large": c.post(PATH, content=big.body, headers=big.headers),
            "too large, chunked": c.post(
                PATH, content=chunks(), headers={"X-Kirim-Signature": MADE_UP}
            ),
            "quarantined": c.post(PATH, content=garbage.body, headers=garbage.headers),
            "other method": c.get(PATH),
            "other path": c.post("/webhooks/other", content=req.body, headers=req.headers),
        }
        health = c.get("/healthz").json()
        metrics = c.get("/metrics").text
    outcome = {k: (r.status_code, r.json().get("outcome") or r.json().get("reason"))
               for k, r in answers.items() if k not in ("other method", "other path")}  # fmt: skip
    reasons = {case: (401, {"tampered": "mismatch"}.get(case, case.split("-")[0]))
               for case in BAD_SIGNATURES}  # fmt: skip
    assert outcome == {
        "new": (200, "new"),
        "duplicate": (200, "duplicate"),
        **reasons,
        "too large": (413, "too_large"),
        "too large, chunked": (413, "too_large"),
        "quarantined": (200, "quarantined"),
    }
    assert (answers["other method"].status_code, answers["other path"].status_code) == (405, 404)
    assert health.pop("disk_free") > 0
    assert health == {"status": "ok", "journal_backlog": 1}
    assert f"kirim_events_received_total {len(outcome)}" in metrics
    lake = lake_after_flush(journal)
    assert lake.events().collect()["event_key"].to_list() == [
        r.event_key for r in ke.parse_delivery(req.body)
    ]


async def test_healthz_and_metrics(receiver: Receiver) -> None:
    await post(receiver, signed())
    await post(receiver, _header(signed(), None))
    async with client(receiver) as c:
        health = await c.get("/healthz")
        metrics = (await c.get("/metrics")).text
    assert health.status_code == 200
    body = health.json()
    assert body.pop("disk_free") > 0  # the free bytes where the journal is
    assert body == {"status": "ok", "journal_backlog": 1}
    assert "kirim_events_received_total 2" in metrics
    assert 'kirim_events_rejected_total{reason="missing"} 1' in metrics
    assert "kirim_events_journal_backlog 1" in metrics


async def test_healthz_is_503_on_a_nearly_full_disk_while_webhooks_still_land(
    journal: Journal,
) -> None:
    # A tiny test write still succeeds on a nearly full disk, so /healthz said ok until the
    # webhooks themselves failed. Here the real disk is "nearly full" for a huge threshold.
    free = shutil.disk_usage(journal.data_dir).free
    receiver = Receiver(journal, [SECRET], now=lambda: NOW, min_free=free * 2)
    async with client(receiver) as c:
        health = await c.get("/healthz")
    assert health.status_code == 503
    assert health.json()["journal"] == "disk nearly full"
    assert 0 < health.json()["disk_free"] < free * 2
    assert (await post(receiver, signed())).status_code == 200  # only a warning sign
    default = Receiver(journal, [SECRET], max_body=100 << 20)
    assert (default.min_free, Receiver(journal, [SECRET]).min_free) == (400 << 20, 64 << 20)


async def test_a_replayed_id_less_body_under_another_event_id_is_a_copy(
    receiver: Receiver, journal: Journal
) -> None:
    # A body without an id of its own is keyed by the unsigned X-Kirim-Event-Id header: a
    # captured delivery sent again, within the tolerance, with that header changed (or
    # dropped, or padded with what the parser trims, or set to a word of the body) and the
    # signature header rewritten (spacing, another v1) had become a second event.
    body = {k: v for k, v in testing.kirim_event().items() if k != "id"}
    body["data"]["note"] = "evt_first is mentioned in the body"  # the real id, in the body
    first = signed(body, event_id="evt_first")
    t, v1 = first.headers["X-Kirim-Signature"].split(",")
    base = {k: v for k, v in first.headers.items() if k != "X-Kirim-Event-Id"}
    forged: list[dict[str, Any]] = [
        {**base, "X-Kirim-Event-Id": "evt_forged"},
        {**base, "X-Kirim-Event-Id": "evt_forged2", "X-Kirim-Signature": f" {v1} , {t},v1=00"},
        {**base, "X-Kirim-Event-Id": b"evt_forged3\xa0"},  # latin-1 NBSP, trimmed by parsing
        {**base, "X-Kirim-Event-Id": "contact.updated"},  # a word of the body
        {**base, "X-Kirim-Event-Id": ""},
        base,  # no event id at all: the key would be the body's hash
    ]
    assert (await post(receiver, first)).json()["outcome"] == "new"
    for headers in forged:
        resp = await post(receiver, testing.SignedRequest(first.body, headers))
        assert (resp.status_code, resp.json()["outcome"]) == (200, "duplicate"), headers
    meta_other = testing.meta_envelope({"account_update": {"x": 1}})  # no messages, statuses
    other = signed(meta_other, event_id="evt_meta")
    assert (await post(receiver, other)).json()["outcome"] == "new"
    again = testing.SignedRequest(other.body, {**other.headers, "X-Kirim-Event-Id": "entry"})
    assert (await post(receiver, again)).json()["outcome"] == "duplicate"
    # Kirim's own retry of the first event (a new t) is a copy as before; the same body at
    # another instant under another id is another event
    retry = testing.signed_request(body, SECRET, timestamp=int(NOW) + 60, event_id="evt_first")
    assert (await post(receiver, retry)).json()["outcome"] == "duplicate"
    later = testing.signed_request(body, SECRET, timestamp=int(NOW) + 61, event_id="evt_second")
    assert (await post(receiver, later)).json()["outcome"] == "new"
    events = lake_after_flush(journal).events().collect()
    assert sorted(events["event_key"]) == ["evt_first", "evt_meta", "evt_second"]


async def test_an_id_less_body_first_seen_without_an_event_id_keeps_its_hash_key(
    receiver: Receiver, journal: Journal
) -> None:
    body = {k: v for k, v in testing.kirim_event().items() if k != "id"}
    first = signed(body, event_id="evt_later")
    bare = {k: v for k, v in first.headers.items() if k != "X-Kirim-Event-Id"}
    assert (await post(receiver, testing.SignedRequest(first.body, bare))).json()["new"] == 1
    resp = await post(receiver, first)  # the same signed body, now with an event id
    assert resp.json()["outcome"] == "duplicate"
    (key,) = lake_after_flush(journal).events().collect()["event_key"]
    assert key.startswith("sha256:")


async def test_bodies_with_their_own_id_are_not_remembered_for_replays(
    receiver: Receiver, journal: Journal
) -> None:
    reqs = [signed(testing.kirim_event()), signed(testing.meta_status())]
    for req in reqs:
        assert (await post(receiver, req)).json()["outcome"] == "new"
        forged = testing.SignedRequest(req.body, {**req.headers, "X-Kirim-Event-Id": "evt_z"})
        assert (await post(receiver, forged)).json()["outcome"] == "duplicate"
    assert len(receiver._replays) == 0  # only header-keyed deliveries take memory


def test_the_parser_says_which_keys_come_from_the_header() -> None:
    own = testing.encode(testing.kirim_event(event_id="evt_own"))
    idless = testing.encode({k: v for k, v in testing.kirim_event().items() if k != "id"})
    meta_other = testing.encode(testing.meta_envelope({"account_update": {}}))
    legacy = testing.encode({"event": "contact.updated", "data": {"contact": {"id": "c1"}}})
    status = testing.encode(testing.meta_status())
    headers = {"X-Kirim-Event-Id": "evt_h"}
    keyed = {
        name: ke.parse_delivery(body, headers).header_keyed
        for name, body in [
            ("own", own), ("idless", idless), ("meta_other", meta_other), ("legacy", legacy),
            ("status", status),
        ]
    }  # fmt: skip
    assert keyed == {
        "own": False, "idless": True, "meta_other": True, "legacy": True, "status": False
    }  # fmt: skip


def test_replay_memory_forgets_after_its_window() -> None:
    replays = HeaderKeyedReplays(window=100)
    header = testing.signed_request(b"{}", SECRET, timestamp=5).headers["X-Kirim-Signature"]
    assert replays.first_id(b"{}", header, "a", now=0) == "a"
    assert replays.first_id(b"{}", header, "b", now=99) == "a"
    assert replays.first_id(b"{}", header, None, now=99) == "a"
    assert replays.first_id(b"{ }", header, None, now=99) is None  # another body
    assert replays.first_id(b"{}", header, "d", now=100.5) == "d"  # forgotten, then new
    assert len(replays) == 2  # the first entry is gone; "{ }" and the new one stay


async def test_logs_hold_neither_secrets_nor_bodies(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kirim_events")
    marker = "SECRET-CUSTOMER-TEXT"
    for req in (
        signed(testing.meta_message(marker)),
        signed(b"unparseable " + marker.encode()),
        signed(testing.meta_message(marker), secret="whsec_wrong"),
    ):
        await post(receiver, req)
    assert caplog.records  # it did log
    assert marker not in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in repr(receiver)


def test_a_receiver_needs_a_secret(journal: Journal) -> None:
    with pytest.raises(ValueError, match="the receiver needs at least one webhook secret"):
        Receiver(journal, [])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_shaped = st.fixed_dictionaries(
    {},
    optional={
        "object": st.sampled_from(["whatsapp_business_account", "page"]),
        "entry": _json,
        "type": st.one_of(st.sampled_from(["message.status", "Bad.Type", "a.b"]), _json),
        "event": _json,
        "id": _json,
        "created_at": _json,
        "data": _json,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(st.binary(max_size=200), _json.map(testing.encode), _shaped.map(testing.encode))
)
async def test_no_signed_or_unsigned_input_gets_a_5xx(receiver: Receiver, body: bytes) -> None:
    async with client(receiver) as c:
        signed_resp = await c.post(PATH, content=body, headers=signed(body).headers)
        unsigned = await c.post(PATH, content=body, headers={"X-Kirim-Signature": MADE_UP})
    assert signed_resp.status_code == 200
    assert signed_resp.json()["outcome"] in {"new", "duplicate", "quarantined"}
    assert unsigned.status_code == 401


class RawPost:
    """One POST straight through the ASGI interface, its body in the given chunks, each
    handed over only when the app asks for it (``release`` lets a chunk wait)."""

    def __init__(self, headers: dict[str, str], chunks: list[bytes]) -> None:
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.chunks = chunks
        self.asked = 0  # chunks the app read
        self.release: dict[int, asyncio.Event] = {}
        self.sent: list[dict[str, Any]] = []

    async def run(self, app: Receiver) -> tuple[int, dict[bytes, bytes]]:
        scope = {"type": "http", "method": "POST", "path": PATH, "headers": self.headers,
                 "query_string": b"", "http_version": "1.1"}  # fmt: skip

        async def receive() -> dict[str, Any]:
            index = self.asked
            self.asked += 1
            if index in self.release:
                await self.release[index].wait()
            more = index + 1 < len(self.chunks)
            return {"type": "http.request", "body": self.chunks[index], "more_body": more}

        async def send(message: dict[str, Any]) -> None:
            self.sent.append(message)

        await app(scope, receive, send)
        start = self.sent[0]
        return start["status"], dict(start["headers"])


async def test_a_request_that_cannot_verify_is_refused_before_its_body_is_read(
    receiver: Receiver,
) -> None:
    """Anyone can send 4 MiB bodies: with no usable signature header none of it is read."""
    big = [b"x" * 65536] * 16
    stale = MADE_UP.replace(f"t={int(NOW)}", f"t={int(NOW) - 301}")
    for headers, reason in (
        ({}, "missing"),
        ({"X-Kirim-Signature": "v1=abc"}, "malformed"),
        ({"X-Kirim-Signature": stale}, "stale"),
        ({"X-Kirim-Signature": stale, "X-Kirim-Signature-256": "t=x"}, "stale"),
    ):
        raw = RawPost(headers, big)
        status, answer_headers = await raw.run(receiver)
        assert (status, raw.asked) == (401, 0)
        assert answer_headers[b"connection"] == b"close"  # the unread body is not waited on
        assert json.loads(raw.sent[1]["body"])["reason"] == reason
    # one usable header of the two is enough to read the body (and then verify it)
    req = signed()
    headers = {**req.headers, "X-Kirim-Signature": "t=x"}
    headers["X-Kirim-Signature-256"] = req.headers["X-Kirim-Signature"]
    raw = RawPost(headers, [req.body])
    assert (await raw.run(receiver))[0] == 200


async def test_bodies_being_received_share_a_memory_budget(journal: Journal) -> None:
    """Past the first 64 KiB, bodies share a budget: clients sending large bodies with
    made-up signatures neither take gigabytes nor turn Kirim's few-kB deliveries away."""
    free = receiver_module.FREE_BODY_BYTES
    receiver = Receiver(journal, [SECRET], max_body=1 << 20, now=lambda: NOW)
    receiver.max_buffered = 1000
    req = signed()
    fake = {"X-Kirim-Signature": MADE_UP}  # fresh and well formed: the body is read
    slow = RawPost(fake, [b"a" * (free + 600), b"b" * 100])
    slow.release[1] = asyncio.Event()
    first = asyncio.ensure_future(slow.run(receiver))
    for _ in range(1000):
        if slow.asked == 2:
            break
        await asyncio.sleep(0)
    assert slow.asked == 2, (slow.asked, slow.sent)
    assert receiver._buffered == 600
    # 600 bytes held: another large body does not fit; a small signed one still does
    over = RawPost(fake, [b"c" * (free + 500)])
    status, answer_headers = await over.run(receiver)
    assert status == 503
    assert answer_headers[b"connection"] == b"close"
    assert (await RawPost(req.headers, [req.body]).run(receiver))[0] == 200
    slow.release[1].set()
    assert (await first)[0] == 401
    assert receiver._buffered == 0  # every byte counted is given back
    assert (await RawPost(fake, [b"c" * (free + 500)]).run(receiver))[0] == 401  # it fits again
    assert receiver._buffered == 0


@pytest.mark.parametrize("path", ["/a b", "/../x", "/hooks/./kirim", "/50%", "/x?y", "/x#y"])
def test_a_webhook_path_no_url_could_name_is_refused(path: str) -> None:
    # "--path '/a b'" started, announcing http://127.0.0.1:8000/a b, which no subscription
    # URL can name; "/../x" is resolved away by clients before it is sent
    with pytest.raises(ke.ConfigError, match="is no URL path Kirim could post to"):
        receiver_module.webhook_path(path)


def test_a_blank_webhook_path_is_refused_not_taken_for_the_root() -> None:
    # "--path ''" (a --path "$WEBHOOK_PATH" with the variable unset) listened on "/": every
    # POST to the server was taken for a webhook, with no word of it
    with pytest.raises(ke.ConfigError, match="webhook path is blank"):
        receiver_module.webhook_path("")


@pytest.mark.parametrize(
    ("path", "kept"),
    [("/webhooks/kirim", "/webhooks/kirim"), ("hooks/", "/hooks"), ("/", "/"),
     ("/v1/kirim-events_2~x", "/v1/kirim-events_2~x")],
)  # fmt: skip
def test_webhook_paths_are_kept_with_one_leading_slash(path: str, kept: str) -> None:
    assert receiver_module.webhook_path(path) == kept


async def test_a_receipt_without_event_headers_names_the_event_of_the_body(
    receiver: Receiver, journal: Journal
) -> None:
    """The deliveries row of a POST without X-Kirim-Event-Id / X-Kirim-Event names the event
    its body held, so health reports can attribute the delivery."""
    req = signed(testing.kirim_event("contact.updated", event_id="evt_body_only"))
    headers = {
        k: v for k, v in req.headers.items() if k not in ("X-Kirim-Event-Id", "X-Kirim-Event")
    }
    resp = await post(receiver, testing.SignedRequest(req.body, headers))
    assert (resp.status_code, resp.json()["outcome"]) == (200, "new")
    row = lake_after_flush(journal).deliveries().collect()
    assert row.select("event_id", "event_type").rows() == [("evt_body_only", "contact.updated")]
