"""Keeps the API keys of open clients out of the log records of httpx and the libraries under it.

httpx logs every answer at INFO as ``HTTP Request: GET <url> "HTTP/1.1 401 <reason phrase>"``,
and httpcore logs at DEBUG the status line and every header of each answer: a server or a
gateway that echoes the request's ``Authorization`` header in its reason phrase or in a header
(``401 invalid token Bearer kdv_live_...``) put the key into the logs of anyone who shows
INFO (``logging.basicConfig(level=logging.INFO)`` in a notebook does).

Why a logging filter and not a transport that rewrites the reason phrase before httpx logs it:
httpcore's DEBUG lines are written inside the transport, from the bytes as they arrive, before
any wrapper sees the answer, and they carry the headers too; a filter on the loggers that emit
the records sees every one of them, whatever the transport (a user's, an ASGI app's).

The filter sits on each logger of the ``httpx``, ``httpcore``, ``h11``, ``h2`` and ``hpack``
families that exists (a logger's filters see only its own records), is added once, and changes
only a record whose message holds the key of an open :class:`~kirim_events.client.KirimClient`:
its message becomes the same text with the key as ``**********``. No level, handler or other
record changes.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable

__all__ = ["blank", "hide_in_logs", "place_filter", "stop_hiding"]

_FAMILIES = ("httpx", "httpcore", "h11", "h2", "hpack")
"""Loggers (and their children) of the HTTP stack under KirimClient."""

_HIDDEN = "**********"
_MIN_KEY = 12
"""A key shorter than this (no real Kirim key: they are ``kdv_live_`` and more; a test's
``k``) is not looked for: blanking every ``k`` would garble every line of those loggers."""


class _KeyFilter(logging.Filter):
    """Blanks the registered keys out of a record's message (never drops a record)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.keys: tuple[str, ...] = ()  # read without the lock: replaced whole

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1
            self.keys = _forms(self._counts)

    def remove(self, key: str) -> None:
        with self._lock:
            if self._counts[key] > 1:
                self._counts[key] -= 1
            else:
                self._counts.pop(key, None)
            self.keys = _forms(self._counts)

    def filter(self, record: logging.LogRecord) -> bool:
        keys = self.keys
        if not keys:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: the handler reports it
            return True
        hidden = message
        for key in keys:
            hidden = hidden.replace(key, _HIDDEN)
        if hidden != message:
            record.msg, record.args = hidden, ()
        return True


def _forms(keys: Iterable[str]) -> tuple[str, ...]:
    """Each key as a record may hold it: as it is, and as the ``repr`` of a text or bytes
    holding it writes it (httpcore logs each header as ``b'...'``: a backslash doubled, a
    quote escaped when both kinds are in it), longest first. A key is printable ASCII
    (:func:`~kirim_events.config.checked_api_key`): nothing else is escaped."""
    forms: set[str] = set()
    for key in keys:
        escaped = key.replace("\\", "\\\\")
        forms.update((key, escaped, escaped.replace("'", "\\'")))
    return tuple(sorted(forms, key=len, reverse=True))


def blank(text: str, key: str, shown: str = _HIDDEN) -> str:
    """``text`` with ``key`` as ``shown``, in each of the forms :func:`_forms` names (an
    error's text quoting a status line as bytes holds the key as a repr writes it)."""
    for form in _forms([key]):
        text = text.replace(form, shown)
    return text


_FILTER = _KeyFilter()
_placed: set[str] = set()
_placing = threading.Lock()
_known = 0  # how many loggers there were when the filter was last placed


def place_filter() -> None:
    """Put the filter on every logger of the HTTP stack that exists now and has none yet.

    httpx imports httpcore as its first client is made, and httpcore makes some of its
    loggers as it first needs them (http2, socks): a client calls this as it sends each
    request, which costs one ``len`` when no logger was added since the last call."""
    global _known
    manager = logging.root.manager
    if len(manager.loggerDict) == _known:
        return
    with _placing:
        names = list(manager.loggerDict)
        for name in names:
            if name.split(".", 1)[0] in _FAMILIES and name not in _placed:
                logging.getLogger(name).addFilter(_FILTER)
                _placed.add(name)
        _known = len(names)


def hide_in_logs(key: str) -> None:
    """Blank ``key`` out of every record the HTTP stack's loggers emit until
    :func:`stop_hiding` is called as many times for it (a client registers its key as it
    opens and releases it as it closes)."""
    if len(key) >= _MIN_KEY:
        place_filter()
        _FILTER.add(key)


def stop_hiding(key: str) -> None:
    """Release one :func:`hide_in_logs` of ``key``."""
    if len(key) >= _MIN_KEY:
        _FILTER.remove(key)
