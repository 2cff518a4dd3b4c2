"""How ``deliveries list`` lays out its rows: a table when it fits the terminal, else three
lines a delivery, every id whole."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from kirim_events.client import Delivery, format_time
from kirim_events.printable import printable

__all__ = ["deliveries_view"]

# the stacked layout's lines: the short columns, aligned; then, indented, the time and the
# event type; then the event id alone (a wamid is 60 characters and more)
_LINES = (("id", "status", "attempt", "code"), ("created", "event type"), ("event id",))
_RIGHT = {"attempt", "code"}  # numbers


def _fields(d: Delivery) -> dict[str, str]:
    """What a row shows, as text: what Kirim's API said, shown, never obeyed."""
    created = "-" if d.created_at is None else format_time(d.created_at)
    values = {
        "id": d.id, "status": d.status, "attempt": d.attempt,
        "code": d.response_status_code, "created": created,
        "event type": d.event_type, "event id": d.event_id,
    }  # fmt: skip
    return {k: printable("-" if v is None or v == "" else v) for k, v in values.items()}


def _table(rows: Sequence[dict[str, str]]) -> Table:
    table = Table()
    for name in ("id", "status", "event type", "event id", "attempt", "code", "created"):
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(row["id"], row["status"], row["event type"], row["event id"],
                      row["attempt"], row["code"], row["created"])  # fmt: skip
    return table


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * max(0, width - cell_len(text))
    return gap + text if right else text + gap


def _stacked(rows: Sequence[dict[str, str]]) -> Group:
    """Each delivery on three lines: its id, status, attempt and response code; then,
    indented, its time and event type; then its event id. Columns aligned, nothing cut or
    folded (a line longer than the terminal is wrapped by it, not by rich)."""
    names = [n for line in _LINES for n in line]
    widths = {n: max([cell_len(n), *(cell_len(r[n]) for r in rows)]) for n in names}

    def lines(values: dict[str, str]) -> list[str]:
        return [
            ("  " if i else "")
            + "  ".join(_pad(values[n], widths[n], n in _RIGHT) for n in line).rstrip()
            for i, line in enumerate(_LINES)
        ]

    head = lines({n: n for n in names})
    out = [Text(line, style="bold") for line in head]
    first = sum(widths[n] for n in _LINES[0]) + 2 * (len(_LINES[0]) - 1)
    out.append(Text("─" * first, style="dim"))
    out += [Text(line) for r in rows for line in lines(r)]
    return Group(*out)


def deliveries_view(deliveries: Sequence[Delivery], console: Console) -> RenderableType:
    """The deliveries as a table, one line each, when that fits ``console``'s width; else
    stacked (:func:`_stacked`). A table squeezed into 80 columns folded each long wamid
    into five-character pieces, one per line: unreadable, and not to be copied."""
    rows = [_fields(d) for d in deliveries]
    table = _table(rows)
    unbounded = console.options.update_width(1_000_000)  # the table's natural width
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        return table
    return _stacked(rows)
