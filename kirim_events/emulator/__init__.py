"""A local Kirim: seeded world with ground truth, signed deliveries, REST API (issue 3).

Parts, one module each: :mod:`~.model` (config, entities, events), :mod:`~.world`
(simulation), :mod:`~.truth` (ground truth and its definitions), :mod:`~.bodies` (exact
bodies and headers), :mod:`~.engine` (delivery over HTTP, retries), :mod:`~.offline` (the
same requests without a network), :mod:`~.store` (subscriptions, delivery rows),
:mod:`~.api` (REST app, with its shared state and helpers in :mod:`~.apistate` and handlers
in :mod:`~.routes`), :mod:`~.faults` (fault injection, rate limits), :mod:`~.ids` and
:mod:`~.emulator` (the :class:`Emulator` facade).

>>> from kirim_events.emulator import Emulator
>>> emu = Emulator(seed=3)
>>> _ = emu.subscribe("https://example.test/hook")
>>> first = next(emu.iter_deliveries(5))
>>> first.headers["User-Agent"]
'Kirim-Webhook/1.0'
"""

from __future__ import annotations

from kirim_events.emulator.api import BULK_REPLAY_CAP, create_app
from kirim_events.emulator.bodies import Rendered, delivery_headers, render
from kirim_events.emulator.emulator import Emulator
from kirim_events.emulator.engine import (
    JITTER,
    SCHEDULE,
    DeliveryEngine,
    EngineConfig,
    EngineReport,
    retry_delay,
)
from kirim_events.emulator.faults import DroppedConnection, FaultConfig, FaultInjector, TokenBucket
from kirim_events.emulator.offline import SignedDelivery, iter_signed
from kirim_events.emulator.store import AttemptRecord, DeliveryRow, Store, Subscription
from kirim_events.emulator.truth import Truth, emitted_conversation_id, event_key
from kirim_events.emulator.world import Bundle, World, WorldConfig, WorldEvent

__all__ = [
    "BULK_REPLAY_CAP",
    "JITTER",
    "SCHEDULE",
    "AttemptRecord",
    "Bundle",
    "DeliveryEngine",
    "DeliveryRow",
    "DroppedConnection",
    "Emulator",
    "EngineConfig",
    "EngineReport",
    "FaultConfig",
    "FaultInjector",
    "Rendered",
    "SignedDelivery",
    "Store",
    "Subscription",
    "TokenBucket",
    "Truth",
    "World",
    "WorldConfig",
    "WorldEvent",
    "create_app",
    "delivery_headers",
    "emitted_conversation_id",
    "event_key",
    "iter_signed",
    "render",
    "retry_delay",
]
