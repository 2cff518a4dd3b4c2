"""Ground truth of an emulated world: true message timelines and conversation cycles.

The truth is computed from the world's own event log, *before* duplication, reordering and
serialisation, and only from what the emitted events themselves carry, so the analytics
code can reproduce it exactly from the webhooks. The definitions (the oracle's contract):

Event log
    One row per emitted event: ``at`` (event time, UTC microseconds; always whole seconds),
    ``type``, ``event_key`` (as :func:`kirim_events.events.parse_delivery` computes it),
    ``conversation_id`` *as emitted* (Kirim-native ``conversation.*`` events always; Meta
    bodies only through the ``kirim`` block, so null when the world's ``kirim_block`` is off;
    third-shape bodies through ``data.conversation_id``), ``message_id`` (wamid), ``status``
    (a message's; for ``conversation.*`` the conversation's as emitted: ``open``,
    ``resolved``), ``phone_number_id`` (as emitted: null for Kirim-native events),
    ``recipient_id`` (digits), ``contact_id`` (as emitted: none in third-shape bodies), ``user_id``,
    ``previous_user_id``, ``closed_by_user_id``, ``error_code`` (Meta's code as a string),
    ``seq`` (emission order; never needed to break ties, see below).

message_timelines (one row per outbound message, i.e. per wamid seen in ``message.status``)
    ``sent_at``/``delivered_at``/``read_at``/``failed_at``: event time of that status (each
    is emitted at most once per message). ``status``: the highest by precedence
    ``sent < failed < delivered < read`` (failed outranks sent only). ``error_code``: the
    failed status's first ``errors[].code``. ``conversation_id``: the first non-null emitted
    conversation id among the message's statuses. ``n_events``: distinct status events.

conversation_cycles (one row per (conversation_id, cycle)), events ordered by event time
    A conversation's events are the emitted events carrying its ``cnv_`` id. Cycle 1 starts
    at the first of them; every event after a ``conversation.closed`` starts the next cycle
    (a *reopen*). Per cycle: ``opened_at`` (first event), ``closed_at`` and
    ``closed_by_user_id`` (the close ending the cycle, null while open), ``first_assigned_at``
    (first ``conversation.assigned`` in the cycle), ``n_assignments``, ``assignee_id``
    (``user_id`` of the cycle's last assignment), ``n_events``, ``missing_opening`` (no
    message or message status at the cycle's first instant: the message that opened it
    carried no conversation id, as Meta bodies without the ``kirim`` block do).
    The world never puts a
    close in the same second as another event of its conversation, nor two assignments of
    one conversation in the same second, so event-time order is unambiguous where it
    matters (ties between other events change none of these columns).

conversation_lifecycles (one row per conversation_id)
    ``opened_at`` = first event; ``first_assigned_at`` = first assignment (any cycle);
    ``n_assignments``; ``n_assignees`` (distinct non-null ``user_id`` of assignments);
    ``assignee_id`` = ``user_id`` of the latest assignment; ``n_closes``; ``n_reopens`` =
    cycles - 1; ``closed_at``/``closed_by_user_id`` of the latest close; ``is_open`` = the
    latest event is not a close; ``missing_opening`` (as for cycle 1);
    ``time_to_first_assignment`` = first_assigned_at - opened_at in float seconds, null when
    ``missing_opening``; ``n_cycles``.

``as_of(ts)`` applies every definition to the events with ``at <= ts`` only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kirim_events.emulator.world import Bundle, WorldEvent
from kirim_events.timearg import read_time

__all__ = ["LOG_SCHEMA", "Truth", "emitted_conversation_id", "event_key"]

_TS = pa.timestamp("us", tz="UTC")
LOG_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("at", _TS),
        ("type", pa.string()),
        ("event_key", pa.string()),
        ("event_id", pa.string()),
        ("shape", pa.string()),
        ("phone_number_id", pa.string()),
        ("conversation_id", pa.string()),
        ("true_conversation_id", pa.string()),
        ("contact_id", pa.string()),
        ("message_id", pa.string()),
        ("status", pa.string()),
        ("recipient_id", pa.string()),
        ("user_id", pa.string()),
        ("previous_user_id", pa.string()),
        ("closed_by_user_id", pa.string()),
        ("error_code", pa.string()),
    ]
)
_NAMES = LOG_SCHEMA.names
_CHUNK = 65536


def event_key(event: WorldEvent, shape: str) -> str:
    """The ``event_key`` that :func:`kirim_events.events.parse_delivery` gives this event."""
    if shape == "kirim":
        return event.event_id
    if shape == "meta":
        return f"{event.message_id}:{event.status}" if event.status else str(event.message_id)
    kind = event.type
    return f"{event.message_id}:{kind}" + (f":{event.status}" if event.status else "")


def emitted_conversation_id(event: WorldEvent, shape: str, kirim_block: bool) -> str | None:
    """The conversation id a receiver can read from the rendered body (see module doc)."""
    if shape == "meta":
        return event.conversation_id if kirim_block else None
    if event.type.startswith("contact."):
        return None
    return event.conversation_id


def _emitted_contact_id(event: WorldEvent, shape: str, kirim_block: bool) -> str | None:
    if event.contact is None or shape == "legacy":  # the third shape names no contact id
        return None
    if shape == "meta" and not kirim_block:
        return None
    if shape == "kirim" and event.type.startswith("conversation."):
        return None
    return event.contact.id


def _emitted_status(event: WorldEvent) -> str | None:
    """A message's status, or the status of the conversation a ``conversation.*`` body
    carries (``open`` when assigned, ``resolved`` when closed; the lake keeps it as the
    event's status too)."""
    if event.type == "conversation.assigned":
        return "open"
    if event.type == "conversation.closed":
        return "resolved"
    return event.status


class Truth:
    """Accumulates a world's event log and derives the true frames from it.

    Parameters
    ----------
    kirim_block
        Whether Meta bodies carry the ``kirim`` block (must match the world's config; off
        by default).
    path
        Optional Parquet file: the log is written there in chunks instead of being kept in
        memory (for very long runs).
    """

    def __init__(self, *, kirim_block: bool = False, path: str | Path | None = None) -> None:
        self.kirim_block = kirim_block
        self.path = Path(path) if path is not None else None
        self._writer: pq.ParquetWriter | None = None
        self._wrote = False  # the log file at path holds this truth's events (a read closed it)
        self._batches: list[pa.RecordBatch] = []
        self._cols: dict[str, list[Any]] = {name: [] for name in _NAMES}
        self._seq = 0
        self._frozen: pl.DataFrame | None = None

    # ------------------------------------------------------------------ recording

    def record(self, bundle: Bundle) -> None:
        """Add a bundle's events to the log (call in emission order)."""
        cols = self._cols
        block = self.kirim_block
        for event in bundle.events:
            contact = event.contact
            cols["seq"].append(self._seq)
            cols["at"].append(event.at * 1_000_000)
            cols["type"].append(event.type)
            cols["event_key"].append(event_key(event, bundle.shape))
            cols["event_id"].append(event.event_id)
            cols["shape"].append(bundle.shape)
            # Kirim-native bodies name no phone number (their resources are organisation-wide)
            kirim = bundle.shape == "kirim"
            cols["phone_number_id"].append(None if kirim else event.phone.phone_number_id)
            cols["conversation_id"].append(emitted_conversation_id(event, bundle.shape, block))
            cols["true_conversation_id"].append(event.conversation_id)
            cols["contact_id"].append(_emitted_contact_id(event, bundle.shape, block))
            cols["message_id"].append(event.message_id)
            cols["status"].append(_emitted_status(event))
            is_status = event.type == "message.status"
            cols["recipient_id"].append(contact.digits if is_status and contact else None)
            cols["user_id"].append(event.user_id)
            cols["previous_user_id"].append(event.previous_user_id)
            cols["closed_by_user_id"].append(event.closed_by_user_id)
            cols["error_code"].append(str(event.error[0]) if event.error else None)
            self._seq += 1
        self._frozen = None
        if len(cols["seq"]) >= _CHUNK:
            self._flush()

    def watch(self, bundles: Iterator[Bundle]) -> Iterator[Bundle]:
        """Pass bundles through, recording each one."""
        for bundle in bundles:
            self.record(bundle)
            yield bundle

    def _flush(self) -> None:
        if not self._cols["seq"]:
            return
        arrays = [pa.array(self._cols[f.name], type=f.type) for f in LOG_SCHEMA]
        batch = pa.RecordBatch.from_arrays(arrays, schema=LOG_SCHEMA)
        if self.path is not None and self._writer is None:
            self._writer = self._open(self.path)  # a failed open keeps the chunk for the next
        self._cols = {name: [] for name in _NAMES}
        if self.path is not None:
            assert self._writer is not None
            self._writer.write_batch(batch)
        else:
            self._batches.append(batch)

    def _open(self, path: Path) -> pq.ParquetWriter:
        """A writer for the log at ``path``, holding what this truth wrote there before.

        A Parquet file can be read only once closed, so a read of the log (:meth:`log`)
        closes it; a writer opened after that started the file anew, and every event
        recorded before the read was lost (the log of a 200-event run held 137).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        earlier: Path | None = None
        if self._wrote and path.exists():
            earlier = path.with_name(path.name + ".earlier")
            os.replace(path, earlier)
        writer: pq.ParquetWriter | None = None
        try:
            writer = pq.ParquetWriter(str(path), LOG_SCHEMA)
            if earlier is not None:
                for batch in pq.ParquetFile(earlier).iter_batches():
                    writer.write_batch(batch)
        except BaseException:
            # a failed copy (a full disk) puts the log back as it was: the next attempt
            # would move the unfinished copy over it, and lose every event it held
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            if earlier is not None:
                os.replace(earlier, path)
            raise
        if earlier is not None:
            earlier.unlink()
        self._wrote = True
        return writer

    def close(self) -> None:
        """Flush the log (and close the Parquet file when writing to one)."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __len__(self) -> int:
        return self._seq

    # ------------------------------------------------------------------ frames

    def log(self) -> pl.LazyFrame:
        """The event log as a LazyFrame (columns of :data:`LOG_SCHEMA`)."""
        if self.path is not None:
            self.close()
            if not self.path.exists():
                return pl.from_arrow(LOG_SCHEMA.empty_table()).lazy()  # type: ignore[union-attr]
            return pl.scan_parquet(self.path, glob=False)
        self._flush()
        if self._frozen is None:
            table = pa.Table.from_batches(self._batches, schema=LOG_SCHEMA)
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            self._frozen = frame
        return self._frozen.lazy()

    def as_of(self, ts: datetime | str | int) -> TruthView:
        """The truth as the world stood at ``ts`` (aware datetime, ISO string or unix seconds)."""
        return TruthView(self, _to_datetime(ts))

    def message_timelines(self) -> pl.DataFrame:
        """True per-message timelines (see the module docstring)."""
        return TruthView(self, None).message_timelines()

    def conversation_cycles(self) -> pl.DataFrame:
        """True (conversation_id, cycle) rows."""
        return TruthView(self, None).conversation_cycles()

    def conversation_lifecycles(self) -> pl.DataFrame:
        """True per-conversation lifecycles."""
        return TruthView(self, None).conversation_lifecycles()

    def write_parquet(
        self, directory: str | Path, *, event_keys: Collection[str] | None = None
    ) -> dict[str, Path]:
        """Write ``events``, ``message_timelines``, ``conversation_lifecycles`` and
        ``conversation_cycles`` as Parquet files into ``directory``; return their paths.

        ``event_keys`` keeps only those events (every frame is derived from them alone):
        the ones sent, when some never were (a stop, a disabled subscription).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        view = TruthView(self, None, event_keys)
        frames = {
            "events": view.log().collect(),
            "message_timelines": view.message_timelines(),
            "conversation_lifecycles": view.conversation_lifecycles(),
            "conversation_cycles": view.conversation_cycles(),
        }
        paths = {}
        for name, frame in frames.items():
            paths[name] = out / f"{name}.parquet"
            # whole or not at all: `emulate --truth` writes these as it ends, when a stop
            # (SIGTERM, Ctrl+C) may come mid-file, and a cut file read as no Parquet file
            part = out / f".{name}.parquet.part"
            try:
                frame.write_parquet(part)
                os.replace(part, paths[name])
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
        return paths


def _first_opening() -> pl.Expr:
    """The first event time of an event that can open a conversation: a message the world
    emits (inbound), or an outbound message's status."""
    opening = pl.col("type").is_in(["message.received", "message.status"])
    return pl.col("at").filter(opening).min().alias("_first_opening")


def _missing_opening() -> pl.Expr:
    first = pl.col("_first_opening")
    return (first.is_null() | (first > pl.col("opened_at"))).alias("missing_opening")


def _to_datetime(ts: datetime | str | int) -> datetime:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("as_of needs a timezone-aware datetime")
        return ts.astimezone(UTC)
    if isinstance(ts, int):
        return datetime.fromtimestamp(ts, UTC)
    # as lake.as_of reads it (no offset, or a date: UTC); fromisoformat + astimezone took
    # it in the machine's time zone, so the truth cut hours away from the lake's as_of
    parsed = read_time(ts)
    if parsed is None:
        raise ValueError(f"as_of needs an ISO-8601 time, got {ts!r}")
    return parsed


class TruthView:
    """The truth frames restricted to events at or before ``as_of_ts`` (None = all) and,
    when given, to the events of ``event_keys``."""

    def __init__(
        self,
        truth: Truth,
        as_of_ts: datetime | None,
        event_keys: Collection[str] | None = None,
    ) -> None:
        self.truth = truth
        self.as_of_ts = as_of_ts
        self.event_keys = None if event_keys is None else sorted(set(event_keys))

    def log(self) -> pl.LazyFrame:
        """The event log of this view's events."""
        log = self.truth.log()
        if self.as_of_ts is not None:
            log = log.filter(pl.col("at") <= self.as_of_ts)
        if self.event_keys is not None:
            log = log.filter(pl.col("event_key").is_in(self.event_keys))
        return log

    def message_timelines(self) -> pl.DataFrame:
        """True per-message timelines as of this view's instant."""
        st = pl.col("status")

        def first_at(name: str) -> pl.Expr:
            return pl.col("at").filter(st == name).min().alias(f"{name}_at")

        frame = (
            self.log()
            .filter(pl.col("type") == "message.status")
            .group_by("message_id")
            .agg(
                pl.col("phone_number_id").first(),
                pl.col("recipient_id").first(),
                pl.col("conversation_id").drop_nulls().first(),
                first_at("sent"),
                first_at("delivered"),
                first_at("read"),
                first_at("failed"),
                pl.col("error_code").filter(st == "failed").drop_nulls().first(),
                pl.len().cast(pl.Int64).alias("n_events"),
            )
            .with_columns(
                pl.when(pl.col("read_at").is_not_null())
                .then(pl.lit("read"))
                .when(pl.col("delivered_at").is_not_null())
                .then(pl.lit("delivered"))
                .when(pl.col("failed_at").is_not_null())
                .then(pl.lit("failed"))
                .otherwise(pl.lit("sent"))
                .alias("status")
            )
            .select(
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
                "n_events",
            )
            .sort("message_id")
        )
        return frame.collect()

    def _conversation_events(self) -> pl.LazyFrame:
        is_close = pl.col("type") == "conversation.closed"
        return (
            self.log()
            .filter(pl.col("conversation_id").is_not_null())
            .sort("conversation_id", "at", "seq")
            .with_columns(
                is_close.alias("is_close"),
                (pl.col("type") == "conversation.assigned").alias("is_assign"),
            )
            .with_columns(
                (pl.col("is_close").cast(pl.Int64).cum_sum().shift(1, fill_value=0) + 1)
                .over("conversation_id")
                .alias("cycle")
            )
        )

    def conversation_cycles(self) -> pl.DataFrame:
        """True (conversation_id, cycle) rows as of this view's instant."""
        close, assign = pl.col("is_close"), pl.col("is_assign")
        return (
            self._conversation_events()
            .group_by("conversation_id", "cycle")
            .agg(
                pl.col("at").min().alias("opened_at"),
                pl.col("at").filter(close).max().alias("closed_at"),
                pl.col("closed_by_user_id").filter(close).last(),
                pl.col("at").filter(assign).min().alias("first_assigned_at"),
                assign.sum().cast(pl.Int64).alias("n_assignments"),
                pl.col("user_id").filter(assign).last().alias("assignee_id"),
                pl.len().cast(pl.Int64).alias("n_events"),
                _first_opening(),
            )
            .with_columns(pl.col("cycle").cast(pl.Int64), _missing_opening())
            .drop("_first_opening")
            .sort("conversation_id", "cycle")
            .collect()
        )

    def conversation_lifecycles(self) -> pl.DataFrame:
        """True per-conversation lifecycles as of this view's instant."""
        close, assign = pl.col("is_close"), pl.col("is_assign")
        return (
            self._conversation_events()
            .group_by("conversation_id")
            .agg(
                pl.col("at").min().alias("opened_at"),
                pl.col("at").filter(assign).min().alias("first_assigned_at"),
                assign.sum().cast(pl.Int64).alias("n_assignments"),
                pl.col("user_id").filter(assign).drop_nulls().n_unique().alias("n_assignees"),
                pl.col("user_id").filter(assign).last().alias("assignee_id"),
                close.sum().cast(pl.Int64).alias("n_closes"),
                (pl.col("cycle").max() - 1).cast(pl.Int64).alias("n_reopens"),
                pl.col("at").filter(close).max().alias("closed_at"),
                pl.col("closed_by_user_id").filter(close).last(),
                close.last().not_().alias("is_open"),
                pl.col("cycle").max().cast(pl.Int64).alias("n_cycles"),
                _first_opening(),
            )
            .with_columns(pl.col("n_assignees").cast(pl.Int64), _missing_opening())
            .with_columns(
                pl.when(pl.col("missing_opening"))
                .then(None)
                # float seconds, as the lake's helpers give it (it was a Duration, so a
                # comparison of the two failed on the type); computed here in plain Polars,
                # not with the helpers' own code, so that the oracle stays independent of
                # what it checks (exact: the world's times are whole seconds)
                .otherwise(
                    (pl.col("first_assigned_at") - pl.col("opened_at")).dt.total_seconds(
                        fractional=True
                    )
                )
                .alias("time_to_first_assignment"),
            )
            .drop("_first_opening")
            .sort("conversation_id")
            .collect()
        )
