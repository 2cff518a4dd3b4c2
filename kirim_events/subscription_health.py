"""Whether the subscriptions a backfill or reconcile sees still get events: disabled, or failing.

After a webhook-secret mix-up every delivery gets a 401, and Kirim auto-disables the
subscription after 24 failed deliveries in a row (kirim-api.md §3). From then on Kirim sends
it nothing and keeps no history row of the new events, so a reconcile that imports all it
finds looked like a full recovery while nothing new was coming. Each run therefore reads the
subscriptions once (:func:`read_statuses`: one request, whatever the number of pages walked)
and counts, from the history rows it reads anyway, the failed or dead deliveries at the newest
end of each subscription's history (:class:`FailureStreaks`). The findings are
:class:`SubscriptionAlert` objects on the report; the CLI renders them.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass, field
from datetime import datetime

from kirim_events.client import Delivery, KirimClient
from kirim_events.errors import ApiError
from kirim_events.printable import printable

__all__ = [
    "FAILING_STREAK",
    "FailureStreaks",
    "SubscriptionAlert",
    "alerts",
    "reaches_now",
    "read_statuses",
    "reenable_hint",
]

FAILING_STREAK = 5
"""Failed or dead deliveries in a row, at the newest end of a subscription's history read,
from which it is said to be failing. One or two are a flaky moment, retried or replayed;
five in a row is a pattern, on its way to Kirim's auto-disable at 24 (kirim-api.md §3)."""

_KEPT = 100  # newest failures kept per subscription: the streak is "100 or more" past it
_TERMINAL = ("dead", "failed")
# the success names reconcile_scan.acknowledged reads (kirim-api.md §7.4 leaves it open);
# not imported from there, which imports the reconcile report that imports this module
_OK = frozenset({"succeeded", "success", "successful", "delivered", "sent", "ok"})


def reenable_hint(subscription_id: str) -> str:
    """How to make a subscription active again, as kirim-api.md §7.5 gives it."""
    return (
        f'PATCH /v1/webhook_subscriptions/{printable(subscription_id)} with {{"status": "active"}}'
        " (or in Kirim's dashboard)"
    )


@dataclass(frozen=True)
class SubscriptionAlert:
    """A subscription that gets no events now (``status`` not ``active``), or whose newest
    deliveries in the history read all failed (``failing`` of them in a row)."""

    subscription_id: str
    status: str | None  # as Kirim shows it; None when it was not read
    failing: int = 0  # failed or dead deliveries in a row at the newest end of the history
    last_code: int | None = None  # the HTTP status our endpoint answered the newest of them

    @property
    def disabled(self) -> bool:
        """Kirim sends nothing to it (``disabled`` after its auto-disable, or another status)."""
        return self.status is not None and self.status != "active"

    @property
    def message(self) -> str:
        """One line for the user: what is wrong and what to do."""
        sub = printable(self.subscription_id)
        why = ""
        if self.failing:
            more = "+" if self.failing >= _KEPT else ""
            code = "" if self.last_code is None else f", the last answered HTTP {self.last_code}"
            why = f" its newest {self.failing}{more} deliveries in the history failed{code}"
            if self.last_code == 401:
                why += " (a webhook secret the collector does not hold? see KIRIM_WEBHOOK_SECRET)"
        if self.disabled:
            before = f" Before that,{why}." if why else ""
            return (
                f"subscription {sub} is {printable(str(self.status))}: Kirim sends it no new"
                " events and keeps no history of them, so no backfill or reconcile can find"
                f" them.{before} Once the collector answers, make it active again:"
                f" {reenable_hint(self.subscription_id)}"
            )
        return (
            f"subscription {sub} is failing:{why}. Kirim disables a subscription after 24"
            " failed deliveries in a row: fix the collector, then run reconcile (this warning"
            " ends once a newer delivery is acknowledged)"
        )


@dataclass
class FailureStreaks:
    """Per subscription, the failed or dead deliveries newer than its newest acknowledged one
    (rows may come in any order, from parallel slices: thread-safe)."""

    _ok: dict[str, datetime] = field(default_factory=dict)
    # the newest failures per subscription: (created_at, arrival number, response code), a
    # min-heap of at most _KEPT (the number breaks ties, so codes are never compared)
    _failed: dict[str, list[tuple[datetime, int, int | None]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _n: int = 0

    def see(self, d: Delivery) -> None:
        """Count one history row."""
        sub, when = d.subscription_id, d.created_at
        if sub is None or when is None:
            return
        code = d.response_status_code
        ok = (d.status or "").lower() in _OK or (code is not None and 200 <= code < 300)
        with self._lock:
            if ok:
                if sub not in self._ok or when > self._ok[sub]:
                    self._ok[sub] = when
            elif d.status in _TERMINAL:
                heap = self._failed.setdefault(sub, [])
                self._n += 1
                item = (when, self._n, code)
                if len(heap) < _KEPT:
                    heapq.heappush(heap, item)
                else:
                    heapq.heappushpop(heap, item)

    def streaks(self) -> dict[str, tuple[int, int | None]]:
        """``{subscription: (failures in a row at its newest end, newest one's code)}``, for
        those with at least :data:`FAILING_STREAK`."""
        out: dict[str, tuple[int, int | None]] = {}
        with self._lock:
            for sub, heap in self._failed.items():
                ok = self._ok.get(sub)
                newer = [f for f in heap if ok is None or f[0] > ok]
                if len(newer) >= FAILING_STREAK:
                    out[sub] = (len(newer), max(newer)[2])
        return out


def reaches_now(until: datetime | None, start: datetime) -> bool:
    """Whether a range ending at ``until`` (None: now) holds a subscription's newest rows as
    of ``start``, the run's clock: a range that ends in the past may be followed by newer
    deliveries that succeeded, so its failures say nothing of the subscription now."""
    return until is None or until >= start


def read_statuses(
    client: KirimClient, subscription_id: str | None
) -> tuple[dict[str, str | None], str | None]:
    """One request: the subscription named (``GET /v1/webhook_subscriptions/{id}``), else
    the first page of every subscription the key sees (``GET /v1/webhook_subscriptions``,
    listed by integrators). Returns ``({id: status}, None)``, or ``({}, why)`` when Kirim
    would not say: the run goes on without it.

    Sent once, never retried: a 429 or a 5xx is one note, not minutes of waiting after the
    run's work is done. A Kirim without the endpoint (404 or 405: kirim-api.md §7.5 has the
    list only from integrators, the single read assumed) gets no note, which would be said
    on every run; a 404 in Kirim's own error envelope for a named subscription (no such id)
    does."""
    try:
        if subscription_id is not None:
            one = client.get_subscription(subscription_id, retry=False)
            return {subscription_id: _status(one)}, None
        body = client.request(
            "GET", "/v1/webhook_subscriptions", params={"limit": "100"}, retry=False
        )
    except ApiError as exc:  # a 429 asking for hours too: the run's work is done or to do
        if _no_endpoint(exc, named=subscription_id is not None):
            return {}, None
        why = f"cannot read the subscriptions ({exc}): whether Kirim still sends to them is unknown"
        return {}, why
    items = body.get("data")
    subs = {
        str(s["id"]): _status(s)
        for s in (items if isinstance(items, list) else [])
        # not another object (a delivery) that a proxy or a quirk answered with
        if isinstance(s, dict)
        and isinstance(s.get("id"), str)
        and s.get("object", "webhook_subscription") == "webhook_subscription"
    }
    return subs, None


def _no_endpoint(exc: ApiError, *, named: bool) -> bool:
    """Whether ``exc`` says this Kirim has no such endpoint (not that it refused to answer)."""
    if exc.status_code == 405:
        return True
    if exc.status_code != 404:
        return False
    # the list has no id to be wrong; a named one's 404 with Kirim's error object is its id's
    return not named or (exc.type is None and exc.code is None)


def _status(sub: dict[str, object]) -> str | None:
    status = sub.get("status")
    return status if isinstance(status, str) else None


def alerts(
    statuses: dict[str, str | None],
    streaks: dict[str, tuple[int, int | None]],
    subscription_id: str | None = None,
) -> list[SubscriptionAlert]:
    """The subscriptions to tell the user about, sorted by id (only ``subscription_id``'s
    when one is named)."""
    names = set(streaks) | {s for s, status in statuses.items() if status not in (None, "active")}
    if subscription_id is not None:
        names &= {subscription_id}
    out = []
    for sub in sorted(names):
        failing, code = streaks.get(sub, (0, None))
        out.append(SubscriptionAlert(sub, statuses.get(sub), failing, code))
    return out
