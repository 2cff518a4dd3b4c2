"""The Emulator facade: one seeded world, its truth, a delivery engine and the REST app."""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from kirim_events.config import Secret, SecretLike, as_secrets
from kirim_events.emulator.api import api_state, create_app
from kirim_events.emulator.apistate import ApiError, check_events
from kirim_events.emulator.engine import (
    Clock,
    DeliveryEngine,
    EngineConfig,
    EngineReport,
    Sleep,
)
from kirim_events.emulator.faults import FaultConfig, FaultInjector
from kirim_events.emulator.ids import api_key, webhook_secret
from kirim_events.emulator.offline import SignedDelivery, iter_signed
from kirim_events.emulator.store import Store, Subscription
from kirim_events.emulator.truth import Truth
from kirim_events.emulator.world import Bundle, World, WorldConfig
from kirim_events.errors import ConfigError

__all__ = ["Emulator"]


def _tls_context(env: Mapping[str, str]) -> ssl.SSLContext | bool:
    """Certificate checks trusting ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when either is set
    (else httpx's default bundle)."""
    cafile, capath = env.get("SSL_CERT_FILE") or None, env.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        return True
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"SSL_CERT_FILE / SSL_CERT_DIR cannot be read ({exc}): they name the certificates"
            " that deliveries over https trust; fix or unset them"
        ) from None


class Emulator:
    """A local Kirim: simulated traffic, signed deliveries, delivery history and REST API.

    Parameters
    ----------
    seed
        Seeds the world, ids, secrets, jitter and faults: the same seed (and an injected
        ``clock``) gives byte-identical deliveries.
    world, engine, faults
        :class:`WorldConfig`, :class:`EngineConfig`, :class:`FaultConfig`.
    start
        Simulated start of the world (unix seconds or aware datetime).
    secrets
        Webhook secrets for subscriptions this object creates (``KIRIM_WEBHOOK_SECRET``);
        one is generated from the seed when omitted (see :attr:`webhook_secrets`).
    api_keys
        ``kdv_live_`` keys the REST app accepts; one is generated when omitted
        (see :attr:`api_keys`). A key of another form is a ConfigError.
    clock, sleep
        Injected time for the engine and the API (``time.time`` / real waiting by default).
    truth_path
        Write the truth's event log to this Parquet file instead of keeping it in memory.
    read_limit, write_limit
        API rate limits per minute.
    retention_days
        The API serves only delivery rows created within this many days of ``clock``
        (Kirim keeps 30; ``kirim-events emulate`` sets 30). None (the default) serves every
        row until :meth:`purge` is called, so tests choose when history goes.

    Examples
    --------
    >>> emu = Emulator(seed=1)
    >>> sub = emu.subscribe("https://example.test/webhooks/kirim")
    >>> sent = list(emu.iter_deliveries(20))
    >>> len(emu.truth) == 20 and len(sent) >= 19
    True
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        world: WorldConfig | None = None,
        engine: EngineConfig | None = None,
        faults: FaultConfig | None = None,
        start: int | datetime | None = None,
        secrets: SecretLike | Iterable[SecretLike] | None = None,
        api_keys: Iterable[SecretLike] = (),
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        truth_path: str | Path | None = None,
        read_limit: int = 600,
        write_limit: int = 60,
        record_attempts: bool = True,
        retention_days: float | None = None,
    ) -> None:
        self.seed = seed
        self.world = World(world, seed=seed, start=start)
        block = self.world.config.kirim_block
        self.truth = Truth(kirim_block=block, path=truth_path)
        self.clock: Clock = clock or time.time
        rng = random.Random(f"{seed}:emulator")
        self.store = Store(rng=random.Random(rng.getrandbits(64)), record_attempts=record_attempts)
        # read now, not when the first delivery goes out; an unreadable setting matters only
        # to https URLs (check_url, subscribe), so an http-only run is not stopped by it
        self._verify: ssl.SSLContext | bool = True
        self._tls_error: ConfigError | None = None
        try:
            self._verify = _tls_context(os.environ)
        except ConfigError as exc:
            self._tls_error = exc
        self.webhook_secrets: tuple[Secret, ...] = as_secrets(secrets) or (
            Secret(webhook_secret(rng)),
        )
        keys = tuple(as_secrets(list(api_keys)))
        self.api_keys: tuple[Secret, ...] = keys or (Secret(api_key(rng)),)
        self.engine = DeliveryEngine(
            self.store,
            engine,
            clock=self.clock,
            sleep=sleep,
            rng=random.Random(rng.getrandbits(64)),
            kirim_block=block,
        )
        self.engine_config = self.engine.config
        self.app: FaultInjector = create_app(
            self.store,
            api_keys=self.api_keys,
            clock=self.clock,
            rng=random.Random(rng.getrandbits(64)),
            read_limit=read_limit,
            write_limit=write_limit,
            faults=faults,
            fault_sleep=sleep,
            retention_days=retention_days,
        )
        self._started = False

    def subscribe(
        self,
        url: str,
        *,
        events: Iterable[str] | None = None,
        secrets: SecretLike | Iterable[SecretLike] | None = None,
        now: float | None = None,
    ) -> Subscription:
        """Create a subscription signed with ``secrets`` (default :attr:`webhook_secrets`).

        ``events`` names the event types sent to it, in a list, a tuple or any iterable
        but a string (``None``: every one, ``["*"]``); names are checked as
        ``POST /v1/webhook_subscriptions`` checks them.

        Raises ConfigError for an ``https://`` URL while ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
        cannot be read (see :meth:`check_url`), and for an empty ``events`` or a name no
        event type has (``message.*``: whether Kirim knows wildcards is unknown).
        """
        self.check_url(url)
        if events is not None:
            # as the REST API does (a 400 there): a name no type matches was never sent
            # anything, without a word, and an empty list subscribed to every type
            # any iterable of names, as the store takes them (a tuple was refused once the
            # names were checked); a string is no list of names but its letters
            given: Any = events
            if isinstance(events, Iterable) and not isinstance(events, (str, bytes)):
                given = list(events)
            try:
                events = check_events(given)
            except ApiError as exc:
                raise ConfigError(f"subscribe: {exc}: got {given!r}") from None
        chosen = list(as_secrets(secrets)) if secrets is not None else list(self.webhook_secrets)
        sub, _ = self.store.create_subscription(
            url,
            now=self.clock() if now is None else now,
            events=events,
            secrets=chosen,
        )
        return sub

    def bundles(self, n_events: int | None) -> Iterator[Bundle]:
        """The world's bundles (each recorded in :attr:`truth`); one stream per Emulator."""
        if self._started:
            raise RuntimeError("an Emulator streams its world once; make a new Emulator")
        self._started = True
        return self.truth.watch(self.world.bundles(n_events))

    def iter_deliveries(
        self, n_events: int | None, *, record: bool = True
    ) -> Iterator[SignedDelivery]:
        """Signed requests for ``n_events`` world events, no network (see :func:`iter_signed`).

        Needs at least one subscription (:meth:`subscribe`); signature ``t`` is simulated time.
        """
        if not self.store.subscriptions:
            raise RuntimeError("no subscription: call subscribe(url) first")
        return iter_signed(
            self.bundles(n_events),
            self.store,
            config=self.engine_config,
            seed=self.seed,
            kirim_block=self.world.config.kirim_block,
            record=record,
        )

    async def send(
        self,
        n_events: int | None,
        *,
        url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        forever: bool = False,
    ) -> EngineReport:
        """POST ``n_events`` world events to every subscription (retries, replays included).

        ``url`` creates a subscription when none exists; ``transport`` routes every request
        through it (``httpx.ASGITransport(app=receiver)`` for in-process receivers). Returns
        when everything is delivered or terminal, or after :meth:`stop` when ``forever``.
        """
        if url is not None and not self.store.subscriptions:
            self.subscribe(url)
        if not self.store.subscriptions:
            raise RuntimeError("no subscription: pass url= or call subscribe(url) first")
        async with self.webhook_client(transport) as client:
            return await self.engine.run(self.bundles(n_events), client=client, forever=forever)

    def check_url(self, url: str) -> None:
        """ConfigError when deliveries to ``url`` could not be made as asked: an ``https://``
        URL while ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` (read when the emulator was made)
        cannot be read."""
        if self._tls_error is not None and url.lower().startswith("https://"):
            raise self._tls_error

    def webhook_client(
        self, transport: httpx.AsyncBaseTransport | None = None
    ) -> httpx.AsyncClient:
        """The HTTP client deliveries go out through.

        Its timeout is above the engine's (httpx's own 5 s would cut Kirim's 10 s answer
        window short); it holds as many connections as deliveries run at once (else the
        ones waiting for a connection ran out their time and were sent again); and it
        ignores proxy settings (one set for the internet must not carry loopback webhooks).
        It trusts the certificates named by ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set
        (a handler behind TLS with a local CA, such as mkcert's), as httpx does by
        default; ignoring the proxy settings would otherwise ignore these too. They are
        read when the emulator is made; when they cannot be, https URLs are refused
        (:meth:`check_url`) and httpx's own bundle is used.
        """
        cfg = self.engine_config
        limits = httpx.Limits(
            max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency
        )
        return httpx.AsyncClient(
            transport=transport,
            timeout=cfg.timeout + 1.0,
            limits=limits,
            trust_env=False,
            verify=self._verify,
        )

    def stop(self) -> None:
        """Stop a :meth:`send` running with ``forever=True``."""
        self.engine.stop()

    def purge(self, *, older_than_days: float = 30.0, now: float | None = None) -> int:
        """Delete delivery history older than ``older_than_days`` (Kirim keeps 30 days).

        Kirim purges daily on its own; here it happens when called, so tests choose when.
        Returns how many delivery rows were deleted.
        """
        now = self.clock() if now is None else now
        return self.store.purge(now - older_than_days * 86400)

    def spend_rate_limit(self, *, write: bool = False) -> None:
        """Spend the REST API's read (``write``: write) rate limit at once, as other users of
        the organisation's key would: its next request of that class gets a 429 until a
        token has refilled (``read_limit`` / 60 a second).

        It costs nothing whatever the limit (spending it with requests takes a minute's worth
        of them, and never ends when the bucket refills faster than they are answered).

        Examples
        --------
        >>> import asyncio
        >>> emu = Emulator(seed=1, read_limit=60_000, clock=lambda: 0.0)
        >>> emu.spend_rate_limit()
        >>> async def me() -> tuple[int, str]:
        ...     auth = {"Authorization": f"Bearer {emu.api_keys[0].reveal()}"}
        ...     transport = httpx.ASGITransport(app=emu.app)
        ...     async with httpx.AsyncClient(transport=transport, base_url="http://k") as c:
        ...         r = await c.get("/v1/me", headers=auth)
        ...         return r.status_code, r.headers["Retry-After"]
        >>> asyncio.run(me())
        (429, '1')
        """
        api_state(self.app).spend(write=write)

    def unacknowledged_event_keys(self, subscription_id: str | None = None) -> set[str]:
        """Event keys (as ``parse_delivery`` computes them) never answered with a 2xx: those
        of delivery rows never acknowledged, and those of events never sent because their
        subscription was disabled (Kirim keeps no row of them)."""
        return self.store.unacknowledged_event_keys(subscription_id)
