"""Deterministic identifiers: ULIDs with Kirim prefixes, Meta wamids, secrets and API keys.

Every function takes the random source explicitly, so the same seed gives the same ids.
ULIDs follow kirim-api.md §8: 26 chars of Crockford base32, first char 0-7, the first 10
chars encoding the creation time in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import random

__all__ = [
    "api_key",
    "delivery_rng",
    "derive_rng",
    "meta_billing_id",
    "ulid",
    "wamid",
    "webhook_secret",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def ulid(prefix: str, ms: int, rng: random.Random) -> str:
    """Return ``<prefix>_<ULID>`` for the time ``ms`` (unix milliseconds) and 80 random bits.

    >>> ulid("evt", 0, random.Random(1))[:14]
    'evt_0000000000'
    """
    value = ((ms & ((1 << 48) - 1)) << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def wamid(digits: str, rng: random.Random, *, salt: int = 0) -> str:
    """Return a Meta message id shaped like real ones (``wamid.HBgM...AA==``).

    ``salt`` (72 bits) is mixed into the random part without another draw from ``rng``, so
    worlds that differ only in it make the same draws and different ids.
    """
    tail = f"{rng.getrandbits(72) ^ (salt & (1 << 72) - 1):018X}".encode("ascii")
    raw = (
        b"\x1c\x18\x0c"
        + digits[-12:].encode("ascii")
        + b"\x15\x02\x00\x11\x18\x12"
        + tail
        + b"\x00"
    )
    return "wamid." + base64.b64encode(raw).decode("ascii")


def meta_billing_id(*parts: str) -> str:
    """Meta's billing conversation id (32 hex chars); never a Kirim ``cnv_`` id."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _urlsafe(n: int, rng: random.Random) -> str:
    return "".join(_URLSAFE[rng.getrandbits(6)] for _ in range(n))


def webhook_secret(rng: random.Random) -> str:
    """A new ``whsec_`` signing secret (32 url-safe chars after the prefix)."""
    return "whsec_" + _urlsafe(32, rng)


def api_key(rng: random.Random) -> str:
    """A ``kdv_live_`` API key: the prefix and 24 url-safe base64 chars (33 chars)."""
    return "kdv_live_" + _urlsafe(24, rng)


def delivery_rng(root: int, subscription: int, event_keys: tuple[str, ...],
                 replayed_from: str | None, attempt: int) -> random.Random:  # fmt: skip
    """The draws of one delivery attempt (jitter, disorder, a lost ack), from what a run
    with the same seed repeats: the events and the subscription's ordinal, not the delivery
    id, which is stamped with the wall clock, nor the URL (a test's free port). So the same
    deliveries are sent twice or held back."""
    return derive_rng(root, subscription, ",".join(event_keys), replayed_from or "", attempt)


def derive_rng(root: int, *parts: object) -> random.Random:
    """A random source derived from ``root`` and ``parts`` only.

    Used where draws must not depend on the order in which concurrent work runs (a
    delivery's jitter, its duplicate decision): the same inputs give the same stream.
    """
    text = ":".join([str(root), *map(str, parts)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))
