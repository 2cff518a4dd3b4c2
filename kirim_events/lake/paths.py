"""Partition and file naming for the lake: safe folder names that never escape the lake.

Layout (design.md)::

    DATA/events/type=<type>/date=<YYYY-MM-DD>/<name>.parquet
    DATA/deliveries/date=<YYYY-MM-DD>/<name>.parquet

A valid Kirim event type (``a.b``, lowercase letters and ``_``, at most 64 characters) is
used unchanged as the folder value. Anything else -- ``../x``, ``a/b``, the empty string,
upper case, control characters -- is written as ``_x_<hex of its UTF-8 bytes>``: a name made
only of ``[0-9a-f_x]``, which can never be a valid type (valid types contain a dot), never
contains ``/`` or ``..`` and decodes back to the original type, so nothing is lost. Types whose
hex form would exceed 200 characters become ``_h_<sha256>`` (the exact text is still in
each row's raw ``payload``).

File names: ``w-<ms>-<seq>-<writer>.parquet`` for writer files and
``c-<generation>-<ms>-<writer>-<n>.parquet`` for compaction outputs. ``<ms>`` is a 12-digit
hex millisecond clock so names sort by time; ``<writer>`` is a random id per writer process,
so writers on several machines never collide.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date

from kirim_events.events import EVENT_TYPE_PATTERN, MAX_TYPE_LENGTH

__all__ = [
    "DATE_PATTERN",
    "compaction_file_name",
    "decode_type",
    "encode_type",
    "is_compaction_file",
    "is_our_file",
    "is_writer_file",
    "parse_partition_dir",
    "writer_file_name",
]

DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HEX_PREFIX = "_x_"
_HASH_PREFIX = "_h_"
_MAX_HEX = 200
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_WRITER_FILE = re.compile(r"^w-[0-9a-f]{12}-[0-9a-f]+-[0-9a-z]+\.parquet$")
_COMPACT_FILE = re.compile(r"^c-(\d{8})-[0-9a-f]{12}-[0-9a-z]+-\d+\.parquet$")


def encode_type(event_type: str) -> str:
    """Return the folder value for an event type; valid types pass through unchanged.

    >>> encode_type("message.status")
    'message.status'
    >>> encode_type("../x")
    '_x_2e2e2f78'
    >>> encode_type("")
    '_x_'
    """
    if len(event_type) <= MAX_TYPE_LENGTH and EVENT_TYPE_PATTERN.fullmatch(event_type):
        return event_type
    hexed = event_type.encode("utf-8", "surrogatepass").hex()
    if len(hexed) > _MAX_HEX:
        return (
            _HASH_PREFIX + hashlib.sha256(event_type.encode("utf-8", "surrogatepass")).hexdigest()
        )
    return _HEX_PREFIX + hexed


def decode_type(value: str) -> str:
    """Invert :func:`encode_type` (hashed names stay as they are).

    >>> decode_type("_x_2e2e2f78")
    '../x'
    """
    if value.startswith(_HEX_PREFIX):
        try:
            return bytes.fromhex(value[len(_HEX_PREFIX) :]).decode("utf-8", "surrogatepass")
        except ValueError:
            return value
    return value


def is_safe_value(value: str) -> bool:
    """True when a folder value read back from storage is one we could have written."""
    return bool(_SAFE_VALUE.fullmatch(value)) and value not in (".", "..")


def parse_partition_dir(name: str, key: str) -> str | None:
    """Return the value of a ``key=value`` folder name, or None if it is not one of ours."""
    prefix = key + "="
    if not name.startswith(prefix):
        return None
    value = name[len(prefix) :]
    if key == "date":
        if not DATE_PATTERN.match(value):
            return None
        try:
            date.fromisoformat(value)
        except ValueError:
            return None
        return value
    return value if is_safe_value(value) or value == _HEX_PREFIX else None


def writer_file_name(ms: int, seq: int, writer_id: str) -> str:
    """Name of a file written by :meth:`Lake.write_events` / ``write_deliveries``."""
    return f"w-{ms:012x}-{seq:06x}-{writer_id}.parquet"


def compaction_file_name(generation: int, ms: int, writer_id: str, n: int) -> str:
    """Name of a file written by compaction for manifest ``generation``."""
    return f"c-{generation:08d}-{ms:012x}-{writer_id}-{n}.parquet"


_OUR_SHAPE = re.compile(
    r"^(w-[0-9a-f]{12}-[0-9a-f]+-[^/]+|c-\d{8}-[0-9a-f]{12}-[^/]+-\d+)\.parquet$"
)


def is_our_file(name: str) -> bool:
    """True for a name kirim-events gives its files, whatever the writer id (an older
    version took ids such as ``host-1``, which :func:`is_writer_file` refuses)."""
    return bool(_OUR_SHAPE.match(name))


def is_writer_file(name: str) -> bool:
    """True for a writer file name (``w-...parquet``)."""
    return bool(_WRITER_FILE.match(name))


def is_compaction_file(name: str) -> bool:
    """True for a compaction output name (``c-...parquet``)."""
    return bool(_COMPACT_FILE.match(name))
