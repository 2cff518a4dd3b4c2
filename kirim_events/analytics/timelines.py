"""Message status timelines rebuilt from raw status events, never last-write-wins.

Rules (kirim-api.md §6.1), shared with the DuckDB views in ``sql.py``:

* Input: ``message.status`` events with a ``message_id`` (the wamid) and a known status
  (``pending``, ``sent``, ``delivered``, ``read``, ``failed``); other statuses are ignored.
* ``sent_at`` / ``delivered_at`` / ``read_at`` / ``failed_at``: the earliest *event time* of
  that status, whatever the arrival order.
* ``status``: the highest rank reached, ``pending < sent < failed < delivered < read``. So
  failed outranks pending and sent, delivered and read outrank failed (the message did
  arrive), and nothing ever downgrades.
* A higher status implies the lower ones: ``reached_sent`` / ``reached_delivered`` say a step
  was reached even when its own event is missing (read implies delivered and sent, delivered
  implies sent); its time then stays null. ``failed`` implies nothing: a message that only
  failed was never sent.
* ``error_code`` / ``error_title``: those of the earliest failed event; ``error_label`` names
  the code from the §6.1 table (a code that is already one of Kirim's names there is its own
  label), ``other`` for an unknown code.
* Flags: ``out_of_order`` (an event arrived after one that happened later: in event-time
  order, some ``received_at`` is earlier than the latest ``received_at`` before it),
  ``read_without_delivered`` (read seen, delivered never seen), ``failed_after_delivered``
  (a failed status and a delivered or read status were both seen, in either order),
  ``never_sent`` (no ``sent`` event seen).
* ``time_to_deliver`` = delivered_at - sent_at, ``time_to_read`` = read_at - sent_at, float
  seconds, null when either side is unknown.
* ``phone_number_id`` / ``recipient_id`` / ``conversation_id``: the smallest non-null one
  seen (a message has one; only Kirim's optional ``kirim`` block carries the conversation
  id on Meta bodies).
* ``n_events``: distinct status events (one per ``event_key``). ``n_duplicates``: received
  copies beyond the first, summed over those events (null when the copies are unknown).

Ties in event time are broken by ``received_at``, then the status rank (a ``sent`` and a
``delivered`` at one instant: sent first), then ``event_key``; every engine uses that order,
so results are deterministic.
"""

from __future__ import annotations

import polars as pl

from kirim_events.analytics._common import (
    STATUS_EVENT_TYPES,
    STATUS_ORDER,
    STATUS_RANK,
    FrameLike,
    cut,
    dups_per,
    error_label,
    lazy,
    run_cum_max,
    run_start,
    seconds_between,
    with_dups,
)
from kirim_events.timearg import TimeLike

__all__ = ["message_status_history", "message_timelines", "status_events"]

_RANK_TO_STATUS = {rank: status for status, rank in STATUS_RANK.items()}
TIMELINE_COLUMNS = (
    "message_id",
    "phone_number_id",
    "recipient_id",
    "conversation_id",
    "sent_at",
    "delivered_at",
    "read_at",
    "failed_at",
    "status",
    "error_code",
    "error_title",
    "error_label",
    "n_events",
    "n_duplicates",
    "out_of_order",
    "read_without_delivered",
    "failed_after_delivered",
    "never_sent",
    "reached_sent",
    "reached_delivered",
    "time_to_deliver",
    "time_to_read",
    "first_received_at",
    "last_received_at",
)


def _ranked(events: pl.LazyFrame, as_of: TimeLike | None) -> pl.LazyFrame:
    """Status events with ``_rank``, in no particular order."""
    rows = cut(events, as_of).filter(
        pl.col("type").is_in(list(STATUS_EVENT_TYPES))
        & pl.col("message_id").is_not_null()
        & pl.col("status").is_in(list(STATUS_RANK))
    )
    return rows.with_columns(
        _rank=pl.col("status").replace_strict(STATUS_RANK, return_dtype=pl.Int8)
    )


def _status_rows(
    events: pl.LazyFrame, copies: pl.LazyFrame | None, as_of: TimeLike | None
) -> pl.LazyFrame:
    """Status events with ``_rank`` and ``_dups``, in no particular order."""
    return with_dups(_ranked(events, as_of), copies)


def _sorted(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Sort by message then event-time order; add ``_first`` (a message's first row) and
    ``_late`` (it arrived after an event of the message that happened later)."""
    last, arrival = pl.col("_last"), pl.col("_arrival")
    # The earliest arrival from each row to the message's end: a running max, read from
    # the end, of the arrival ranks mirrored (bound - rank, so the max is the earliest).
    bound = pl.len().cast(pl.Int64) + 1
    mirrored = run_cum_max((bound - arrival).reverse(), last.reverse(), bound).reverse()
    earliest_after = (bound - mirrored).shift(-1)
    # Each expression used twice is its own column first: the streaming engine does not
    # share common subexpressions as the in-memory one does, and computed them twice.
    return (
        rows.sort(["message_id", *STATUS_ORDER])
        .with_columns(
            _first=run_start("message_id"),
            _last=pl.col("message_id").ne_missing(pl.col("message_id").shift(-1)),
            # arrival order as an integer (dense rank), so that a running max per message
            # is a plain column operation (run_cum_max)
            _arrival=pl.col("received_at").rank("dense"),
        )
        .with_columns(_late=(~last & (arrival > earliest_after)).fill_null(False))
        .drop("_arrival", "_last")
    )


def status_events(
    events: FrameLike,
    *,
    copies: FrameLike | None = None,
    as_of: TimeLike | None = None,
) -> pl.LazyFrame:
    """The status events timelines are built from, sorted by message then event-time order.

    Adds ``_rank`` (the status precedence), ``_first`` (the message's first event),
    ``_late`` (this event arrived after an event of the same message that happened later,
    so that event arrived before it: a message has a late event exactly when it has an
    event that overtook another)
    and ``_dups`` (copies beyond the first, or null).
    """
    events = lazy(events)
    copies = None if copies is None else lazy(copies, "copies")
    return _sorted(_status_rows(events, copies, as_of))


def _first_at(status: str) -> str:
    """The column of a status's first event time while grouping: its output name
    (``sent_at``), so that an error in a filter on it, pushed down by Polars to where it is
    made, names the column the caller wrote (it named ``_o_sent``); ``pending`` has none."""
    return "_o_pending" if status == "pending" else f"{status}_at"


def _pairwise_late(statuses: list[str]) -> pl.Expr:
    """Some status happened before another yet arrived after it (one event per status)."""
    pairs = [
        (pl.col(_first_at(a)) < pl.col(_first_at(b))) & (pl.col(f"_r_{a}") > pl.col(f"_r_{b}"))
        for a in statuses
        for b in statuses
        if a != b
    ]
    return pl.any_horizontal(p.fill_null(False) for p in pairs)


def message_timelines(
    events: FrameLike,
    *,
    copies: FrameLike | None = None,
    as_of: TimeLike | None = None,
) -> pl.LazyFrame:
    """One row per outbound message (wamid): first time of each status, final status, flags.

    Parameters
    ----------
    events
        Deduplicated events (EVENT_SCHEMA columns), e.g. ``lake.events()``.
    copies
        Optional ``(event_key, n_copies)``: how many copies of each event were received,
        the first included (events not listed: one copy). Without it ``n_duplicates`` is
        null.
    as_of
        Answer as of this instant: only events with ``occurred_at <= as_of`` count.

    Returns
    -------
    polars.LazyFrame
        ``message_id``, ``phone_number_id``, ``recipient_id``, ``conversation_id``,
        ``sent_at``, ``delivered_at``, ``read_at``, ``failed_at``, ``status``,
        ``error_code``, ``error_title``, ``error_label``, ``n_events``, ``n_duplicates``,
        ``out_of_order``, ``read_without_delivered``, ``failed_after_delivered``,
        ``never_sent``, ``reached_sent``, ``reached_delivered``, ``time_to_deliver``,
        ``time_to_read``, ``first_received_at``, ``last_received_at``; in no particular
        order, like a group-by: add ``.sort("message_id")`` where the order matters (on a
        10M-event lake, sorting the 3M rows took about a quarter of the time).

    Examples
    --------
    >>> import polars as pl
    >>> from kirim_events.schema import events_table
    >>> message_timelines(pl.from_arrow(events_table([])).lazy()).collect().height
    0
    """
    events = lazy(events)
    copies = None if copies is None else lazy(copies, "copies")
    rows = _ranked(events, as_of)
    statuses = list(STATUS_RANK)
    failed = pl.col("_rank") == STATUS_RANK["failed"]
    # Fast path, one pass, no sort: each status's own event time and arrival, side by side.
    # Exact whenever a message has at most one event per status (Meta's event_key makes that
    # the rule); messages with more go through the sorted path below.
    spread = []
    for status, rank in STATUS_RANK.items():
        is_status = pl.col("_rank") == rank
        spread.append(pl.when(is_status).then(pl.col("occurred_at")).min().alias(_first_at(status)))
        spread.append(pl.when(is_status).then(pl.col("received_at")).min().alias(f"_r_{status}"))
    # The rows are not cached (the sorted path may read its few columns again): at 3M
    # events that was a little faster and took less peak memory than holding every row.
    grouped = (
        rows.group_by("message_id")
        .agg(
            pl.col("phone_number_id").min(),
            pl.col("recipient_id").min(),
            pl.col("conversation_id").min(),
            *spread,
            pl.col("_rank").max(),
            pl.len().cast(pl.Int64).alias("n_events"),
            pl.col("received_at").min().alias("first_received_at"),
            pl.col("received_at").max().alias("last_received_at"),
            # the only failed event's error (a message with several goes the sorted path)
            pl.col("error_code").filter(failed).first().alias("_code_fast"),
            pl.col("error_title").filter(failed).first().alias("_title_fast"),
        )
        .with_columns(
            _multi=pl.col("n_events")
            > pl.sum_horizontal(pl.col(_first_at(s)).is_not_null() for s in statuses),
            _late_fast=_pairwise_late(statuses),
        )
        .cache()
    )
    # Sorted path for the rare messages with several events of one status: arrival order
    # and the earliest failure's error in event-time order.
    multi = grouped.filter(pl.col("_multi")).select("message_id")
    slow = (
        _sorted(rows.join(multi, on="message_id", how="semi"))
        .group_by("message_id")
        .agg(
            pl.col("_late").any().alias("_late_slow"),
            pl.col("error_code").filter(failed).first().alias("_code_slow"),
            pl.col("error_title").filter(failed).first().alias("_title_slow"),
        )
    )
    grouped = pl.concat(
        [
            grouped.filter(~pl.col("_multi")).with_columns(
                out_of_order=pl.col("_late_fast"),
                error_code=pl.col("_code_fast"),
                error_title=pl.col("_title_fast"),
            ),
            grouped.filter(pl.col("_multi"))
            .join(slow, on="message_id", how="left")
            .with_columns(
                out_of_order=pl.col("_late_slow"),
                error_code=pl.col("_code_slow"),
                error_title=pl.col("_title_slow"),
            ),
        ],
        how="diagonal_relaxed",
    )
    if copies is None:
        grouped = grouped.with_columns(n_duplicates=pl.lit(None, dtype=pl.Int64))
    else:
        grouped = grouped.join(
            dups_per(rows, copies, "message_id"), on="message_id", how="left"
        ).with_columns(pl.col("n_duplicates").fill_null(0))
    delivered_or_read = pl.col("delivered_at").is_not_null() | pl.col("read_at").is_not_null()
    return grouped.with_columns(
        status=pl.col("_rank").replace_strict(_RANK_TO_STATUS, return_dtype=pl.String),
        error_label=error_label(pl.col("error_code")),
        read_without_delivered=pl.col("read_at").is_not_null() & pl.col("delivered_at").is_null(),
        failed_after_delivered=pl.col("failed_at").is_not_null() & delivered_or_read,
        never_sent=pl.col("sent_at").is_null(),
        reached_sent=pl.col("sent_at").is_not_null() | delivered_or_read,
        reached_delivered=delivered_or_read,
        time_to_deliver=seconds_between("delivered_at", "sent_at"),
        time_to_read=seconds_between("read_at", "sent_at"),
    ).select(TIMELINE_COLUMNS)


def message_status_history(
    events: FrameLike,
    *,
    copies: FrameLike | None = None,
    as_of: TimeLike | None = None,
) -> pl.LazyFrame:
    """One row per status event of each message, in event-time order, with its effect.

    Parameters
    ----------
    events
        Deduplicated events, e.g. ``lake.events()``.
    copies
        Optional ``(event_key, n_copies)``; see :func:`message_timelines`.
    as_of
        Only events with ``occurred_at <= as_of`` count.

    Returns
    -------
    polars.LazyFrame
        ``message_id``, ``seq`` (1, 2, ... in event-time order), ``event_key``, ``status``,
        ``occurred_at``, ``received_at``, ``previous_status`` (the status by precedence
        before this event; null for the first), ``current_status`` (after it),
        ``is_upgrade`` (it raised the status), ``arrived_late`` (it arrived after an event
        that happened later), ``error_code``, ``n_duplicates``; sorted by message_id, seq.
    """
    events = lazy(events)
    copies = None if copies is None else lazy(copies, "copies")
    rows = status_events(events, copies=copies, as_of=as_of)
    first, row = pl.col("_first"), pl.col("_row")
    return (
        rows.with_columns(
            _row=pl.int_range(pl.len(), dtype=pl.Int64),
            _after=run_cum_max(pl.col("_rank"), first, len(STATUS_RANK)),
        )
        .with_columns(
            seq=row - pl.when(first).then(row).forward_fill() + 1,
            _before=pl.when(~first).then(pl.col("_after").shift(1)),
        )
        .with_columns(
            previous_status=pl.col("_before").replace_strict(
                _RANK_TO_STATUS, default=None, return_dtype=pl.String
            ),
            current_status=pl.col("_after").replace_strict(_RANK_TO_STATUS, return_dtype=pl.String),
            is_upgrade=pl.col("_before").is_null() | (pl.col("_rank") > pl.col("_before")),
        )
        .select(
            "message_id",
            "seq",
            "event_key",
            "status",
            "occurred_at",
            "received_at",
            "previous_status",
            "current_status",
            "is_upgrade",
            pl.col("_late").alias("arrived_late"),
            "error_code",
            pl.col("_dups").alias("n_duplicates"),
        )
    )  # still in status_events' order: message_id, then seq
