"""Conversation lifecycles and open->close cycles, inferred from events in event-time order.

Kirim sends no opened or reopened event (kirim-api.md §6.2), so the lifecycle is inferred
from every event that carries a ``cnv_`` id (``conversation_id``), in event-time order, never
arrival order. Rules, shared with the DuckDB views in ``sql.py``:

* Order: ``occurred_at``, then ``received_at``, then ``event_key`` (a total order).
* Cycle: an event belongs to cycle ``1 + (closes of this conversation with an earlier event
  time)``. So the first event opens cycle 1, any event *strictly after* a close opens the
  next cycle (a reopen), and events at the very instant of a close still belong to it.
* Opening: the time of a cycle's first event. Close: ``conversation.closed``.
* Assignment: ``conversation.assigned`` with a ``user_id``; one with a null ``user_id`` is an
  unassignment (accepted, kirim-api.md §4.4). First assignment of a conversation: the earliest
  assignment whose ``previous_user_id`` is null.
* Missing transitions are flagged, not invented: an assignment whose ``previous_user_id``
  is not the assignee of the assignment event before it (in event-time order; none for the
  first) means a reassignment we never saw (``n_missing_assignments``); a conversation whose
  first seen assignment already names a previous user has ``missing_first_assignment``
  and a null ``first_assigned_at``.
* Times are float seconds: ``time_to_first_assignment`` = first_assigned_at - opened_at,
  ``time_to_close`` = closed_at - opened_at, null while the conversation (or cycle) is open.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from kirim_events.analytics._common import cut, seconds_between

__all__ = ["conversation_cycles", "conversation_events", "conversation_lifecycles"]

ORDER = ("occurred_at", "received_at", "event_key")
ASSIGNED = "conversation.assigned"
CLOSED = "conversation.closed"


def conversation_events(
    events: pl.LazyFrame,
    *,
    copies: pl.LazyFrame | None = None,
    as_of: datetime | None = None,
) -> pl.LazyFrame:
    """Events with a conversation id, in event-time order, each tagged with its ``cycle``.

    Adds ``cycle``, ``_assign`` (an assignment to a user), ``_close``, ``_missing`` (an
    assignment event whose previous user is not the assignee before it) and ``_dups``.
    """
    rows = cut(events, as_of).filter(pl.col("conversation_id").is_not_null())
    if copies is None:
        rows = rows.with_columns(_dups=pl.lit(None, dtype=pl.Int64))
    else:
        per_key = copies.select("event_key", (pl.col("n_copies").cast(pl.Int64) - 1).alias("_dups"))
        rows = rows.join(per_key, on="event_key", how="left").with_columns(
            pl.col("_dups").fill_null(0)
        )
    is_close = (pl.col("type") == CLOSED).cast(pl.Int64)
    rows = (
        rows.sort(["conversation_id", *ORDER])
        .with_columns(_close_n=is_close, _assigned_evt=pl.col("type") == ASSIGNED)
        .with_columns(_through=pl.col("_close_n").cum_sum().over("conversation_id"))
        .with_columns(
            # closes up to and including this instant, minus those at this very instant
            cycle=(pl.col("_through").max() - pl.col("_close_n").sum() + 1).over(
                "conversation_id", "occurred_at"
            ),
            _close=pl.col("_close_n") == 1,
            _assign=pl.col("_assigned_evt") & pl.col("user_id").is_not_null(),
        )
    )
    # The assignee before each assignment event = user_id of the previous assignment event.
    assigns = rows.filter(pl.col("_assigned_evt")).select(
        "event_key",
        _missing=pl.col("previous_user_id")
        .ne_missing(pl.col("user_id").shift(1))
        .over("conversation_id"),
    )
    return (
        rows.join(assigns, on="event_key", how="left", maintain_order="left")
        .with_columns(pl.col("_missing").fill_null(False))
        .drop("_through", "_close_n", "_assigned_evt")
    )


def _agg(rows: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """Aggregations shared by cycles and lifecycles (rows are in event-time order)."""
    assign = pl.col("_assign")
    assign_evt = pl.col("type") == ASSIGNED
    close = pl.col("_close")
    return rows.group_by(keys).agg(
        pl.col("occurred_at").min().alias("opened_at"),
        pl.col("occurred_at").filter(assign).min().alias("_first_assign_any"),
        pl.col("occurred_at")
        .filter(assign & pl.col("previous_user_id").is_null())
        .min()
        .alias("_first_assign_root"),
        assign.sum().cast(pl.Int64).alias("n_assignments"),
        pl.col("user_id").filter(assign).n_unique().cast(pl.Int64).alias("n_assignees"),
        pl.col("user_id").filter(assign_evt).last().alias("assignee_id"),
        close.sum().cast(pl.Int64).alias("n_closes"),
        pl.col("occurred_at").filter(close).max().alias("closed_at"),
        pl.col("closed_by_user_id").filter(close).last(),
        pl.col("cycle").max().alias("n_cycles"),
        pl.col("cycle").filter(close).max().alias("_last_closed_cycle"),
        pl.col("_missing").sum().cast(pl.Int64).alias("n_missing_assignments"),
        pl.col("_missing").filter(assign_evt).first().alias("_first_missing"),
        pl.len().cast(pl.Int64).alias("n_events"),
        pl.col("_dups").sum().alias("n_duplicates"),
        pl.col("occurred_at").max().alias("last_event_at"),
    )


def conversation_cycles(
    events: pl.LazyFrame,
    *,
    copies: pl.LazyFrame | None = None,
    as_of: datetime | None = None,
) -> pl.LazyFrame:
    """One row per (conversation_id, cycle): each open -> close stretch of a conversation.

    Parameters
    ----------
    events
        Deduplicated events, e.g. ``lake.events()``.
    copies
        Optional ``(event_key, n_copies)``: received copies per event, the first included.
    as_of
        Only events with ``occurred_at <= as_of`` count.

    Returns
    -------
    polars.LazyFrame
        ``conversation_id``, ``cycle`` (1, 2, ...), ``opened_at``, ``first_assigned_at``
        (earliest assignment in the cycle), ``n_assignments``, ``n_assignees``,
        ``assignee_id`` (of the cycle's last assignment event), ``n_closes``, ``closed_at``,
        ``closed_by_user_id``, ``is_open``, ``is_reopen`` (cycle > 1),
        ``n_missing_assignments``, ``time_to_first_assignment``, ``time_to_close``,
        ``n_events``, ``n_duplicates``, ``last_event_at``; sorted by conversation_id, cycle.
    """
    rows = conversation_events(events, copies=copies, as_of=as_of)
    out = _agg(rows, ["conversation_id", "cycle"])
    if copies is None:
        out = out.with_columns(n_duplicates=pl.lit(None, dtype=pl.Int64))
    return (
        out.with_columns(
            first_assigned_at=pl.col("_first_assign_any"),
            is_open=pl.col("n_closes") == 0,
            is_reopen=pl.col("cycle") > 1,
        )
        .with_columns(
            time_to_first_assignment=seconds_between("first_assigned_at", "opened_at"),
            time_to_close=seconds_between("closed_at", "opened_at"),
        )
        .select(
            "conversation_id",
            "cycle",
            "opened_at",
            "first_assigned_at",
            "n_assignments",
            "n_assignees",
            "assignee_id",
            "n_closes",
            "closed_at",
            "closed_by_user_id",
            "is_open",
            "is_reopen",
            "n_missing_assignments",
            "time_to_first_assignment",
            "time_to_close",
            "n_events",
            "n_duplicates",
            "last_event_at",
        )
        .sort(["conversation_id", "cycle"])
    )


def conversation_lifecycles(
    events: pl.LazyFrame,
    *,
    copies: pl.LazyFrame | None = None,
    as_of: datetime | None = None,
) -> pl.LazyFrame:
    """One row per conversation: opening, assignments, closes, reopens, open now.

    Parameters
    ----------
    events
        Deduplicated events, e.g. ``lake.events()``.
    copies
        Optional ``(event_key, n_copies)``: received copies per event, the first included.
    as_of
        Answer as of this instant (``is_open`` is then "open at as_of").

    Returns
    -------
    polars.LazyFrame
        ``conversation_id``, ``opened_at``, ``first_assigned_at``, ``n_assignments``,
        ``n_assignees``, ``assignee_id`` (user of the last assignment event; null after an
        unassignment), ``n_closes``, ``n_reopens``, ``n_cycles``, ``closed_at`` (last close),
        ``closed_by_user_id`` (of the last close), ``is_open``,
        ``time_to_first_assignment``, ``time_to_close``, ``missing_first_assignment``,
        ``n_missing_assignments``, ``n_events``, ``n_duplicates``, ``last_event_at``;
        sorted by conversation_id.
    """
    rows = conversation_events(events, copies=copies, as_of=as_of)
    out = _agg(rows, ["conversation_id"])
    if copies is None:
        out = out.with_columns(n_duplicates=pl.lit(None, dtype=pl.Int64))
    is_open = pl.col("_last_closed_cycle").is_null() | (
        pl.col("_last_closed_cycle") < pl.col("n_cycles")
    )
    missing_first = pl.col("_first_missing").fill_null(False)
    return (
        out.with_columns(
            is_open=is_open,
            n_reopens=pl.col("n_cycles") - 1,
            missing_first_assignment=missing_first,
            first_assigned_at=pl.when(missing_first)
            .then(None)
            .otherwise(pl.col("_first_assign_root")),
        )
        .with_columns(
            time_to_first_assignment=seconds_between("first_assigned_at", "opened_at"),
            time_to_close=pl.when(pl.col("is_open"))
            .then(None)
            .otherwise(seconds_between("closed_at", "opened_at")),
        )
        .select(
            "conversation_id",
            "opened_at",
            "first_assigned_at",
            "n_assignments",
            "n_assignees",
            "assignee_id",
            "n_closes",
            "n_reopens",
            "n_cycles",
            "closed_at",
            "closed_by_user_id",
            "is_open",
            "time_to_first_assignment",
            "time_to_close",
            "missing_first_assignment",
            "n_missing_assignments",
            "n_events",
            "n_duplicates",
            "last_event_at",
        )
        .sort("conversation_id")
    )
