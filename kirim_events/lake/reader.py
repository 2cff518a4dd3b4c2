"""Find the files a query needs and read them without duplicates (Polars and DuckDB).

Partition pruning happens on folder names: only the ``type=`` and ``date=`` folders a query
asks for are listed. Within those, the compaction manifest says which files count
(:mod:`kirim_events.lake.state`).

Dedup rule: one row per ``event_key``; the copy received first wins (smallest
``received_at``, then smallest ``ingest_seq``). Dedup is needed only where a partition is not
clean (it has files written since its last compaction). Copies of one event share its type,
and their event times differ by at most the *dedup window* (default 2 days: Kirim retries for
about 31 hours, and an event's time only varies between copies when the payload has no time
of its own and the signature time stands in). So a clean partition is read as is, and a
partition with a dirty neighbour within the window is deduplicated together with all its
neighbours within the window. Delivery rows collapse when they are exact copies
(everything but ``ingest_seq`` equal), which is what a repeated journal flush produces;
rows of Kirim's history are one row per delivery attempt, the last fetched
(``DELIVERY_DEDUP_COLUMNS``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import polars as pl
import pyarrow as pa

from kirim_events.events_record import TYPE_ALIASES
from kirim_events.lake.paths import decode_type, encode_type, parse_partition_dir
from kirim_events.lake.state import Manifest, manifest_path
from kirim_events.lake.storage import Storage, is_temp_name
from kirim_events.lake.writer import partition_dir
from kirim_events.schema import DELIVERY_SCHEMA, EVENT_SCHEMA

if TYPE_CHECKING:
    import pyarrow.dataset as pads

__all__ = [
    "DELIVERY_DEDUP_COLUMNS",
    "EVENT_FILE_SCHEMA",
    "LEGACY_GROUPS",
    "READ_ATTEMPTS",
    "REQUIRED_EVENT_COLUMNS",
    "VANISHED_ERRORS",
    "GroupPlan",
    "first_copies",
    "keep_first",
    "list_groups",
    "near_days",
    "output_schema",
    "plan_group",
    "polars_schema",
    "read_in_place",
    "reread",
    "scan",
    "vanished_file",
]

READ_ATTEMPTS = 3
"""How many times :func:`reread` plans and runs a read whose planned files a compaction
deleted under it, in all, before it lets the failure through."""

REQUIRED_EVENT_COLUMNS = ("event_key", "occurred_at", "received_at")
"""Columns every events file has and no event lacks (the writer refuses such rows); the
``type`` is the partition's."""

EVENT_FILE_SCHEMA = pa.schema([f for f in EVENT_SCHEMA if f.name != "type"])
"""What an events Parquet file holds: EVENT_SCHEMA without the ``type`` partition column."""

DELIVERY_DEDUP_COLUMNS = tuple(n for n in DELIVERY_SCHEMA.names if n != "ingest_seq")
"""Delivery rows equal on these are one row. Rows of Kirim's history (origin ``backfill``)
are snapshots instead: each backfill over a range fetches them again (``received_at`` is
when), and a row fetched while its attempt was under way (``pending``, no answer yet) is
fetched later with the attempt's outcome. So a history row that names its delivery and
its ``created_at`` is one row per ``(delivery_id, attempt)``, the last fetched; a row
without ``attempt`` is attempt 1's: fetched before the first attempt (a delivery waiting for
it has no number yet: Kirim counts from 1) it is the first attempt under way, and from a
Kirim that sends no ``attempt`` (kirim-api.md §7.4 documents no such field) every row of a
delivery is one row, the last fetched, as Kirim's history holds one row per delivery. One
that lacks the delivery or its ``created_at`` collapses only with its exact copies,
``received_at`` aside. Rows collapse within one ``date`` partition, as compaction takes
them: without ``created_at`` a row is filed under the day it was fetched, so the fetches of
one attempt lie in different partitions, and they are kept apart; so are two fetches whose
``created_at`` differ by day."""
EVENT_ORDER = ("received_at", "ingest_seq", "origin", "delivery_id", "attempt")
"""Which copy of an event is kept (the first in this order, nulls last): the first received.
``ingest_seq`` is not unique across writers, so two copies written in the same millisecond
can tie on both; the last three columns then choose the same copy in every reader."""


def file_schema(table: str) -> pa.Schema:
    """Columns inside the Parquet files of ``table``."""
    return EVENT_FILE_SCHEMA if table == "events" else DELIVERY_SCHEMA


def output_schema(table: str) -> pa.Schema:
    """Columns our readers return: the table schema plus the ``date`` partition."""
    base = EVENT_SCHEMA if table == "events" else DELIVERY_SCHEMA
    return base.append(pa.field("date", pa.date32()))


@dataclass
class GroupPlan:
    """What to read from one group (an event type, or all deliveries)."""

    table: str
    group: str | None
    clean: list[str] = field(default_factory=list)
    dedup: list[str] = field(default_factory=list)
    keep_dates: list[str] = field(default_factory=list)
    as_type: str | None = None
    """The type its rows are read as, when not the folder's own (a legacy folder)."""

    @property
    def type_value(self) -> str | None:
        """The decoded event type of this group."""
        if self.as_type is not None:
            return self.as_type
        return None if self.group is None else decode_type(self.group)


LEGACY_GROUPS = {encode_type(old): encode_type(new) for old, new in TYPE_ALIASES.items()}
"""Event folders older versions wrote (encoded type -> the encoded type it is stored as
now). Before 01d6abb a Kirim-native ``message.status_updated`` went to
``type=message.status_updated``; it is ``message.status`` now. Readers read such a folder
as the type it aliases, deduplicated together with it, and compaction moves its files there
(:func:`kirim_events.lake.compact.compact`)."""


def list_groups(storage: Storage, table: str) -> list[str | None]:
    """Encoded event types present (``[None]`` for deliveries)."""
    if table != "events":
        return [None]
    groups: list[str | None] = []
    for entry in storage.list_dir(table):
        value = parse_partition_dir(entry.name, "type") if entry.is_dir else None
        if value is not None:
            groups.append(value)
    return sorted(groups, key=str)


def group_dir(table: str, group: str | None) -> str:
    """Folder holding a group's ``date=`` folders."""
    return table if group is None else f"{table}/type={group}"


def list_dates(storage: Storage, table: str, group: str | None) -> list[str]:
    """Date partitions of one group, sorted."""
    dates = []
    for entry in storage.list_dir(group_dir(table, group)):
        value = parse_partition_dir(entry.name, "date") if entry.is_dir else None
        if value is not None:
            dates.append(value)
    return sorted(dates)


def parquet_names(storage: Storage, rel_dir: str, temps: list[str] | None = None) -> dict[str, int]:
    """Parquet files in a partition folder (name -> size), hidden files skipped: among them
    the temp files of writes not yet renamed into place (``storage.temp_name``), whose paths
    are added to ``temps`` when it is given (compaction removes those of crashed writes)."""
    entries = storage.list_dir(rel_dir)
    if temps is not None:
        temps.extend(
            f"{rel_dir}/{e.name}" for e in entries if not e.is_dir and is_temp_name(e.name)
        )
    return {
        e.name: e.size
        for e in entries
        if not e.is_dir and e.name.endswith(".parquet") and e.name[0] not in "._"
    }


def near_days(day: str, window: int, existing: set[str]) -> list[str]:
    """The days of ``existing`` within ``window`` days of ``day`` (itself included).

    Days before year 1 or after 9999 do not exist, so a partition at either end of the
    calendar (written by an older version from a placeholder time) has fewer neighbours
    instead of failing every read.
    """
    base = date.fromisoformat(day)
    days = []
    for k in range(-window, window + 1):
        try:
            days.append((base + timedelta(days=k)).isoformat())
        except OverflowError:
            continue
    return [d for d in days if d in existing]


def plan_group(
    storage: Storage,
    table: str,
    group: str | None,
    *,
    lo: str | None = None,
    hi: str | None = None,
    window_days: int = 2,
    forced: Callable[[list[str]], set[str]] | None = None,
) -> GroupPlan:
    """Decide which files of one group to read as is and which to deduplicate.

    ``forced(dates)`` names the dates (of the group's ``dates``) deduplicated even where
    clean: those within the window of a legacy folder read as this group
    (:data:`LEGACY_GROUPS`), whose copies of its events are deduplicated with its own.

    A compaction that publishes its manifest and deletes the files it replaced while the
    folders are being listed would leave a plan that counts neither the old files nor the
    new ones; so the plan is made again, up to a few times, until the manifest read after
    the listing is the one read before it.
    """
    rel = manifest_path(table, group)
    manifest = Manifest.load(storage, rel)
    for _ in range(_REPLANS):
        plan = _plan_group(
            storage,
            table,
            group,
            manifest,
            lo=lo,
            hi=hi,
            window_days=window_days,
            forced=forced,
        )
        after = Manifest.load(storage, rel)
        if after.generation == manifest.generation:
            break
        manifest = after
    return plan


_REPLANS = 5  # a lake compacted more often than it can be listed keeps the last plan


def _plan_group(
    storage: Storage,
    table: str,
    group: str | None,
    manifest: Manifest,
    *,
    lo: str | None,
    hi: str | None,
    window_days: int,
    forced: Callable[[list[str]], set[str]] | None = None,
) -> GroupPlan:
    dates = list_dates(storage, table, group)
    must = set() if forced is None else forced(dates)
    selected = [d for d in dates if (lo is None or d >= lo) and (hi is None or d <= hi)]
    counted: dict[str, list[str]] = {}

    def files(day: str) -> list[str]:
        if day not in counted:
            names = parquet_names(storage, partition_dir(table, group, day))
            counted[day] = manifest.counted(day, list(names))
        return counted[day]

    existing = set(dates)

    def near(day: str) -> list[str]:
        return near_days(day, window_days, existing)

    plan = GroupPlan(table, group)
    to_dedup: set[str] = set()
    for day in selected:
        if day in must or any(not manifest.is_clean(d, files(d)) for d in near(day)):
            plan.keep_dates.append(day)
            to_dedup.update(near(day))
        else:
            plan.clean.extend(f"{partition_dir(table, group, day)}/{n}" for n in files(day))
    for day in sorted(to_dedup):
        plan.dedup.extend(f"{partition_dir(table, group, day)}/{n}" for n in files(day))
    return plan


def plan_table(
    storage: Storage,
    table: str,
    *,
    types: list[str] | None = None,
    lo: str | None = None,
    hi: str | None = None,
    window_days: int = 2,
) -> list[GroupPlan]:
    """Plans for every group a query touches."""
    if table != "events":
        return [plan_group(storage, table, None, lo=lo, hi=hi, window_days=0)]
    present = list_groups(storage, table)
    wanted = None if types is None else set(encode_type(t) for t in types)
    groups = [g for g in present if g not in LEGACY_GROUPS and (wanted is None or g in wanted)]
    plans = []
    # a legacy folder: read as the type it aliases, every date deduplicated, and so are the
    # dates of that type within the window of one of its dates (a copy may be in each)
    legacy: dict[str, list[str]] = {}
    for old, new in LEGACY_GROUPS.items():
        if old in present and (wanted is None or new in wanted):
            days = list_dates(storage, table, old)
            legacy.setdefault(new, []).extend(days)
            plans.append(
                plan_group(
                    storage,
                    table,
                    old,
                    lo=lo,
                    hi=hi,
                    window_days=window_days,
                    forced=lambda dates: set(dates),
                )
            )
            plans[-1].as_type = decode_type(new)

    def near_legacy(group: str | None) -> Callable[[list[str]], set[str]] | None:
        if group not in legacy:
            return None
        return lambda dates: {
            d for old in legacy[group] for d in near_days(old, window_days, set(dates))
        }

    plans += [
        plan_group(storage, table, g, lo=lo, hi=hi, window_days=window_days, forced=near_legacy(g))
        for g in groups
    ]
    return plans


# ---------------------------------------------------------------------- Polars


def polars_schema(schema: pa.Schema) -> dict[str, pl.DataType]:
    """Polars dtypes of an Arrow schema."""
    frame = pl.from_arrow(schema.empty_table())
    assert isinstance(frame, pl.DataFrame)
    return dict(frame.schema)


_NOT_IN_PLACE = frozenset("=*?[]{}")


def read_in_place(storage: Storage) -> bool:
    """Whether Polars' and DuckDB's own Parquet readers can take the files by path: local,
    with no ``key=value`` folder above the lake (they would take it for a partition column)
    and no glob character in the lake's path (DuckDB expands ``lake[1]`` to ``lake1`` and
    ``lake?`` to every such sibling, with no option to stop it). Elsewhere the files go
    through a pyarrow dataset rooted at the table's folder, which takes paths as they are.
    """
    return storage.local and not _NOT_IN_PLACE.intersection(storage.root)


def _scan_files(storage: Storage, table: str, rels: list[str]) -> pl.LazyFrame:
    schema = file_schema(table)
    hive: dict[str, Any] = {"date": pl.Date}
    if table == "events":
        hive = {"type": pl.String, "date": pl.Date}
    if read_in_place(storage):
        return pl.scan_parquet(
            [storage.full(r) for r in rels],
            hive_partitioning=True,
            hive_schema=hive,
            glob=False,  # a path is a path: "lake[1]" is not a character class
            schema=polars_schema(schema),
            missing_columns="insert",
            extra_columns="ignore",
        )
    dataset = arrow_dataset(storage, table, rels)
    return pl.scan_pyarrow_dataset(dataset)


def arrow_files(
    paths: list[str], storage: Storage, schema: pa.Schema | None = None
) -> pads.Dataset:
    """A pyarrow dataset over Parquet files given by full path.

    ``pyarrow.dataset`` is imported here, not with the package: where pandas is installed
    (the ``[notebook]`` extra), importing it imports pandas, which took 1.5-2.5 s of the
    start of every command and of every ``import kirim_events``.
    """
    import pyarrow.dataset as pads

    return pads.dataset(paths, schema=schema, format="parquet", filesystem=storage.fs)


def arrow_dataset(storage: Storage, table: str, rels: list[str]) -> pads.Dataset:
    """A pyarrow dataset over some files of a table, with hive partition columns."""
    import pyarrow.dataset as pads  # not at start: see arrow_files

    parts = [pa.field("date", pa.date32())]
    if table == "events":
        parts.insert(0, pa.field("type", pa.string()))
    partitioning = pads.partitioning(pa.schema(parts), flavor="hive")
    full_schema = pa.schema(list(file_schema(table)) + parts)
    return pads.dataset(
        [storage.full(r) for r in rels],
        schema=full_schema,
        format="parquet",
        filesystem=storage.fs,
        partitioning=partitioning,
        partition_base_dir=storage.full(table),
    )


def _empty(table: str) -> pl.LazyFrame:
    frame = pl.from_arrow(output_schema(table).empty_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


@dataclass
class Merged:
    """All plans of one table folded into two file lists (one scan each)."""

    table: str
    clean: list[str]
    dedup: list[str]
    keep: list[str]
    """``<encoded type>/<date>`` (events) or ``<date>`` (deliveries) kept from ``dedup``."""
    decode: dict[str, str]
    """Encoded folder value -> event type, for the few types that are not folder-safe."""


def merge(table: str, plans: list[GroupPlan]) -> Merged:
    """Fold per-group plans: clean files need no dedup; dedup files are deduplicated together
    (an event_key never spans two types, so one dedup over all of them is the same)."""
    out = Merged(table, [], [], [], {})
    for plan in plans:
        out.clean.extend(plan.clean)
        out.dedup.extend(plan.dedup)
        prefix = "" if plan.group is None else plan.group + "/"
        out.keep.extend(prefix + d for d in plan.keep_dates)
        if plan.group is not None and plan.type_value != plan.group:
            out.decode[plan.group] = plan.type_value or ""
    return out


Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


FIRST_ATTEMPT = pl.col("attempt").fill_null(1)
"""A history row's attempt as the dedup key takes it: one without a number (a delivery not
attempted yet, or a Kirim that sends none) is its first attempt's, as Kirim counts from 1."""


def _snapshot() -> pl.Expr:
    """A row of Kirim's history that names its delivery and the delivery's ``created_at``
    (see ``DELIVERY_DEDUP_COLUMNS``)."""
    return (
        (pl.col("origin") == "backfill")
        & pl.col("delivery_id").is_not_null()
        & pl.col("created_at").is_not_null()
    ).fill_null(False)


def keep_first(
    frame: Frame,
    key: list[str],
    order: list[str],
    *,
    descending: bool = False,
    probe: list[str] | None = None,
) -> Frame:
    """One row per distinct ``key``: the first in ``order`` (nulls last), rows in no order.

    Rows whose key is unique are kept as they are; only the rows of a repeated key are
    sorted, and the first of each is taken by a mask (``is_first_distinct``) rather than by
    ``unique``, which keeps a first value of every column per key: reading 10M rows of an
    uncompacted lake took 2-3 times as long that way (bench_dedup.py). ``probe``, some of
    ``key``'s columns, finds the rows that may repeat more cheaply: a row alone on those is
    alone.
    """

    def tag(columns: list[str]) -> pl.Expr:
        return pl.col(columns[0]) if len(columns) == 1 else pl.struct(columns)

    marked = frame.with_columns(_repeated=tag(probe or key).is_duplicated())
    once = marked.filter(~pl.col("_repeated"))
    repeated = (
        marked.filter(pl.col("_repeated"))
        .sort(order, descending=descending, nulls_last=True)
        .filter(tag(key).is_first_distinct())
    )
    return pl.concat([once, repeated], how="vertical").drop("_repeated")


def first_copies(frame: Frame, table: str, *, maintain_order: bool = False) -> Frame:
    """The dedup rule, for the readers and compaction alike: one row per ``event_key`` (the
    first copy in ``EVENT_ORDER``, nulls last); for deliveries, one row per attempt of
    Kirim's history (the last fetched) and per distinct other row (the earliest written).
    ``maintain_order`` returns the rows in that order (events: ``EVENT_ORDER``; deliveries:
    ``ingest_seq``); otherwise they come in no particular order."""
    if table == "events":
        kept = keep_first(frame, ["event_key"], list(EVENT_ORDER))
        return kept.sort(list(EVENT_ORDER), nulls_last=True) if maintain_order else kept
    # Rows collapse within one partition only, as compaction takes them: a history row
    # without created_at is filed by the day it was fetched, and one whose created_at Kirim
    # gave otherwise on another fetch may lie in another partition too.
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    day: list[str] = ["date"] if "date" in names else []
    snapshot = _snapshot()
    fetched = pl.col("origin") == "backfill"
    latest = keep_first(
        frame.filter(snapshot).with_columns(_attempt=FIRST_ATTEMPT),
        [*day, "delivery_id", "_attempt"],
        ["received_at", "ingest_seq"],
        descending=True,
    ).drop("_attempt")
    others = frame.filter(~snapshot).with_columns(
        _seen=pl.when(fetched).then(None).otherwise(pl.col("received_at"))
    )
    subset = [*day, *(c if c != "received_at" else "_seen" for c in DELIVERY_DEDUP_COLUMNS)]
    probe = [*day, "delivery_id", "attempt", "_seen"]
    kept = keep_first(others, subset, ["ingest_seq"], probe=probe)
    both = pl.concat([kept.drop("_seen"), latest], how="vertical")
    return both.sort("ingest_seq") if maintain_order else both


def scan(storage: Storage, table: str, plans: list[GroupPlan]) -> pl.LazyFrame:
    """One LazyFrame over the plans, never returning a duplicate (see module doc)."""
    merged = merge(table, plans)
    frames: list[pl.LazyFrame] = []
    if merged.clean:
        frames.append(_scan_files(storage, table, merged.clean))
    if merged.dedup:
        lf = _scan_files(storage, table, merged.dedup)
        if table == "events":
            where = pl.concat_str([pl.col("type"), pl.col("date").cast(pl.String)], separator="/")
        else:
            where = pl.col("date").cast(pl.String)
        frames.append(first_copies(lf, table).filter(where.is_in(merged.keep)))
    if not frames:
        return _empty(table)
    lf = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    if merged.decode:
        lf = lf.with_columns(pl.col("type").replace(merged.decode))
    return lf.select(output_schema(table).names)


_ARROW_SOURCE = "reading the Arrow source failed: "
"""How DuckDB words a failure of a pyarrow dataset it reads (an S3 lake's files, or a local
lake's that its own reader cannot take: :func:`read_in_place`); pyarrow's text follows."""

_ARROW_GONE = (
    f"[errno {errno.ENOENT}] ",
    "AWS Error NO_SUCH_KEY during GetObject operation",
    "AWS Error RESOURCE_NOT_FOUND during GetObject operation",
)
"""pyarrow's words for a file that is not there: a local file, or an S3 object whose HEAD
found none (``Path does not exist '...'. Detail: [errno 2] No such file or directory``); and
an S3 object deleted after pyarrow's HEAD and before its GET, which S3 answers 404: pyarrow
says ``NO_SUCH_KEY`` where it read S3's answer, and ``RESOURCE_NOT_FOUND`` (the HTTP status
alone) where it reads a range of the object straight into its buffer, as the Parquet
reader's reads are (both seen against moto's server). Not a denied request
(``ACCESS_DENIED``) nor a network failure (``NETWORK_CONNECTION``): those are no compaction,
and a new plan would fail alike."""


VANISHED_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    duckdb.IOException,
    duckdb.InvalidInputException,
)
"""The classes of the failures :func:`vanished_file` may say yes to: catch these, then ask
it (most of them are other failures)."""


def vanished_file(exc: BaseException) -> bool:
    """Whether a read failed on a file that no longer exists. A frame or relation over the
    lake reads the files that were there when it was made, and a compaction deletes the ones
    it replaced.

    Local files read by Polars: FileNotFoundError; by DuckDB's own reader: an IOException
    naming the file. Files read through a pyarrow dataset (an S3 lake; a local lake whose
    path DuckDB's reader cannot take): from Polars, pyarrow's error itself, a
    FileNotFoundError when the object was gone before the read asked for it, or an OSError
    of a GET answered 404 when it went between pyarrow's HEAD and GET; from DuckDB, the
    same texts inside an InvalidInputException. Other failures of S3 (access denied, no
    connection) are not a vanished file. An S3 bucket deleted since the read was planned is
    taken for one: S3 answers a HEAD with no body, and pyarrow cannot tell a missing bucket
    from a missing object.
    """
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    if isinstance(exc, duckdb.IOException):
        return "No files found" in text or "No such file" in text or "Cannot open file" in text
    if isinstance(exc, duckdb.InvalidInputException):
        if _ARROW_SOURCE not in text:
            return False
        text = text.split(_ARROW_SOURCE, 1)[1]
    elif not isinstance(exc, OSError):
        return False
    return any(gone in text for gone in _ARROW_GONE)


Result = TypeVar("Result")

_REREADING: ContextVar[bool] = ContextVar("kirim_events_rereading", default=False)
"""Whether this thread is inside a :func:`reread` already: an inner one then runs its read
once and lets a vanished file through to the outer one, which plans everything again."""


def reread(
    read: Callable[[], Result], *, attempts: int = READ_ATTEMPTS, storage: Storage | None = None
) -> Result:
    """``read()``, run again while it fails on a file it planned that a compaction deleted
    before it read it (:func:`vanished_file`), up to ``attempts`` runs in all; the last
    failure is raised as it is.

    With ``storage``, the lake ``read`` reads, a failed S3 request of the engines reading its
    files (denied, no answer: no vanished file) is raised as the one-line StorageError of
    :meth:`~kirim_events.lake.storage.Storage.s3_error`, which names the lake and what to
    check, rather than as pyarrow's OSError or DuckDB's error quoting it.

    ``read`` must plan its frames itself (call ``lake.events()``, ``lake.message_timelines()``
    ... inside it) and read them: each run then plans afresh, over the files the compaction
    left, which hold the same rows. A frame made before ``read`` was called cannot be planned
    again, and is not helped by this. There is no pause between runs: the compaction has
    finished, and a new plan reads its files at once. Any other failure is raised at once.
    A ``reread`` inside another one's ``read`` runs its read once: the outer one plans and
    runs the whole read again, so ``attempts`` bounds the runs in all.

    Examples
    --------
    >>> import tempfile, kirim_events as ke
    >>> lake = ke.Lake(tempfile.mkdtemp())
    >>> reread(lambda: lake.events().collect()).height
    0
    """
    if type(attempts) is not int or attempts < 1:
        raise ValueError(f"attempts must be a whole number, 1 or more, got {attempts!r}")
    nested = _REREADING.get()  # the outer reread plans and runs the whole read again
    token = _REREADING.set(True)
    try:
        for attempt in range(1, 2 if nested else attempts + 1):
            try:
                return read()
            except Exception as exc:
                if vanished_file(exc):
                    if nested or attempt == attempts:
                        raise
                    continue
                failed = None if storage is None else storage.s3_error(exc)
                if failed is None:
                    raise
                raise failed from exc
    finally:
        _REREADING.reset(token)
    raise AssertionError("unreachable: the last attempt returns or raises")
