"""The receiver: routing and counting cases found by mutation testing (real HTTP, in
process). Leaves quarantine, rejection logging and signature hex alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import virtualtime
from test_receiver import NOW, OLD_SECRET, PATH, SECRET, client, post, signed

from kirim_events import testing
from kirim_events.journal import Journal
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
