"""Conversation lifecycles and open->close cycles, inferred from events in event-time order.

Kirim sends no opened or reopened event (kirim-api.md §6.2), so the lifecycle is inferred
from every event that carries a ``cnv_`` id (``conversation_id``), in event-time order, never
arrival order. Rules, shared with the DuckDB views in ``sql.py``:

* Order: ``occurred_at``, then ``received_at``, then ``event_key`` (a total order); but
  assignments at one instant follow their chain first (``ASSIGNMENT_ORDER``): one whose
  ``previous_user_id`` is the user of another assignment of the conversation at that
  instant comes after it, whatever arrived first (Kirim's times have whole seconds).
* Cycle: an event belongs to cycle ``1 + (instants of closes of this conversation earlier
  than its event time)``. So the first event opens cycle 1, any event *strictly after* a
  close opens the next cycle (a reopen), events at the very instant of a close still belong
  to it, and closes at one instant end one cycle (``n_closes`` still counts each).
* Opening: the time of a cycle's first event. Close: ``conversation.closed``.
* Assignment: ``conversation.assigned`` with a ``user_id``; one with a null ``user_id`` is an
  unassignment (accepted, kirim-api.md §4.4). First assignment of a conversation: the earliest
  assignment whose ``previous_user_id`` is null.
* Missing transitions are flagged, not invented: an assignment whose ``previous_user_id``
  is not the assignee of the assignment event before it (in event-time order; none for the
  first) means a reassignment we never saw (``n_missing_assignments``); a conversation whose
  first seen assignment already names a previous user has ``missing_first_assignment``
  and a null ``first_assigned_at``.
* An opening not seen is flagged too: ``missing_opening`` when no event that can open a
  conversation (``OPENING_TYPES``: a message, inbound or outbound, or an outbound
  message's status) is at the first instant seen of the conversation (or cycle), as when
  Meta bodies come without Kirim's ``kirim`` block (no conversation id on messages) or the
  lake starts mid-way.
  ``opened_at`` is still the first event seen; the times from it are null then.
* Times are float seconds: ``time_to_first_assignment`` = first_assigned_at - opened_at,
  ``time_to_close`` = closed_at - opened_at, null while the conversation (or cycle) is open
  and when ``missing_opening``.
"""

from __future__ import annotations

import polars as pl

from kirim_events.analytics._common import (
    ASSIGNMENT_ORDER,
    CHAIN_ROUNDS,
    ORDER,
    FrameLike,
    copied,
    cut,
    dups_per,
    lazy,
    run_start,
    seconds_between,
)
from kirim_events.timearg import TimeLike

__all__ = ["conversation_cycles", "conversation_lifecycles"]

ASSIGNED = "conversation.assigned"
CLOSED = "conversation.closed"
OPENING_TYPES = ("message.received", "message.sent", "message.created", "message.status")
"""Events that can open a conversation: a message either way, or an outbound message's
status. Assignments, closes, edits and revokes (of a message not seen), contact changes
and types Kirim may add cannot."""


def _rows(events: pl.LazyFrame, as_of: TimeLike | None) -> pl.LazyFrame:
    """Events carrying a conversation id, cut at ``as_of``.

    Duplicates are counted apart (``copied`` on :func:`_keys`), so the events themselves
    are never joined to the copies.
    """
    return cut(events, as_of).filter(pl.col("conversation_id").is_not_null())


def _keys(events: pl.LazyFrame, as_of: TimeLike | None) -> pl.LazyFrame:
    """What counting duplicates needs of :func:`_rows`, read by a plan of its own: with the
    same plan as ``_rows``, Polars caches every event's columns for both uses (at 10M
    events lifecycles took 1.3 s to 1.65 s and twice the memory)."""
    columns = events.select("event_key", "conversation_id", "occurred_at")
    return cut(columns, as_of).filter(pl.col("conversation_id").is_not_null())


def _with_chain(assigned: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``_chain``: how many assignments of the conversation at the same instant come
    before this one along their chain (``ASSIGNMENT_ORDER``); 0 for nearly every row.

    An assignment follows another of its instant when its ``previous_user_id`` is that
    one's ``user_id``. ``_chain`` is 0 for one that follows none, else 1 + the largest
    ``_chain`` of those it follows, taken ``CHAIN_ROUNDS`` times over the few linked pairs
    (each round on the pairs alone; the rows are joined twice: to find the pairs, and to
    take their ``_chain``). The same rule as the views' (``sql.py``).
    """
    ident = ["conversation_id", "occurred_at", "event_key"]
    instant = ["conversation_id", "occurred_at"]
    # read once: the three uses below project and filter apart, so without the cache Polars
    # scanned the assignments' files three times (at 3M events the chain added 12% to the
    # lifecycles' CPU time on one thread, 3% with the cache)
    assigned = assigned.cache()
    followed = assigned.select(
        *instant, pl.col("user_id").alias("previous_user_id"), pl.col("event_key").alias("_p")
    )
    links = (
        assigned.select(*ident, "previous_user_id")
        .filter(pl.col("previous_user_id").is_not_null())  # most are first assignments
        .join(followed, on=[*instant, "previous_user_id"], how="inner")
        .filter(pl.col("event_key") != pl.col("_p"))
        .select(*ident, "_p")
    )
    chain = links.group_by(ident).agg(pl.lit(1, dtype=pl.Int64).alias("_chain"))
    for _ in range(CHAIN_ROUNDS - 1):
        chain = (
            links.join(chain.rename({"event_key": "_p"}), on=[*instant, "_p"], how="left")
            .group_by(ident)
            .agg((pl.col("_chain").fill_null(0).max() + 1).alias("_chain"))
        )
    return assigned.join(chain, on=ident, how="left").with_columns(pl.col("_chain").fill_null(0))


def _assignments(rows: pl.LazyFrame) -> pl.LazyFrame:
    """``conversation.assigned`` events in event-time order (``ASSIGNMENT_ORDER``) with
    ``_chain`` and ``_missing`` (module doc).

    The rows are sorted by conversation first, so the assignment before a row is the row
    above it when that row has the same conversation (none at a conversation's first row):
    a plain shift, which gives what ``shift(1).over("conversation_id")`` would without its
    per-group pass (most of this step's time at 3M events).
    """
    before = pl.when(~run_start("conversation_id")).then(pl.col("user_id").shift(1))
    return (
        _with_chain(rows.filter(pl.col("type") == ASSIGNED))
        .sort(["conversation_id", *ASSIGNMENT_ORDER])
        .with_columns(_missing=pl.col("previous_user_id").ne_missing(before))
    )


def _closes(rows: pl.LazyFrame) -> pl.LazyFrame:
    """``conversation.closed`` events in event-time order."""
    return rows.filter(pl.col("type") == CLOSED).sort(["conversation_id", *ORDER])


def _with_cycle(frame: pl.LazyFrame, closes: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``cycle`` = 1 + close instants of the conversation strictly before each row's
    event time (closes at one instant end one cycle: the next starts after them).

    Most conversations have closes at one instant at most; their rows get the cycle from a
    hash join with that instant. Only the rows of conversations closed at several instants
    are sorted by time for an as-of join; sorting every row took about half the time of the
    cycles at 10M events.
    """
    key = "conversation_id"
    per_instant = closes.group_by(key, "occurred_at").agg(pl.lit(1, dtype=pl.Int64).alias("_n"))
    first = per_instant.group_by(key).agg(
        pl.col("occurred_at").min().alias("_c1"),
        pl.col("_n").get(pl.col("occurred_at").arg_min()).alias("_n1"),
        pl.len().alias("_instants"),
    )
    joined = frame.join(first, on=key, how="left")
    after_first = pl.col("occurred_at") > pl.col("_c1")
    one = joined.filter(pl.col("_instants").fill_null(0) <= 1).with_columns(
        cycle=pl.when(after_first).then(pl.col("_n1")).otherwise(0) + 1
    )
    marks = (
        per_instant.join(first.filter(pl.col("_instants") > 1).select(key), on=key, how="semi")
        .sort([key, "occurred_at"])
        .with_columns(_k=pl.col("_n").cum_sum().over(key))
        .select(key, "occurred_at", "_k")
        .sort("occurred_at")
    )
    several = (
        joined.filter(pl.col("_instants") > 1)
        .sort("occurred_at")
        .join_asof(
            marks,
            on="occurred_at",
            by=key,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # both sides are sorted by occurred_at just above
        )
        .with_columns(cycle=pl.col("_k").fill_null(0) + 1)
        .drop("_k")
    )
    return pl.concat([one, several]).drop("_c1", "_n1", "_instants")


def _assignment_aggs() -> list[pl.Expr]:
    user = pl.col("user_id")
    return [
        user.is_not_null().sum().cast(pl.Int64).alias("n_assignments"),
        user.drop_nulls().n_unique().cast(pl.Int64).alias("n_assignees"),
        user.last().alias("assignee_id"),
        pl.col("_missing").sum().cast(pl.Int64).alias("n_missing_assignments"),
    ]


def _close_aggs() -> list[pl.Expr]:
    return [
        pl.len().cast(pl.Int64).alias("n_closes"),
        pl.col("occurred_at").max().alias("closed_at"),
        pl.col("closed_by_user_id").last(),
    ]


def _base_aggs() -> list[pl.Expr]:
    opening = pl.col("type").is_in(OPENING_TYPES)
    return [
        pl.col("occurred_at").min().alias("opened_at"),
        pl.col("occurred_at").max().alias("last_event_at"),
        pl.len().cast(pl.Int64).alias("n_events"),
        # when/then, not filter: at 10M events a filter in the group-by added 16% to the
        # lifecycles, when/then 3%
        pl.when(opening).then(pl.col("occurred_at")).min().alias("_first_opening"),
    ]


def _missing_opening() -> pl.Expr:
    """No event that can open a conversation (``OPENING_TYPES``) at its first instant: the
    opening was not seen."""
    first = pl.col("_first_opening")
    return (first.is_null() | (first > pl.col("opened_at"))).alias("missing_opening")


def _since_opening(later: str, *, unless: pl.Expr | None = None) -> pl.Expr:
    """Seconds from the opening to ``later``; null when the opening was not seen (the first
    event seen stands in for it, and a time from it would be invented) or ``unless``."""
    hidden = pl.col("missing_opening") if unless is None else pl.col("missing_opening") | unless
    return pl.when(hidden).then(None).otherwise(seconds_between(later, "opened_at"))


_ZERO = ("n_assignments", "n_assignees", "n_missing_assignments", "n_closes")


def conversation_cycles(
    events: FrameLike,
    *,
    copies: FrameLike | None = None,
    as_of: TimeLike | None = None,
) -> pl.LazyFrame:
    """One row per (conversation_id, cycle): each open -> close stretch of a conversation.

    Parameters
    ----------
    events
        Deduplicated events, e.g. ``lake.events()``.
    copies
        Optional ``(event_key, n_copies)``: received copies per event, the first included
        (events not listed: one copy).
    as_of
        Only events with ``occurred_at <= as_of`` count.

    Returns
    -------
    polars.LazyFrame
        ``conversation_id``, ``cycle`` (1, 2, ...), ``opened_at``, ``first_assigned_at``
        (earliest assignment in the cycle; null when ``missing_first_assignment``),
        ``n_assignments``, ``n_assignees``, ``assignee_id`` (of the cycle's last assignment
        event), ``n_closes``, ``closed_at``, ``closed_by_user_id``, ``is_open``,
        ``is_reopen`` (cycle > 1), ``missing_first_assignment`` (in the cycle of the
        conversation's first assignment event only: it already names a previous user, as
        in the lifecycle), ``missing_opening`` (the cycle's opening was not seen; module
        doc), ``n_missing_assignments``, ``time_to_first_assignment``,
        ``time_to_close``, ``n_events``, ``n_duplicates``, ``last_event_at``; sorted by
        conversation_id, cycle
        (the same order under Polars' streaming and in-memory engines, and in the view).
    """
    events = lazy(events)
    copies = None if copies is None else lazy(copies, "copies")
    rows = _rows(events, as_of)
    closes = _closes(rows)
    keys = ["conversation_id", "cycle"]
    base = _with_cycle(rows, closes).group_by(keys).agg(_base_aggs())
    assigned = (
        _with_cycle(_assignments(rows), closes)
        .sort([*keys, *ASSIGNMENT_ORDER])
        .group_by(keys)
        .agg(
            pl.col("occurred_at")
            .filter(pl.col("user_id").is_not_null())
            .min()
            .alias("_first_assigned"),
            pl.col("_missing").first().alias("_missing_first"),
            *_assignment_aggs(),
        )
        .with_columns(
            # in the cycle of the conversation's first assignment event (cycle 1, unless the
            # first events seen are a close): the first assignment was never seen, as in
            # the lifecycle
            missing_first_assignment=pl.col("_missing_first")
            & (pl.col("cycle") == pl.col("cycle").min().over("conversation_id"))
        )
        .with_columns(
            first_assigned_at=pl.when(pl.col("missing_first_assignment"))
            .then(None)
            .otherwise(pl.col("_first_assigned"))
        )
    )
    closed = _with_cycle(closes, closes).sort([*keys, *ORDER]).group_by(keys).agg(_close_aggs())
    out = (
        base.join(assigned, on=keys, how="left")
        .join(closed, on=keys, how="left")
        .with_columns(pl.col(c).fill_null(0) for c in _ZERO)
        .with_columns(pl.col("missing_first_assignment").fill_null(False))
    )
    if copies is None:
        out = out.with_columns(n_duplicates=pl.lit(None, dtype=pl.Int64))
    else:
        seen = copied(_keys(events, as_of), copies, ["conversation_id", "occurred_at"])
        dups = _with_cycle(seen, closes).group_by(keys).agg(pl.col("_dups").sum())
        out = out.join(dups, on=keys, how="left").with_columns(
            n_duplicates=pl.col("_dups").fill_null(0)
        )
    return (
        out.with_columns(
            _missing_opening(), is_open=pl.col("n_closes") == 0, is_reopen=pl.col("cycle") > 1
        )
        .with_columns(
            time_to_first_assignment=_since_opening("first_assigned_at"),
            time_to_close=_since_opening("closed_at"),
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
            "missing_first_assignment",
            "missing_opening",
            "n_missing_assignments",
            "time_to_first_assignment",
            "time_to_close",
            "n_events",
            "n_duplicates",
            "last_event_at",
        )
        .sort(keys)
    )


def conversation_lifecycles(
    events: FrameLike,
    *,
    copies: FrameLike | None = None,
    as_of: TimeLike | None = None,
) -> pl.LazyFrame:
    """One row per conversation: opening, assignments, closes, reopens, open now.

    Only the assignment and close events are ordered; everything else is one aggregation,
    so the cost is about one ``GROUP BY conversation_id``. The number of cycles is
    ``1 + closes strictly before the conversation's last event``, and it is open when an
    event came after its last close (or it was never closed), which is what tagging every
    event with its cycle would give.

    Parameters
    ----------
    events
        Deduplicated events, e.g. ``lake.events()``.
    copies
        Optional ``(event_key, n_copies)``: received copies per event, the first included
        (events not listed: one copy).
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
        ``missing_opening``, ``n_missing_assignments``, ``n_events``, ``n_duplicates``,
        ``last_event_at``; in
        no particular order.
    """
    events = lazy(events)
    copies = None if copies is None else lazy(copies, "copies")
    rows = _rows(events, as_of)
    closes = _closes(rows)
    key = "conversation_id"
    base = rows.group_by(key).agg(_base_aggs())
    root = pl.col("user_id").is_not_null() & pl.col("previous_user_id").is_null()
    assigned = (
        _assignments(rows)
        .group_by(key)
        .agg(
            pl.col("occurred_at").filter(root).min().alias("_first_root"),
            pl.col("_missing").first().alias("missing_first_assignment"),
            *_assignment_aggs(),
        )
    )
    closed = closes.group_by(key).agg(_close_aggs())
    before_last = (
        closes.join(base.select(key, "last_event_at"), on=key)
        .group_by(key)
        .agg(
            pl.col("occurred_at")
            .filter(pl.col("occurred_at") < pl.col("last_event_at"))
            .n_unique()
            .alias("_before_last")
        )
    )
    out = (
        base.join(assigned, on=key, how="left")
        .join(closed, on=key, how="left")
        .join(before_last, on=key, how="left")
        .with_columns(pl.col(c).fill_null(0) for c in _ZERO)
        .with_columns(
            n_cycles=pl.col("_before_last").fill_null(0).cast(pl.Int64) + 1,
            missing_first_assignment=pl.col("missing_first_assignment").fill_null(False),
            is_open=pl.col("closed_at").is_null() | (pl.col("last_event_at") > pl.col("closed_at")),
        )
    )
    if copies is None:
        out = out.with_columns(n_duplicates=pl.lit(None, dtype=pl.Int64))
    else:
        out = out.join(
            dups_per(_keys(events, as_of), copies, key), on=key, how="left"
        ).with_columns(pl.col("n_duplicates").fill_null(0))
    missing_first = pl.col("missing_first_assignment")
    return (
        out.with_columns(
            _missing_opening(),
            n_reopens=pl.col("n_cycles") - 1,
            first_assigned_at=pl.when(missing_first).then(None).otherwise(pl.col("_first_root")),
        )
        .with_columns(
            time_to_first_assignment=_since_opening("first_assigned_at"),
            time_to_close=_since_opening("closed_at", unless=pl.col("is_open")),
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
            "missing_opening",
            "n_missing_assignments",
            "n_events",
            "n_duplicates",
            "last_event_at",
        )
    )
