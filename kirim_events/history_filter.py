"""The filters a user gives a history walk, checked again on the rows Kirim returns.

kirim-api.md §7.4 only assumes the list endpoint's filters (``subscription_id``, ``status``,
``event_type``, ``event_id``, ``created_after`` / ``created_before``): a real Kirim may ignore
one, or know it by another name, and return every row. Backfill, reconcile and ``deliveries
list`` send the filters and then keep only the rows that match them, counting per filter the
rows Kirim returned outside it, so that the user is told once instead of getting rows they
did not ask for (or losing them without a word).

Matching is tolerant: a row only counts as outside a filter when it shows a value for that
field and the value differs. A row without the field (Kirim documents only ``id``,
``object``, ``status`` and ``replayed_from``) cannot be shown to be outside, so it is kept
and counted apart (:attr:`FilterTally.unchecked`): dropping it could lose a row the user
asked for. ``event_type`` is compared under the lake's names (``message.status_updated`` is
``message.status``, as :func:`~kirim_events.events.canonical_type` stores both); the others
exactly, as Kirim matches names (§7.5).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kirim_events.client import Delivery
from kirim_events.events import canonical_type

__all__ = ["TIME_FILTER", "FilterTally", "HistoryFilter"]

TIME_FILTER = "--since/--until"
"""How the notes name the time range (``created_after`` / ``created_before`` on the wire)."""

_FIELDS = ("subscription_id", "status", "event_type", "event_id")


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """The field filters of a walk (None: not asked); the time range is the walk's own."""

    subscription_id: str | None = None
    status: str | None = None
    event_type: str | None = None
    event_id: str | None = None

    @classmethod
    def of(cls, filters: dict[str, str]) -> HistoryFilter:
        """From the query parameters sent (unknown names are not row fields: ignored)."""
        return cls(**{k: v for k, v in filters.items() if k in _FIELDS and v})

    def asked(self) -> dict[str, str]:
        """The filters given, by their query parameter names."""
        return {k: v for k in _FIELDS if (v := getattr(self, k))}

    def check(self, d: Delivery) -> tuple[str | None, list[str]]:
        """``(outside, unchecked)``: the first filter ``d`` shows a value outside of (None
        when it matches), and the filters it carries no value for (kept: not shown outside)."""
        unchecked: list[str] = []
        for name in _FIELDS:  # per row of a backfill: no dict built here
            wanted = getattr(self, name)
            if not wanted:
                continue
            value = getattr(d, name)
            if name == "event_type":
                value, wanted = canonical_type(value), canonical_type(wanted)
            if value is None:
                unchecked.append(name)
            elif value != wanted:
                return name, unchecked
        return None, unchecked


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class FilterTally:
    """Rows Kirim returned outside each filter (skipped), and rows kept that carried no value
    for a filter (``unchecked``); counted each time a page holding them is read."""

    outside: Counter[str] = field(default_factory=Counter)
    unchecked: Counter[str] = field(default_factory=Counter)

    def add(self, other: FilterTally) -> None:
        """Add another tally's counts (a page's, into a run's)."""
        self.outside.update(other.outside)
        self.unchecked.update(other.unchecked)

    def keep(self, flt: HistoryFilter, d: Delivery) -> bool:
        """Whether ``d`` matches ``flt``, counting it here when it does not, or is unchecked."""
        outside, unchecked = flt.check(d)
        if outside is not None:
            self.outside[outside] += 1
            return False
        self.unchecked.update(unchecked)
        return True

    def notes(self, flt: HistoryFilter, *, stored: str = "stored") -> list[str]:
        """One line per filter Kirim did not apply to every row, naming the flag, its value
        and the count (``TIME_FILTER`` for rows outside the time range)."""
        asked = flt.asked()
        out: list[str] = []
        for name, n in sorted(self.outside.items()):
            what = TIME_FILTER if name == TIME_FILTER else f"{_flag(name)} {asked.get(name, '')}"
            out.append(
                f"Kirim returned {n} row(s) outside {what.strip()} (it may ignore that filter or"
                f" know it by another name): skipped, not {stored}"
            )
        for name, n in sorted(self.unchecked.items()):
            out.append(
                f"{n} row(s) from Kirim carry no {name}, so nothing shows them outside"
                f" {_flag(name)} {asked.get(name, '')}: {stored} all the same"
            )
        return out

    def __bool__(self) -> bool:
        return bool(self.outside or self.unchecked)
