"""The receiver: routing and counting cases found by mutation testing (real HTTP, in
process). Leaves quarantine, rejection logging and signature hex alone."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import virtualtime
from test_receiver import NOW, OLD_SECRET, PATH, SECRET, client, post, signed

from kirim_events import testing
from kirim_events.journal import Journal
from kirim_events.lake import Lake
from kirim_events.receiver import Receiver

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


async def test_the_webhook_path_with_a_trailing_slash_is_the_webhook_path(
    receiver: Receiver,
) -> None:
    req = signed()
    async with client(receiver) as c:
        resp = await c.post(PATH + "/", content=req.body, headers=req.headers)
    assert (resp.status_code, resp.json()["outcome"]) == (200, "new")
    assert receiver.metrics.unrouted == 0


def test_a_content_length_one_above_the_limit_is_413_before_the_body_comes(
    journal: Journal,
) -> None:
    # on virtual time: a body that never comes would hold the request until its 408
    receiver = Receiver(journal, [SECRET], max_body=1000, now=lambda: NOW)
    req = signed()

    async def never() -> AsyncIterator[bytes]:
        await asyncio.sleep(3600)
        yield b"x" * 1001

    async def post() -> httpx.Response:
        headers = {**req.headers, "Content-Length": "1001"}
        async with client(receiver) as c:
            return await c.post(PATH, content=never(), headers=headers)

    resp = virtualtime.run(post())
    assert (resp.status_code, resp.json()["reason"]) == (413, "too_large")


async def test_a_body_of_exactly_the_limit_is_accepted(journal: Journal) -> None:
    body = json.dumps(testing.kirim_event()).encode()
    receiver = Receiver(journal, [SECRET], max_body=len(body) + 100, now=lambda: NOW)
    exact = body + b" " * 100  # JSON allows the blanks
    resp = await post(receiver, signed(exact))
    assert (resp.status_code, resp.json()["outcome"]) == (200, "new")


async def test_a_replay_minutes_later_under_another_event_id_is_still_a_copy(
    journal: Journal,
) -> None:
    # the signature is fresh for the tolerance (300 s): the replay memory must last as long
    clock = [NOW]
    receiver = Receiver(journal, [SECRET], now=lambda: clock[0])
    body = {k: v for k, v in testing.kirim_event().items() if k != "id"}
    first = signed(body, event_id="evt_first")
    assert (await post(receiver, first)).json()["outcome"] == "new"
    clock[0] = NOW + 200
    replay = testing.SignedRequest(first.body, {**first.headers, "X-Kirim-Event-Id": "evt_other"})
    assert (await post(receiver, replay)).json()["outcome"] == "duplicate"


def test_the_memory_budget_holds_four_of_the_largest_bodies(journal: Journal) -> None:
    receiver = Receiver(journal, [SECRET], max_body=32 << 20)
    assert receiver.max_buffered == 128 << 20


async def test_a_client_that_disconnects_mid_body_leaves_nothing_behind(
    receiver: Receiver, journal: Journal
) -> None:
    req = signed()
    messages = iter(
        [
            {"type": "http.request", "body": req.body[:10], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in req.headers.items()]
    scope = {"type": "http", "method": "POST", "path": PATH, "headers": headers}
    await receiver(scope, receive, send)
    assert sent[0]["status"] == 400
    with sqlite3.connect(journal.path) as conn:
        assert conn.execute("SELECT count(*) FROM receipts").fetchone() == (0,)


async def test_new_events_and_duplicates_are_counted_apart(receiver: Receiver) -> None:
    req = signed()
    await post(receiver, req)
    await post(receiver, req)
    assert (receiver.metrics.events_new, receiver.metrics.duplicates) == (1, 1)


async def test_a_journal_that_cannot_be_written_counts_a_storage_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    app = Receiver(journal, SECRET, now=lambda: NOW)
    journal.close()
    assert (await post(app, signed())).status_code == 503
    assert app.metrics.storage_errors == 1


async def test_a_receipt_counts_the_events_of_its_delivery(
    receiver: Receiver, journal: Journal
) -> None:
    await post(receiver, signed())
    journal.flush(Lake(journal.data_dir))
    assert Lake(journal.data_dir).deliveries().collect()["n_events"].to_list() == [1]


async def test_healthz_answers_head(receiver: Receiver) -> None:
    async with client(receiver) as c:
        assert (await c.head("/healthz")).status_code == 200


async def test_only_a_post_to_another_path_is_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # a browser's GET /favicon.ico says nothing about a subscription's URL
    caplog.set_level(logging.WARNING, logger="kirim_events.receiver")
    async with client(receiver) as c:
        assert (await c.get("/favicon.ico")).status_code == 404
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert receiver.metrics.unrouted == 1
