"""Replays of one signed delivery under another ``X-Kirim-Event-Id``.

The signature covers the timestamp and the body, not the headers. When a body carries no id
of its own (a Kirim-native body without ``id``, a Meta body that is neither a message nor a
status, the third shape without a message id), its event key is the header's event id, or a
hash of the body when the header is absent (the parser says so: ``Records.header_keyed``).
A captured delivery sent again within the signature tolerance with that header changed or
removed would then be a second event. The receiver remembers, for such deliveries only, the
event id first seen with each signed body, and reads a replay with another id (or none) as
a copy of the first.

Per process: a replay to another collector of the same lake is not caught (nor is one when
the freshness check is off, past the window).
"""

from __future__ import annotations

import hashlib

from kirim_events.signing import parse_header

__all__ = ["HeaderKeyedReplays"]


class HeaderKeyedReplays:
    """The event id (``X-Kirim-Event-Id``, None when absent) first seen with each signed
    header-keyed delivery, for ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._first: dict[str, tuple[float, str | None]] = {}  # in insertion (= expiry) order

    def first_id(self, body: bytes, signature: str, event_id: str | None, now: float) -> str | None:
        """The event id first seen with this signed body: the signature header (verified)
        gives its time ``t``; ``t`` and the body are what a replay cannot change, however it
        rewrites the header (more ``v1=``, other spacing). This ``event_id`` if the first."""
        t, _ = parse_header(signature)
        key = hashlib.sha256(b"%d." % t + body).hexdigest()
        first = self._first
        while first:  # forget what has expired: the oldest come first
            oldest = next(iter(first))
            if first[oldest][0] > now:
                break
            del first[oldest]
        seen = first.get(key)
        if seen is not None:
            return seen[1]
        first[key] = (now + self.window, event_id)
        return event_id

    def __len__(self) -> int:
        return len(self._first)
