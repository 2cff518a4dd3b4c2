"""Shared rules of the analytics helpers: status precedence, error labels, as-of cuts.

Everything here is the single source of a rule used by both the Polars helpers and the
DuckDB views (``sql.py`` renders the same tables into SQL), so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeAlias

import duckdb
import polars as pl
import pyarrow as pa

from kirim_events.schema import DELIVERY_SCHEMA, EVENT_SCHEMA
from kirim_events.timearg import TimeLike, to_utc

__all__ = [
    "ERROR_LABELS",
    "LABEL_OF",
    "STATUS_EVENT_TYPES",
    "STATUS_RANK",
    "FrameLike",
    "as_utc",
    "cut",
    "in_utc",
    "lazy",
    "seconds_between",
    "type_named",
]

# kirim-api.md §6.1: pending < sent < delivered < read; failed outranks pending/sent, while
# delivered/read outrank failed (the message did arrive; the row is flagged as an anomaly).
STATUS_RANK: dict[str, int] = {"pending": 0, "sent": 1, "failed": 2, "delivered": 3, "read": 4}

# Event types that report a status of an outbound message, keyed by the wamid in
# ``message_id``. Only Meta's ``message.status`` callbacks qualify: Kirim's ``message.created``
# carries Kirim's own ``msg_`` id (no wamid yet), so it cannot be joined to the callbacks.
STATUS_EVENT_TYPES: tuple[str, ...] = ("message.status",)

# kirim-api.md §6.1: Meta's error code -> Kirim's error name; anything else is ``other``.
ERROR_LABELS: dict[str, str] = {
    "131047": "outside_24h_window",
    "132015": "template_paused",
    "132016": "template_disabled",
    "132000": "template_param_count_mismatch",
    "132001": "template_param_format_mismatch",
    "1006": "recipient_not_on_whatsapp",
    "1013": "recipient_blocked",
    "131053": "media_download_failed",
}
OTHER_ERROR = "other"

# error_code -> error_label: Meta's codes by the table above, and Kirim's own names as
# themselves. A Message resource's error carries Kirim's name in ``code`` beside Meta's
# ``provider_code`` (kirim-api.md §6.1); the events keep the Meta code when there is one, the
# name otherwise (a third-shape body without provider_code), and that name is its label.
LABEL_OF: dict[str, str] = {**ERROR_LABELS, **{name: name for name in ERROR_LABELS.values()}}

US = pl.Datetime("us", "UTC")


def as_utc(ts: TimeLike) -> datetime:
    """Return ``ts`` as an aware UTC datetime (see :func:`kirim_events.timearg.to_utc`); a
    span such as ``12h`` counts back from the wall clock (a Lake resolves its ``as_of`` by its
    own clock before the helpers see it).

    Raises ConfigError for anything that names no time.
    """
    return to_utc(ts, now=datetime.now(UTC), name="as_of")


FrameLike: TypeAlias = pl.LazyFrame | pl.DataFrame | duckdb.DuckDBPyRelation
"""What the core functions take: Polars frames, or a DuckDB relation such as
``lake.sql("select * from events where ...")``."""


def lazy(frame: FrameLike, what: str = "events") -> pl.LazyFrame:
    """``frame`` as a LazyFrame, its timestamps as the lake's (:func:`in_utc`).

    A relation had failed with "This relation does not contain a column by the name of
    'lazy'". DuckDB gives TIMESTAMPTZ in its session's zone (the machine's, outside
    ``lake.sql``), and an ``as_of`` in UTC cannot be compared with another zone in Polars.
    """
    if isinstance(frame, pl.LazyFrame):
        rows = frame
    elif isinstance(frame, pl.DataFrame):
        rows = frame.lazy()
    elif isinstance(frame, duckdb.DuckDBPyRelation):
        # run once, here: a lazy one (``pl(lazy=True)``) read by two branches of a plan
        # failed with "connection is busy with another call"
        rows = frame.pl().lazy()
    else:
        raise TypeError(
            f"{what}: expected a Polars LazyFrame or DataFrame or a DuckDB relation, "
            f"got {type_named(frame)}"
        )
    return in_utc(rows, what)


# The times each input is read by: a frame with them as text (a CSV read as it is) failed
# deep inside a helper, naming a column of the helper's ("delivered_at") rather than its own.
_TIMES = {"events": ("occurred_at", "received_at"), "deliveries": ("received_at", "created_at")}
# Each input's text columns (ids, codes): a CSV or pandas round trip reads the ones that hold
# only digits as numbers, and error_code as a number failed against Kirim's code names
# ("conversion from `str` to `i64` failed in column 'literal'").
_TEXT = {
    what: frozenset(f.name for f in schema if pa.types.is_string(f.type))
    for what, schema in (("events", EVENT_SCHEMA), ("deliveries", DELIVERY_SCHEMA))
}


def in_utc(rows: pl.LazyFrame, what: str = "events") -> pl.LazyFrame:
    """``rows`` with every timestamp as the lake keeps it: UTC, in microseconds. A naive one
    is read as UTC (as ``as_of`` reads a naive datetime), a zoned one converted to UTC.

    A frame of the caller's own (``pl.from_pandas``, a CSV, a DuckDB ``TIMESTAMP``) had
    naive or zoned times: ``as_of`` then failed with Polars' "could not evaluate '<='
    comparison", and ``delivery_health`` counted days in that zone rather than UTC. A lake's
    frame is already in UTC: nothing is added to its plan. Ids and codes that the lake keeps
    as text but ``rows`` holds as numbers (a CSV's or pandas' inference) become their digits.

    Raises TypeError when a time the ``what`` input is read by (``occurred_at``, ...) is
    there but not a datetime.
    """
    schema = rows.collect_schema()
    wrong = [
        name
        for name in _TIMES.get(what, ())
        if name in schema and not isinstance(schema[name], pl.Datetime | pl.Null)
    ]
    if wrong:
        first = wrong[0]
        fix = (
            "str.to_datetime(time_zone='UTC')"
            if schema[first] == pl.String
            else "cast(pl.Datetime('us', 'UTC'))"
        )
        shown = ", ".join(f"{name} is {schema[name]}" for name in wrong)
        raise TypeError(
            f"{what}: {shown}, not a datetime; make it one first, e.g. pl.col({first!r}).{fix}"
        )
    off = {
        name: dtype
        for name, dtype in schema.items()
        if isinstance(dtype, pl.Datetime) and dtype != US
    }
    # numbers where the lake keeps text: as their digits (a float, pandas' int with nulls,
    # through Int64: 131047.0 is code "131047")
    numbers = [n for n in _TEXT.get(what, ()) if n in schema and schema[n].is_numeric()]
    if not off and not numbers:
        return rows
    return rows.with_columns(
        *(
            (
                pl.col(name).dt.replace_time_zone("UTC")
                if dtype.time_zone is None
                else pl.col(name).dt.convert_time_zone("UTC")
            ).dt.cast_time_unit("us")
            for name, dtype in off.items()
        ),
        *(
            (pl.col(n).cast(pl.Int64) if schema[n].is_float() else pl.col(n)).cast(pl.String)
            for n in numbers
        ),
    )


def type_named(value: object) -> str:
    """What a TypeError calls ``value``: its type with its module (a pandas DataFrame is not
    "DataFrame", as if it were what was asked), and for pandas the way to Polars."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    hint = "; pl.from_pandas(frame) converts it" if kind.__module__.startswith("pandas") else ""
    return f"{kind.__module__}.{kind.__qualname__}{hint}"


def cut(events: pl.LazyFrame, as_of: TimeLike | None) -> pl.LazyFrame:
    """Keep the events that had happened by ``as_of`` (event time); all when None."""
    if as_of is None:
        return events
    return events.filter(pl.col("occurred_at") <= pl.lit(as_utc(as_of), dtype=US))


ORDER = ("occurred_at", "received_at", "event_key")
"""Event-time order; arrival and the key only break ties, so arrival order never decides."""

ASSIGNMENT_ORDER = ("occurred_at", "_chain", "received_at", "event_key")
"""Event-time order of ``conversation.assigned`` events: at one instant, along their chain
(``_chain``: how many of that instant's assignments of the conversation come before it, as
``previous_user_id`` names their users; see ``conversations.py``), then arrival and the key.
Kirim's times have whole seconds, and an assignment and the reassignment after it can share
one: by arrival alone, a retried first one came last, which named the wrong assignee and
invented two missing transitions."""

CHAIN_ROUNDS = 4
"""How far ``_chain`` follows a chain of assignments at one instant: exact for chains of up
to ``CHAIN_ROUNDS + 1`` assignments; longer ones (or loops) are left in part to arrival."""

STATUS_ORDER = ("occurred_at", "received_at", "_rank", "event_key")
"""Event-time order of status events: at one instant, arrived together, the lower status
first (one Meta body may list sent and delivered with the same timestamp; by the key alone
"delivered" sorted before "sent")."""


def run_start(key: str) -> pl.Expr:
    """True on the first row of each run of equal ``key`` values (rows sorted by ``key``)."""
    return pl.col(key).ne_missing(pl.col(key).shift(1))


def run_cum_max(value: pl.Expr, start: pl.Expr, bound: pl.Expr | int) -> pl.Expr:
    """Running max of ``value`` within each run of rows; ``start`` marks a run's first row.

    ``value`` must be an integer in ``[0, bound)``. Each run adds ``run number * bound`` to
    its values, so one ``cum_max`` over all rows never reaches back into an earlier run; the
    offset is taken off again. This is what ``value.cum_max().over(key)`` gives on rows
    sorted by ``key``, without ``over``'s evaluation once per key, which took most of the
    time of a status history at 3M events. The offsets fit Int64 for ``runs * bound`` up to
    9e18 (with a rank as ``value`` and the row count as ``bound``: 3e9 rows).
    """
    offset = start.cum_sum().cast(pl.Int64) * bound
    return (offset + value.cast(pl.Int64)).cum_max() - offset


def _dups(copies: pl.LazyFrame) -> pl.LazyFrame:
    return copies.select("event_key", (pl.col("n_copies").cast(pl.Int64) - 1).alias("_dups"))


def with_dups(rows: pl.LazyFrame, copies: pl.LazyFrame | None) -> pl.LazyFrame:
    """Attach ``_dups`` (received copies beyond the first) to each row; null without copies."""
    if copies is None:
        return rows.with_columns(_dups=pl.lit(None, dtype=pl.Int64))
    return rows.join(_dups(copies), on="event_key", how="left").with_columns(
        pl.col("_dups").fill_null(0)
    )


def copied(rows: pl.LazyFrame, copies: pl.LazyFrame, columns: list[str]) -> pl.LazyFrame:
    """``columns`` and ``_dups`` of the rows whose event was received more than once.

    Joins only the needed columns (not every column of every row) to the few copied
    events: a left join of every event to the copies took a quarter of the conversation
    cycles' time at 10M events.
    """
    return rows.select("event_key", *columns).join(_dups(copies), on="event_key", how="inner")


def dups_per(rows: pl.LazyFrame, copies: pl.LazyFrame, key: str) -> pl.LazyFrame:
    """``(key, n_duplicates)`` for the ``key`` values (message, conversation) with a copy;
    values not listed have no duplicates."""
    return (
        copied(rows, copies, [key])
        .group_by(key)
        .agg(pl.col("_dups").fill_null(0).sum().alias("n_duplicates"))
    )


def seconds_between(later: str, earlier: str) -> pl.Expr:
    """``later - earlier`` in seconds (float), null when either side is null.

    Durations are float seconds, not ``Duration``, so that the DuckDB views (which would
    otherwise return INTERVAL, a type Polars cannot import) give the same values.
    """
    return seconds(pl.col(later).dt.epoch("us") - pl.col(earlier).dt.epoch("us"))


def seconds(micros: pl.Expr) -> pl.Expr:
    """Microseconds as float seconds, divided as IEEE (and DuckDB) divide.

    Polars divides a column by a scalar as a product with the scalar's reciprocal, one unit
    in the last place off for about a third of millisecond-precise values; a divisor that is
    a column is divided. So the divisor is made a column (``x * 0 + 1e6``).
    """
    value = micros.cast(pl.Float64)
    return value / (value * 0.0 + 1_000_000.0)


def error_label(code: pl.Expr) -> pl.Expr:
    """Kirim's name for a Meta error code (§6.1), or the code when it is one of Kirim's names;
    ``other`` for unknown codes, null if none."""
    return (
        pl.when(code.is_null())
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(code.replace_strict(LABEL_OF, default=OTHER_ERROR, return_dtype=pl.String))
    )
