"""Analytics over the lake: message status timelines, conversation lifecycles, delivery health.

``AnalyticsMixin`` is mixed into :class:`kirim_events.Lake`; each helper exists both as a
Polars LazyFrame method and as a DuckDB view of the same name (``analytics_views``), and the
two give the same rows. The rules live in the modules: ``timelines`` (message status
precedence and anomaly flags), ``conversations`` (cycles inferred in event-time order),
``health`` (per day and event type). ``notebook`` holds the summaries and charts.

Duplicates: the lake keeps one row per event, so copies are counted from our webhook
receipts (the ``deliveries`` table, ``origin == "webhook"``). A receipt whose outcome is
``duplicate`` is one more copy of every event first received under the same
``delivery_id`` (Kirim keeps the delivery id across retries, kirim-api.md §2). So
``n_duplicates`` = copies received beyond the first; a copy that came under a new delivery
id (a replay) is counted in ``delivery_health.duplicates`` but not attributed to an event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from kirim_events.analytics import conversations, health, sql, timelines
from kirim_events.analytics._common import STATUS_EVENT_TYPES
from kirim_events.timearg import TimeLike

__all__ = ["AnalyticsMixin", "event_copies"]


def event_copies(events: pl.LazyFrame, deliveries: pl.LazyFrame) -> pl.LazyFrame:
    """``(event_key, n_copies)`` for the events received more than once.

    Events not listed were received once. Webhook receipts (``origin == "webhook"``) whose
    outcome is ``duplicate`` add a copy to each event first received under the same
    ``delivery_id``.

    Parameters
    ----------
    events
        Deduplicated events (``event_key``, ``delivery_id``).
    deliveries
        Delivery rows (DELIVERY_SCHEMA).
    """
    dups = (
        deliveries.filter(
            (pl.col("origin") == "webhook")
            & (pl.col("outcome") == "duplicate")
            & pl.col("delivery_id").is_not_null()
        )
        .group_by("delivery_id")
        .agg(pl.len().cast(pl.Int64).alias("_n"))
    )
    return (
        events.select("event_key", "delivery_id")
        .join(dups, on="delivery_id", how="inner")
        .select("event_key", n_copies=pl.col("_n") + 1)
    )


_COPIES_SQL = """
    SELECT e.event_key, (1 + d.n)::BIGINT AS n_copies
    FROM events e JOIN (
      SELECT delivery_id, count(*) AS n FROM deliveries
      WHERE origin = 'webhook' AND outcome = 'duplicate' AND delivery_id IS NOT NULL
      GROUP BY delivery_id
    ) d ON d.delivery_id = e.delivery_id"""


class AnalyticsMixin:
    """Analytics methods for a Lake.

    The host class provides ``events()``, ``deliveries()`` and ``as_of_ts`` (None, or the
    instant the lake view is restricted to); every helper then answers as of that instant.
    """

    as_of_ts: datetime | None

    def events(
        self,
        type: str | Sequence[str] | None = None,
        *,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
    ) -> pl.LazyFrame:
        raise NotImplementedError

    def deliveries(self) -> pl.LazyFrame:
        raise NotImplementedError

    def event_copies(self) -> pl.LazyFrame:
        """``(event_key, n_copies)`` of events received more than once (module docstring)."""
        return event_copies(self.events(), self.deliveries())

    def _status_events(self) -> tuple[pl.LazyFrame, pl.LazyFrame]:
        """The status events and their copies, reading only the status types' folders.

        An event_key never spans two types, so the copies of the status events are found
        among the status events alone.
        """
        events = self.events(type=list(STATUS_EVENT_TYPES))
        return events, event_copies(events, self.deliveries())

    def message_timelines(self) -> pl.LazyFrame:
        """One row per outbound message (wamid); see :func:`timelines.message_timelines`."""
        events, copies = self._status_events()
        return timelines.message_timelines(events, copies=copies, as_of=self.as_of_ts)

    def message_status_history(self) -> pl.LazyFrame:
        """One row per status event; see :func:`timelines.message_status_history`."""
        events, copies = self._status_events()
        return timelines.message_status_history(events, copies=copies, as_of=self.as_of_ts)

    def conversation_lifecycles(self) -> pl.LazyFrame:
        """One row per conversation; see :func:`conversations.conversation_lifecycles`."""
        return conversations.conversation_lifecycles(
            self.events(), copies=self.event_copies(), as_of=self.as_of_ts
        )

    def conversation_cycles(self) -> pl.LazyFrame:
        """One row per open->close cycle; see :func:`conversations.conversation_cycles`."""
        return conversations.conversation_cycles(
            self.events(), copies=self.event_copies(), as_of=self.as_of_ts
        )

    def delivery_health(self) -> pl.LazyFrame:
        """Per day and event type; see :func:`health.delivery_health`."""
        return health.delivery_health(self.events(), self.deliveries(), as_of=self.as_of_ts)

    def analytics_views(self) -> dict[str, str]:
        """DuckDB ``CREATE VIEW`` bodies (name -> SELECT over ``events``/``deliveries``).

        ``event_copies`` comes first: the others read it.
        """
        views = {"event_copies": _COPIES_SQL}
        views.update(
            sql.analytics_views(
                as_of=self.as_of_ts, copies="SELECT event_key, n_copies FROM event_copies"
            )
        )
        return views
