"""A subscription Kirim disabled (or whose deliveries all fail) is said by every backfill and
reconcile run, against the emulator after a webhook-secret mix-up (docs/cli.md)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback import serve
from test_backfill_kit import ASGI, WEBHOOK_URL, FakeTime, Scope, SyncASGI
from typer.testing import CliRunner

from kirim_events.backfill import backfill
from kirim_events.cli import app
from kirim_events.client import Delivery, KirimClient
from kirim_events.emulator import Emulator, EngineConfig, create_app
from kirim_events.journal import Journal
from kirim_events.lake import Lake
from kirim_events.receiver import Receiver
from kirim_events.reconcile import reconcile
from kirim_events.subscription_health import FAILING_STREAK, FailureStreaks, SubscriptionAlert

SUBS = "GET /v1/webhook_subscriptions"


@pytest.fixture(autouse=True)
def _portals() -> Iterator[None]:
    yield
    SyncASGI.shutdown_all()


@dataclass
class MixUp:
    """An emulator that sent to a collector holding another secret than the subscription's:
    every delivery got a 401, and after 24 in a row the emulator disabled the subscription."""

    home: Path
    emu: Emulator

    def deliver(self, secret: Any, n: int | None = None) -> None:
        """``n`` world events (None: what is queued, replays included) to a collector at
        ``home`` holding ``secret``."""

        async def go(transport: httpx.AsyncBaseTransport) -> None:
            if n is not None:
                await self.emu.send(n, url=WEBHOOK_URL, transport=transport)
                return
            async with httpx.AsyncClient(transport=transport) as client:
                await self.emu.engine.run(None, client=client)

        with Journal(self.home) as journal:
            asyncio.run(go(httpx.ASGITransport(app=Receiver(journal, secret))))
            journal.flush(Lake(self.home))

    @property
    def window(self) -> tuple[datetime, datetime]:
        times = [row.created_at for row in self.emu.store.deliveries]
        lo, hi = (datetime.fromtimestamp(t, UTC) for t in (min(times), max(times)))
        return lo - timedelta(minutes=1), hi + timedelta(minutes=1)

    def api(self, wrap: Any = None) -> tuple[SyncASGI, KirimClient, FakeTime]:
        t = FakeTime(self.window[1].timestamp())
        rest: ASGI = create_app(self.emu.store, api_keys=self.emu.api_keys, clock=t.clock)
        transport = SyncASGI(rest if wrap is None else wrap(rest))
        key = self.emu.api_keys[0]
        client = KirimClient("http://kirim.test", key, transport=transport, sleep=t.sleep,
                             clock=t.clock)  # fmt: skip
        return transport, client, t


@pytest.fixture
def mixup(tmp_path: Path) -> MixUp:
    emu = Emulator(seed=4, engine=EngineConfig(time_compression=1e7))
    m = MixUp(tmp_path / "data", emu)
    m.deliver("whsec_not_the_subscriptions", 40)
    (sub,) = emu.store.subscriptions.values()
    assert sub.status == "disabled"  # the emulator's auto-disable after 24 failures
    return m


def test_reconcile_that_recovers_everything_still_says_the_subscription_is_disabled(
    mixup: MixUp,
) -> None:
    # Every event came with its payload in the history: reconcile imported them all and said
    # nothing of the subscription, which Kirim no longer sent anything to.
    (sub,) = mixup.emu.store.subscriptions
    transport, client, t = mixup.api()
    lo, hi = mixup.window
    for dry_run in (True, False, False):  # the second real run finds nothing missing
        before = transport.paths[SUBS]
        report = reconcile(mixup.home, client=client, since=lo, until=hi, dry_run=dry_run,
                           now=t.clock)  # fmt: skip
        assert report.errors == []
        assert set(report.actions) <= {"import"}
        (alert,) = report.subscriptions
        assert (alert.subscription_id, alert.status, alert.disabled) == (sub, "disabled", True)
        assert alert.failing >= 24
        assert alert.last_code == 401
        assert f"PATCH /v1/webhook_subscriptions/{sub}" in alert.message
        assert '{"status": "active"}' in alert.message
        assert report.subscriptions_unread is None
        assert transport.paths[SUBS] == before + 1  # one request a run, not one a page
    assert report.missing == []
    assert report.history_pages >= 1

    # made active again, and the collector given the right secret: a replay (the newest
    # delivery now) gets its 2xx, and there is nothing more to say
    client.request("PATCH", f"/v1/webhook_subscriptions/{sub}", json_body={"status": "active"})
    client.replay(next(r.id for r in mixup.emu.store.deliveries if r.status == "failed"))
    mixup.deliver(mixup.emu.webhook_secrets)
    transport, client, t = mixup.api()
    lo, hi = mixup.window
    report = reconcile(mixup.home, client=client, since=lo, until=hi, now=t.clock)
    assert report.subscriptions == []


def test_backfill_says_it_too_with_one_request_not_counted_as_the_historys(
    mixup: MixUp,
) -> None:
    (sub,) = mixup.emu.store.subscriptions
    transport, client, t = mixup.api()
    lo, hi = mixup.window
    report = backfill(mixup.home, client=client, since=lo, until=hi, now=t.clock,
                      subscription_id=sub)  # fmt: skip
    (alert,) = report.subscriptions
    assert alert.disabled
    assert (alert.failing >= 24, alert.last_code) == (True, 401)
    assert transport.paths[f"{SUBS}/{sub}"] == 1
    assert report.requests == transport.paths["GET /v1/webhook_deliveries"]


class RefuseSubscriptions:
    """ASGI middleware: the subscription endpoints answer 403 (a key allowed to read the
    history only, or a Kirim without them)."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope["path"].startswith("/v1/webhook_subscriptions"):
            error = b'{"error": {"type": "permission_error", "code": "forbidden", "message": "no"}}'
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": error})
            return
        await self.app(scope, receive, send)


def test_subscriptions_that_cannot_be_read_are_said_in_one_line_and_the_run_goes_on(
    mixup: MixUp,
) -> None:
    transport, client, t = mixup.api(RefuseSubscriptions)
    lo, hi = mixup.window
    report = reconcile(mixup.home, client=client, since=lo, until=hi, now=t.clock)
    assert report.errors == []
    assert report.imported == len(report.missing) > 0
    assert transport.paths[SUBS] == 1
    assert report.subscriptions_unread is not None
    assert report.subscriptions_unread.startswith("cannot read the subscriptions")
    # the failures read from the history are said all the same
    (alert,) = report.subscriptions
    assert (alert.status, alert.disabled, alert.failing >= 24) == (None, False, True)
    assert "is failing" in alert.message


def test_the_cli_warns_on_every_run_without_failing_it(mixup: MixUp) -> None:
    (sub,) = mixup.emu.store.subscriptions
    rest = create_app(mixup.emu.store, api_keys=mixup.emu.api_keys)
    lo, hi = (w.strftime("%Y-%m-%dT%H:%M:%SZ") for w in mixup.window)
    runner = CliRunner()
    with serve(rest) as url:
        env = {**os.environ, "KIRIM_KEY": mixup.emu.api_keys[0].reveal(), "KIRIM_API_URL": url}
        for command in (["reconcile"], ["reconcile"], ["backfill", "--no-progress"]):
            args = [*command, "--data", str(mixup.home), "--since", lo, "--until", hi]
            result = runner.invoke(app, args, env=env, terminal_width=400)
            assert result.exit_code == 0, result.output
            (line,) = [x for x in result.output.splitlines() if x.startswith("warning:")]
            assert f"subscription {sub} is disabled" in line
            assert f'PATCH /v1/webhook_subscriptions/{sub} with {{"status": "active"}}' in line
            assert "HTTP 401" in line
    assert len(Lake(mixup.home).events().collect()) > 0  # the first reconcile imported them


def _row(n: int, seconds: float, status: str, code: int | None = None) -> Delivery:
    at = datetime(2026, 5, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    row = {"id": f"wbd_{n}", "status": status, "subscription_id": "wbs_a",
           "created_at": at.isoformat(), "response_status_code": code}  # fmt: skip
    return Delivery.from_api(row)


def test_only_failures_newer_than_the_newest_success_count_in_any_order() -> None:
    streaks = FailureStreaks()
    rows = [_row(n, n, "dead", 500) for n in range(10)]  # before the success: not counted
    rows.append(_row(10, 10, "succeeded", 200))
    rows += [_row(n, n, "failed", 401) for n in range(11, 11 + FAILING_STREAK)]
    for d in reversed(rows):  # newest first, as Kirim pages
        streaks.see(d)
    assert streaks.streaks() == {"wbs_a": (FAILING_STREAK, 401)}
    streaks.see(_row(99, 99, "succeeded", 200))
    assert streaks.streaks() == {}
    streaks.see(_row(100, 100, "pending", 503))  # not terminal yet: not a failure
    assert streaks.streaks() == {}


def test_a_long_streak_keeps_bounded_memory_and_says_so() -> None:
    streaks = FailureStreaks()
    for n in range(250):
        streaks.see(_row(n, n, "failed", 401 if n == 249 else 500))
    ((sub, (failing, code)),) = streaks.streaks().items()
    assert (sub, failing, code) == ("wbs_a", 100, 401)  # the newest 100 are kept
    alert = SubscriptionAlert(sub, "active", failing, code)
    assert "newest 100+ deliveries" in alert.message
    assert "is failing" in alert.message


def answering(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    """ASGI middleware factory: the subscription endpoints answer ``status`` with ``body``."""

    class Answer:
        def __init__(self, app: ASGI) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            path = scope.get("path", "")
            if scope.get("type") == "http" and path.startswith("/v1/webhook_subscriptions"):
                head = [(b"content-type", b"application/json"), *(headers or [])]
                await send({"type": "http.response.start", "status": status, "headers": head})
                await send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, receive, send)

    return Answer


BUSY = b'{"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "x"}}'
DOWN = b'{"error": {"type": "api_error", "code": "internal_error", "message": "down"}}'


@pytest.mark.parametrize(
    "wrap",
    [answering(429, BUSY, [(b"retry-after", b"120")]), answering(503, DOWN)],
    ids=["429", "503"],
)
def test_a_busy_or_failing_subscription_read_is_asked_once_and_is_one_note(
    mixup: MixUp, wrap: Any
) -> None:
    # it was retried as a history page is: a 429 asking for 2 minutes was waited out up to
    # 32 times, a 503 asked 8 times with backoff, after the run's work was done
    (sub,) = mixup.emu.store.subscriptions
    lo, hi = mixup.window
    for named in (None, sub):
        transport, client, t = mixup.api(wrap)
        began = t.clock()
        report = backfill(mixup.home, client=client, since=lo, until=hi, now=t.clock,
                          subscription_id=named)  # fmt: skip
        path = SUBS if named is None else f"{SUBS}/{sub}"
        assert transport.paths[path] == 1
        assert t.clock() - began < 60  # no Retry-After waited out, no backoff
        assert report.subscriptions_unread is not None
        assert report.subscriptions_unread.startswith("cannot read the subscriptions")


NO_ROUTE = b'{"detail": "Not Found"}'
NOT_KIRIMS = b'{"error": {"type": "not_found", "code": "resource_not_found", "message": "no"}}'


@pytest.mark.parametrize(
    ("wrap", "named", "said"),
    [
        (answering(404, NO_ROUTE), False, False),
        (answering(404, NOT_KIRIMS), False, False),  # the list: no id to be wrong
        (answering(405, NO_ROUTE), False, False),
        (answering(404, NO_ROUTE), True, False),
        (answering(405, NO_ROUTE), True, False),
        (answering(404, NOT_KIRIMS), True, True),  # Kirim says there is no such subscription
    ],
)
def test_a_kirim_without_the_subscription_endpoints_gets_no_note_on_every_run(
    mixup: MixUp, wrap: Any, named: bool, said: bool
) -> None:
    (sub,) = mixup.emu.store.subscriptions
    transport, client, t = mixup.api(wrap)
    lo, hi = mixup.window
    report = reconcile(mixup.home, client=client, since=lo, until=hi, now=t.clock, dry_run=True,
                       subscription_id=sub if named else None)  # fmt: skip
    assert (report.subscriptions_unread is not None) == said
    assert transport.paths[f"{SUBS}/{sub}" if named else SUBS] == 1
    (alert,) = report.subscriptions  # the failures read from the history are said all the same
    assert alert.failing >= 24


def test_a_run_that_did_not_read_the_newest_rows_claims_no_failing_streak(mixup: MixUp) -> None:
    # fixed: active again, the right secret; the replays (the newer deliveries) got a 2xx
    (sub,) = mixup.emu.store.subscriptions
    client = mixup.api()[1]
    client.request("PATCH", f"/v1/webhook_subscriptions/{sub}", json_body={"status": "active"})
    for row in [r for r in mixup.emu.store.deliveries if r.status == "failed"][:3]:
        client.replay(row.id)
    mixup.deliver(mixup.emu.webhook_secrets)
    assert [r.status for r in mixup.emu.store.deliveries[-3:]] == ["succeeded"] * 3
    lo, hi = mixup.window
    rows = mixup.emu.store.deliveries
    first_ok = min(r.created_at for r in rows if r.status == "succeeded")
    failed = [r.created_at for r in rows if r.status == "failed" and r.created_at < first_ok]
    assert len(failed) >= FAILING_STREAK
    past = datetime.fromtimestamp(max(failed), UTC) + timedelta(microseconds=1)
    runs: list[dict[str, Any]] = [
        {"until": hi},  # the whole history up to now: nothing to say
        {"until": hi, "status": "failed"},  # every row read a failure: was 'failing'
        {"until": past},  # a range that ends before the fix: was 'failing'
    ]
    for kw in runs:
        _, client, t = mixup.api()
        report = backfill(mixup.home, client=client, since=lo, now=t.clock, **kw)
        assert report.rows >= FAILING_STREAK  # the failures were read
        assert report.subscriptions == [], kw
    _, client, t = mixup.api()
    report = reconcile(mixup.home, client=client, since=lo, until=past, now=t.clock,
                       dry_run=True)  # fmt: skip
    assert report.subscriptions == []


class Killed(BaseException):
    """The process ended mid-run (not an error the run catches)."""


def test_a_resumed_backfill_claims_no_failing_streak(mixup: MixUp) -> None:
    # fixed, the newer deliveries acknowledged; a backfill stopped after its first page (the
    # newest rows, newest first) resumed with the older ones, all failures: it said 'failing'
    (sub,) = mixup.emu.store.subscriptions
    client = mixup.api()[1]
    client.request("PATCH", f"/v1/webhook_subscriptions/{sub}", json_body={"status": "active"})
    for row in [r for r in mixup.emu.store.deliveries if r.status == "failed"][:3]:
        client.replay(row.id)
    mixup.deliver(mixup.emu.webhook_secrets)
    ok = sum(r.status == "succeeded" for r in mixup.emu.store.deliveries)
    lo, hi = mixup.window

    def stop(p: Any) -> None:
        if p.pages == 1:
            raise Killed

    _, client, t = mixup.api()
    with pytest.raises(Killed):
        backfill(mixup.home, client=client, since=lo, until=hi, now=t.clock, slices=1,
                 page_size=ok, progress=stop)  # fmt: skip
    _, client, t = mixup.api()
    report = backfill(mixup.home, client=client, since=lo, until=hi, now=t.clock, slices=1,
                      page_size=ok)  # fmt: skip
    assert report.resumed
    assert report.rows >= FAILING_STREAK
    assert report.subscriptions == []


class CtrlCOnSubscriptions(httpx.BaseTransport):
    """A transport where Ctrl-C lands while the subscriptions are asked for."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/webhook_subscriptions"):
            raise KeyboardInterrupt
        return self.inner.handle_request(request)


def test_ctrl_c_while_the_subscriptions_are_read_leaves_a_run_that_resumes_at_once(
    mixup: MixUp,
) -> None:
    # the CLI then says 'the same command resumes the run': the checkpoint was already
    # finished, so the same command walked the whole range again
    transport, client, t = mixup.api()
    lo, hi = mixup.window
    stopping = KirimClient("http://kirim.test", mixup.emu.api_keys[0], sleep=t.sleep,
                           clock=t.clock, transport=CtrlCOnSubscriptions(transport))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        backfill(mixup.home, client=stopping, since=lo, until=hi, now=t.clock)
    pages = transport.paths["GET /v1/webhook_deliveries"]
    assert pages >= 1
    report = backfill(mixup.home, client=client, since=lo, until=hi, now=t.clock)
    assert report.resumed
    assert transport.paths["GET /v1/webhook_deliveries"] == pages  # nothing walked again
    assert report.requests == 0  # the history's: the subscription read is not counted
    (alert,) = report.subscriptions
    assert alert.disabled
