"""Delivery health per day and event type: volume, attempts, retries, lateness, duplicates.

``day`` is the UTC date on which *we received* something, so a row answers "what did our
endpoint see that day". Two sources are combined (full outer join on day and type):

* the ``deliveries`` table, our webhook receipts (``origin == "webhook"``): ``deliveries``
  (attempts seen), ``n_attempt_1`` .. ``n_attempt_8`` (attempt 8 and above in the last),
  ``retry_rate`` (share with attempt > 1), ``max_attempt``, ``duplicates`` (receipts whose
  outcome is ``duplicate``: an event we already had), ``rejected`` (bad signature) and
  ``quarantined`` (signed but unparseable); an attempt that is unknown or 0 (Kirim counts
  from 1) counts as a first attempt;
* the ``events`` table (one row per event, first copy), the events whose first copy came
  by webhook (a backfill's are not what our endpoint saw: days late by design): ``n_events``
  and their lateness, ``received_at - occurred_at`` in seconds: ``lateness_p50``,
  ``lateness_p90``, ``lateness_max``.

Rows that only one source knows have nulls in the other source's columns. As of an instant,
both sources count only what had been received by then (events also had to have happened).
"""

from __future__ import annotations

import polars as pl

from kirim_events.analytics._common import US, FrameLike, as_utc, cut, lazy, seconds
from kirim_events.events import TYPE_ALIASES
from kirim_events.timearg import TimeLike

__all__ = ["MAX_ATTEMPT", "delivery_health"]

MAX_ATTEMPT = 8  # Kirim's retry schedule has 8 attempts (kirim-api.md §3)

HEALTH_COLUMNS = (
    "day",
    "event_type",
    "deliveries",
    *(f"n_attempt_{n}" for n in range(1, MAX_ATTEMPT + 1)),
    "retry_rate",
    "max_attempt",
    "duplicates",
    "rejected",
    "quarantined",
    "n_events",
    "lateness_p50",
    "lateness_p90",
    "lateness_max",
)


def delivery_health(
    events: FrameLike,
    deliveries: FrameLike,
    *,
    as_of: TimeLike | None = None,
) -> pl.LazyFrame:
    """Per (day, event_type): deliveries, attempt distribution, retry rate, lateness, duplicates.

    Parameters
    ----------
    events
        Deduplicated events, e.g. ``lake.events()``.
    deliveries
        Delivery rows in DELIVERY_SCHEMA, e.g. ``lake.deliveries()``; only webhook receipts
        (``origin == "webhook"``) count.
    as_of
        Only receipts received, and events that happened and were received, by this
        instant count: what our endpoint had seen then.

    Returns
    -------
    polars.LazyFrame
        The columns of ``HEALTH_COLUMNS`` (module docstring), sorted by day, event_type.
    """
    events = lazy(events)
    deliveries = lazy(deliveries, "deliveries")
    receipts = deliveries.filter(pl.col("origin") == "webhook")
    seen = cut(events, as_of).filter(pl.col("origin") == "webhook")
    if as_of is not None:
        arrived = pl.col("received_at") <= pl.lit(as_utc(as_of), dtype=US)
        receipts = receipts.filter(arrived)
        seen = seen.filter(arrived)  # what our endpoint had seen by then
    attempt = pl.col("attempt").fill_null(1).clip(lower_bound=1)  # unknown or 0: the first
    outcome = pl.col("outcome")
    per_delivery = receipts.group_by(
        day=pl.col("received_at").dt.date(),
        # receipts stored before they were written under the lake's names
        event_type=pl.col("event_type").replace(TYPE_ALIASES),
    ).agg(
        pl.len().cast(pl.Int64).alias("deliveries"),
        *(
            (attempt == n).sum().cast(pl.Int64).alias(f"n_attempt_{n}")
            for n in range(1, MAX_ATTEMPT)
        ),
        (attempt >= MAX_ATTEMPT).sum().cast(pl.Int64).alias(f"n_attempt_{MAX_ATTEMPT}"),
        ((attempt > 1).sum().cast(pl.Float64) / pl.len().cast(pl.Float64)).alias("retry_rate"),
        attempt.max().cast(pl.Int64).alias("max_attempt"),
        (outcome == "duplicate").sum().cast(pl.Int64).alias("duplicates"),
        (outcome == "rejected").sum().cast(pl.Int64).alias("rejected"),
        (outcome == "quarantined").sum().cast(pl.Int64).alias("quarantined"),
    )
    # Lateness in whole microseconds, seconds only after the aggregation: quantiles of float
    # seconds differed from DuckDB's in the last bits, and so did a division inside the
    # aggregation (Polars multiplies by the reciprocal there).
    late = pl.col("received_at").dt.epoch("us") - pl.col("occurred_at").dt.epoch("us")
    late_us = pl.col("_late_us")
    lateness = ("lateness_p50", "lateness_p90", "lateness_max")
    per_event = (
        seen.with_columns(_late_us=late)
        .group_by(day=pl.col("received_at").dt.date(), event_type=pl.col("type"))
        .agg(
            pl.len().cast(pl.Int64).alias("n_events"),
            late_us.quantile(0.5, interpolation="linear").alias("lateness_p50"),
            late_us.quantile(0.9, interpolation="linear").alias("lateness_p90"),
            late_us.max().cast(pl.Float64).alias("lateness_max"),
        )
        .with_columns(seconds(pl.col(c)) for c in lateness)
    )
    return (
        per_delivery.join(per_event, on=["day", "event_type"], how="full", coalesce=True)
        .select(HEALTH_COLUMNS)
        .sort(["day", "event_type"], nulls_last=True)  # as DuckDB orders (a null type: a
        # rejected receipt without X-Kirim-Event)
    )
