"""Signed deliveries without a network: every request the engine would send, in simulated
time, for collector and lake tests and for benchmarks.

Each (event, live subscription) pair gets a delivery id and attempt 1 at the event's time
(plus a disorder lag); with probability ``duplicate_rate`` the same delivery comes again as
attempt 2 after the retry delay, as if the first 2xx had been lost. The signature ``t`` is the
simulated send time, so the same seed gives byte-identical requests.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kirim_events.emulator.bodies import Rendered, delivery_headers, render
from kirim_events.emulator.engine import EngineConfig, disorder_lag, new_row, retry_delay
from kirim_events.emulator.ids import delivery_rng
from kirim_events.emulator.store import DeliveryRow, Store
from kirim_events.emulator.world import Bundle
from kirim_events.signing import sign

__all__ = ["SignedDelivery", "iter_signed"]


@dataclass(frozen=True, slots=True)
class SignedDelivery:
    """One signed request, ready to POST (or to hand to a receiver directly)."""

    url: str
    headers: dict[str, str]
    body: bytes
    delivery_id: str
    attempt: int
    subscription_id: str
    event_keys: tuple[str, ...]
    sent_at: float  # simulated (offline) or engine-clock time of the attempt

    @property
    def signature_t(self) -> int:
        """The signing time ``t`` (use it as ``now=`` when verifying offline)."""
        return int(self.headers["X-Kirim-Signature"].split(",", 1)[0][2:])


def iter_signed(
    bundles: Iterable[Bundle],
    store: Store,
    *,
    config: EngineConfig | None = None,
    seed: int = 0,
    kirim_block: bool = False,
    record: bool = True,
) -> Iterator[SignedDelivery]:
    """Yield every signed request for ``bundles`` in simulated send-time order, no network.

    Each (event, live subscription) pair gets a delivery id and attempt 1 at the event's
    time (plus a disorder lag); with probability ``duplicate_rate`` the same delivery comes
    again as attempt 2 after the retry delay, as if the first 2xx had been lost. The
    signature ``t`` is the simulated send time. With ``record``, each delivery is kept in
    ``store`` as ``succeeded`` (the caller is assumed to have acknowledged it).
    """
    cfg = (config or EngineConfig()).validate()
    root = random.Random(seed).getrandbits(64)
    pending: list[tuple[float, int, int, DeliveryRow, Rendered]] = []
    seq = 0

    def release(upto: float) -> Iterator[SignedDelivery]:
        while pending and pending[0][0] <= upto:
            at, _, attempt, row, rendered = heapq.heappop(pending)
            sub = store.subscriptions[row.subscription_id]
            signature = sign(row.payload, sub.active_secrets(at), timestamp=int(at))
            headers = delivery_headers(
                rendered, delivery_id=row.id, attempt=attempt, signature=signature
            )
            if record:
                row.attempt = attempt
                row.status, row.acknowledged = "succeeded", True
                row.response_status_code, row.updated_at = 200, at
            yield SignedDelivery(
                row.url, headers, row.payload, row.id, attempt, sub.id, rendered.event_keys, at
            )

    for bundle in bundles:
        yield from release(bundle.at)
        rendered = render(bundle, kirim_block=kirim_block)
        for sub in list(store.live_subscriptions(rendered.event_type)):
            row = new_row(store, sub, rendered, now=bundle.at, record=record)
            first: float = bundle.at
            seq += 1
            if not (cfg.disorder or cfg.duplicate_rate):
                heapq.heappush(pending, (first, seq, 1, row, rendered))
                continue
            rng = delivery_rng(root, sub.ordinal, row.event_keys, row.replayed_from, 1)
            first += disorder_lag(rng, cfg) / cfg.time_compression
            heapq.heappush(pending, (first, seq, 1, row, rendered))
            if cfg.duplicate_rate and rng.random() < cfg.duplicate_rate:
                seq += 1
                delay = retry_delay(2, rng, jitter=cfg.jitter) / cfg.time_compression
                heapq.heappush(pending, (first + delay, seq, 2, row, rendered))
    yield from release(math.inf)
