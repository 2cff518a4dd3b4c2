"""Analytics over the lake: message status timelines, conversation lifecycles, delivery health.

``AnalyticsMixin`` is mixed into :class:`kirim_events.Lake`; each helper exists both as a
Polars LazyFrame method and as a DuckDB view of the same name (see ``analytics_views``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl


class AnalyticsMixin:
    """Analytics methods for a Lake. The host class provides ``events()``, ``deliveries()``
    and ``as_of_ts`` (None, or the instant the lake view is restricted to)."""

    as_of_ts: datetime | None

    def events(self, type: str | None = None, **kwargs: Any) -> pl.LazyFrame:
        raise NotImplementedError

    def deliveries(self) -> pl.LazyFrame:
        raise NotImplementedError

    def analytics_views(self) -> dict[str, str]:
        """DuckDB ``CREATE VIEW`` bodies (name -> SELECT over ``events``/``deliveries``)."""
        return {}
