"""Text from webhooks and APIs made safe to show on a terminal or in a log line.

Anyone who can reach the collector sets header values, and a signed webhook sets error
titles; printed raw, an ESC in them can retitle the window, erase a line and write a forged
one, or hide a link, and a bidi control can reorder what is read. :func:`printable` shows
every such character as an escape (``\\x1b``, ``\\n``, ``\\u202e``) and leaves all else as it was.
"""

from __future__ import annotations

__all__ = ["printable"]

# C0 controls, DEL, C1 controls, and the Unicode bidi and invisible-direction marks.
_UNSAFE = [
    *range(0x00, 0x20),
    0x7F,
    *range(0x80, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0x2028,
    0x2029,
]


def _escape(code: int) -> str:
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    return named.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


_TABLE = {code: _escape(code) for code in _UNSAFE}
_TABLE_KEEP_LINES = {code: text for code, text in _TABLE.items() if chr(code) not in "\n\t"}


def printable(text: object, *, lines: bool = False) -> str:
    """``str(text)`` with control and bidi characters escaped; ``lines`` keeps line breaks
    and tabs (for a message of several lines; a log line must stay one line)."""
    return str(text).translate(_TABLE_KEEP_LINES if lines else _TABLE)
