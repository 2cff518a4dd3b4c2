"""The lake: partitioned Parquet on a folder or S3, with dedup, compaction and fast readers.

Layout (design.md)::

    DATA/events/type=<type>/date=<YYYY-MM-DD>/<name>.parquet
    DATA/deliveries/date=<YYYY-MM-DD>/<name>.parquet
    DATA/_state/lake.json                    schema version
    DATA/_state/compaction/...               compaction manifests
    DATA/_state/full-compaction.json         a full compaction begun, not finished
    DATA/_state/changes/...                  partitions written since the last compaction

The files hold EVENT_SCHEMA / DELIVERY_SCHEMA (``kirim_events.schema``) without the Hive
partition columns, so any engine that reads Hive Parquet reads the lake. Before compaction a
plain engine may see several copies of an event; ``Lake.events()`` and ``Lake.sql()`` never
do: the first received copy wins (smallest ``received_at``, then ``ingest_seq``; ties across
writers go by ``origin``, ``delivery_id``, ``attempt``: ``reader.EVENT_ORDER``). After
compaction each event_key is on disk exactly once.

``ingest_seq`` (int64, given at write time) increases per writer and follows the wall clock
across writers, for export watermarks; see :mod:`kirim_events.lake.writer`.

A LazyFrame or relation is planned over the files present when it was made; a compaction that
finishes before it is collected deletes the files it planned to read, so plan again then.

Modules: ``paths`` (names), ``storage`` (local/S3, atomic publish), ``state`` (version,
manifests), ``writer``, ``reader`` (Polars), ``sqlviews`` (DuckDB), ``compact``, ``lock``
(one compaction at a time).
"""

from __future__ import annotations

import copy
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from os import PathLike
from typing import Any, NamedTuple

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kirim_events.analytics import AnalyticsMixin
from kirim_events.errors import ConfigError, LakeError, NotALakeError
from kirim_events.events import KNOWN_TYPES, EventRecord, canonical_type
from kirim_events.journal_index import LAKE_ENTRIES, foreign_entries
from kirim_events.lake.compact import STEPS, CompactionReport, Hook
from kirim_events.lake.compact import compact as _compact
from kirim_events.lake.paths import decode_type
from kirim_events.lake.reader import (
    REQUIRED_EVENT_COLUMNS,
    GroupPlan,
    list_dates,
    list_groups,
    parquet_names,
    plan_table,
    reread,
    scan,
    vanished_file,
)
from kirim_events.lake.s3failures import s3_failure
from kirim_events.lake.sqlviews import create_stand_in, create_view
from kirim_events.lake.state import (
    VERSION_PATH,
    FullRun,
    Manifest,
    check_version,
    manifest_path,
)
from kirim_events.lake.storage import Storage, open_storage
from kirim_events.lake.writer import Writer, partition_dir
from kirim_events.sqltext import quote_identifier
from kirim_events.timearg import TimeLike, to_utc

__all__ = ["LAKE_ENTRIES", "STEPS", "CompactionReport", "Lake", "refuse_foreign_folder"]


_WRITER_ID = re.compile(r"[0-9a-z]{1,32}")


def _near(a: str, b: str) -> bool:
    """``a`` is ``b`` mistyped: one edit apart, or the same words but for case, separators
    and plurals (``Message_Statuses`` for ``message.status``)."""
    if _one_edit(a, b):
        return True
    words_a, words_b = _words(a), _words(b)
    return len(words_a) == len(words_b) and all(map(_same_word, words_a, words_b))


def _words(name: str) -> list[str]:
    return re.split(r"[._\- ]+", name.strip().lower())


def _same_word(a: str, b: str) -> bool:
    return a == b or a in (b + "s", b + "es") or b in (a + "s", a + "es")


def _type_names(type: object) -> list[str] | None:
    """``events(type=...)`` as a list of names (None: every type). TypeError for anything
    but a name or names: ``type=123`` raised "'int' object is not iterable", a None among
    names "object of type 'NoneType' has no len()"."""
    if type is None:
        return None
    if isinstance(type, str):
        return [type]
    names = list(type) if isinstance(type, Iterable) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise TypeError(
            f"type: expected an event type such as 'message.status', a list of them or None, "
            f"got {type!r:.60}"
        )
    return names


class _Partition(NamedTuple):
    table: str
    group: str | None  # the encoded event type; None for deliveries
    day: str
    folder: str
    sizes: dict[str, int]  # every Parquet file in the folder -> bytes
    counted: list[str]  # the files our readers count
    manifest: Manifest


def _one_edit(a: str, b: str) -> bool:
    """``a`` and ``b`` differ by one typo: a letter changed, added, dropped, or two letters
    swapped (``message.stauts``). Names further apart (``conversation.opened`` and
    ``conversation.closed``) may be different types, which a lake may not hold yet."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    swapped = i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
    return swapped or a[i + 1 :] == b[i + 1 :]


# LAKE_ENTRIES: what kirim-events keeps at the top of a lake (design.md's layout; defined
# by the journal, which loads without the lake's libraries). A folder holding none of these
# but other things is not a lake: a path one level off (DATA/events, the project folder
# above DATA) read as an empty lake, every helper answering zero rows. The demo clears
# these, and only these, from a folder it wrote before.


def _not_a_lake(root: str, foreign: list[str], nearby: str | None) -> str:
    """Why ``root`` is refused, and the lake ``nearby`` that was probably meant, if any."""
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    text = (
        f"{root} is not a kirim-events lake: it holds {shown} but no events/, deliveries/ "
        f"or {VERSION_PATH}"
    )
    return f"{text}; did you mean {nearby}?" if nearby else text


def refuse_foreign_folder(folder: str | PathLike[str]) -> None:
    """NotALakeError when the local ``folder`` holds other things and none of a lake's;
    a missing or empty folder, or a lake, passes (a new lake is made by its first write).

    What a command that writes a lake checks before it writes: a mistyped --data (the
    project folder, a home folder) would otherwise get a lake written into it, where the
    commands that read refuse it (:meth:`Lake._require_folder`, with the same message).
    """
    root = os.fspath(folder)
    if not os.path.isdir(root):
        return
    foreign = foreign_entries(os.listdir(root))
    if foreign:
        raise NotALakeError(_not_a_lake(root, foreign, _local_lake_near(root, foreign)))


def _local_lake_near(root: str, foreign: list[str]) -> str | None:
    """A lake in a folder above local ``root``, or in one of its ``foreign`` folders."""
    here = os.path.abspath(root)
    above = [os.path.dirname(here)]
    while os.path.dirname(above[-1]) != above[-1]:
        above.append(os.path.dirname(above[-1]))
    below = [os.path.join(here, name) for name in foreign]
    return next(
        (c for c in (*above, *below) if os.path.isfile(os.path.join(c, VERSION_PATH))), None
    )


def _an_object(location: str, storage: Storage) -> str:
    """Why the S3 object at ``location`` is refused, and the lake it lies in, if any."""
    text = f"{location} is an object, not a lake's prefix"
    bucket, _, key = storage.root.partition("/")
    parts = key.split("/")[:-1]
    for n in range(len(parts), -1, -1):  # the nearest lake above it: a HEAD each
        above = "/".join([bucket, *parts[:n]])
        if storage.is_object(f"{above}/{VERSION_PATH}"):
            return f"{text}; did you mean s3://{above}?"
    return text


class Lake(AnalyticsMixin):
    """A kirim-events lake on a local folder or at ``s3://bucket/prefix``.

    Parameters
    ----------
    location
        Folder path or ``s3://bucket/prefix`` (standard AWS environment, plus
        ``AWS_ENDPOINT_URL`` for S3-compatible servers).
    dedup_window_days
        How far apart (in days of event time) two copies of one event may land, 0 or more;
        see :mod:`kirim_events.lake.reader`.
    env, filesystem
        Environment mapping for S3 settings, or a ready ``pyarrow.fs.FileSystem``.
    now
        Clock (unix seconds) used for ingest sequence numbers and file names.
    writer_id
        Identifies this writer in file names (1-32 lower-case letters or digits); random by
        default. Two writers writing at once need two ids: one id is one writer.

    Examples
    --------
    >>> import tempfile, kirim_events as ke
    >>> lake = ke.Lake(tempfile.mkdtemp())
    >>> lake.events().collect().height
    0
    """

    def __init__(
        self,
        location: str | PathLike[str],
        *,
        dedup_window_days: int = 2,
        env: Mapping[str, str] | None = None,
        filesystem: pafs.FileSystem | None = None,
        now: Callable[[], float] = time.time,
        writer_id: str | None = None,
    ) -> None:
        self.storage: Storage = open_storage(location, env=env, filesystem=filesystem)
        if self.storage.local and os.path.isfile(self.storage.root):
            # a Parquet file of the lake given for the lake: "lake storage failed to read
            # '_state/lake.json': [Errno 20] Not a directory"
            root = self.storage.root
            nearby = _local_lake_near(root, [])
            hint = f"; did you mean {nearby}?" if nearby else ""
            raise NotALakeError(f"{root} is a file, not a lake's folder{hint}")
        if check_version(self.storage) is None and self.storage.is_object():
            # an object's URL (a Parquet file of the lake) read as a new, empty lake
            raise NotALakeError(_an_object(str(location), self.storage))
        self.location = str(location)
        self.dedup_window_days = dedup_window_days
        self.as_of_ts: datetime | None = None
        self.now = now
        self._known_lake = False  # an S3 prefix once seen holding a lake's entries
        if type(dedup_window_days) is not int or dedup_window_days < 0:
            # a negative window planned no partition as dirty: copies not yet compacted were
            # read twice, and every helper counted them twice
            raise ConfigError(
                f"dedup_window_days must be a whole number of days, 0 or more, "
                f"got {dedup_window_days!r}"
            )
        if writer_id is not None and not _WRITER_ID.fullmatch(writer_id):
            # it goes into file names, which readers match: "a/b" wrote into a folder no
            # reader looks at, "Host-1" made compaction outputs look like writer files
            raise ConfigError(
                f"writer_id must be 1-32 lower-case letters or digits, got {writer_id!r}"
            )
        self.writer_id = writer_id or uuid.uuid4().hex[:12]
        self._writer = Writer(self.storage, writer_id=self.writer_id, now=now)

    def __repr__(self) -> str:
        # a local lake by its whole path: a notebook runs in its own folder, and
        # Lake('data') did not say which data folder it had opened
        where = self.storage.root if self.storage.local else self.location
        suffix = f", as_of={self.as_of_ts.isoformat()!r}" if self.as_of_ts else ""
        return f"Lake({where!r}{suffix})"

    # ------------------------------------------------------------------ writing

    def write_events(self, records: Sequence[EventRecord] | pa.Table) -> int:
        """Append events; durable when it returns.

        Parameters
        ----------
        records
            EventRecords, or an Arrow table with EVENT_SCHEMA's columns (``ingest_seq`` is
            assigned here and any given value is replaced).

        Returns
        -------
        int
            Rows written (duplicates included: dedup happens on read and at compaction).

        Raises
        ------
        LakeError
            A row lacks event_key, type, occurred_at or received_at, a column has the
            wrong type, or an occurred_at lies outside the years 1 to 9999 (its UTC date
            names the partition). Nothing is written then.
        StorageError
            The storage failed; retry later.
        """
        return self._writer.write_events(records)

    def write_deliveries(self, rows: Sequence[Mapping[str, Any]] | pa.Table) -> int:
        """Append delivery rows (DELIVERY_SCHEMA columns; missing ones are null).

        Partitioned by the UTC date of ``created_at`` (Kirim's time), else ``received_at``,
        which must lie in the years 1 to 9999 (LakeError otherwise, and nothing is written).
        Returns the number of rows written; durable when it returns.
        """
        return self._writer.write_deliveries(rows)

    # ------------------------------------------------------------------ reading

    def _clock(self) -> datetime:
        """Now, by the lake's clock: what a span such as ``12h`` is counted back from."""
        return datetime.fromtimestamp(self.now(), UTC)

    def _require_folder(self) -> None:
        """LakeError when a local lake's folder does not exist, or when the folder (an S3
        prefix) holds other things and none of a lake's: read, it would be an empty lake,
        and a mistyped or relative path (a notebook runs in its own folder) or a prefix one
        level off would pass unseen. A lake's folder is made by its first write."""
        if self._known_lake:
            return
        root = self.storage.root
        if self.storage.local:
            if not os.path.isdir(root):
                raise NotALakeError(f"no lake at {root}: the folder does not exist")
            names = os.listdir(root)
        else:
            # a missing prefix is a new, empty lake; a missing bucket (a typo) is no lake
            names = [entry.name for entry in self.storage.list_dir("")]
            if not names and self.storage.bucket_missing():
                raise NotALakeError(
                    f"no lake at {self.location}: the bucket {self.storage.bucket} does not exist"
                )
        if any(name in LAKE_ENTRIES for name in names):
            # an S3 lake stays one (nothing we do removes all of its entries): its LIST is
            # paid once; a local folder is checked at each read, at the cost of a listdir
            self._known_lake = not self.storage.local
            return
        foreign = foreign_entries(names)
        if not foreign:  # an empty folder is a new lake; one holding other things is not one
            return
        if self.storage.local:
            raise NotALakeError(_not_a_lake(root, foreign, _local_lake_near(root, foreign)))
        # on S3 only a prefix below is looked at, one GET per candidate
        below = (n for n in foreign[:3] if self.storage.read_bytes(f"{n}/{VERSION_PATH}"))
        nearby = next((f"{self.location.rstrip('/')}/{n}" for n in below), None)
        raise NotALakeError(_not_a_lake(self.location, foreign, nearby))

    def _plan(self, table: str, **where: Any) -> list[GroupPlan]:
        """The files to read of ``table`` (:func:`~kirim_events.lake.reader.plan_table`).

        An S3 lake is checked once (:meth:`_require_folder`), so a bucket deleted since
        would list as an empty lake and a read would answer zero rows, also when a read is
        planned again after a failure (:func:`~kirim_events.lake.reader.reread`): when an
        S3 lake seen before lists nothing, its bucket is looked for again."""
        plans = plan_table(self.storage, table, **where)
        if not any(plan.clean or plan.dedup for plan in plans):
            self._require_bucket()
        return plans

    def _require_bucket(self) -> None:
        """NotALakeError when an S3 lake seen before (:meth:`_require_folder`) has lost its
        bucket since: called when a listing found nothing, which a deleted bucket lists as."""
        if self._known_lake and self.storage.bucket_missing():
            raise NotALakeError(
                f"no lake at {self.location}: the bucket {self.storage.bucket} does not "
                "exist (it did when this Lake first read it: deleted since?)"
            )

    def _range(
        self, since: TimeLike | None, until: TimeLike | None
    ) -> tuple[datetime | None, datetime | None]:
        now = self._clock()
        lo = None if since is None else to_utc(since, now=now, name="since")
        hi = None if until is None else to_utc(until, now=now, name="until", end_of_day=True)
        if self.as_of_ts is not None and (hi is None or hi > self.as_of_ts):
            hi = self.as_of_ts
        return lo, hi

    def events(
        self,
        type: str | Sequence[str] | None = None,
        *,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
    ) -> pl.LazyFrame:
        """Events as a Polars LazyFrame, one row per event_key (the first received copy).

        Parameters
        ----------
        type
            One event type or several; all types when None. Only those folders are read.
            A type Kirim also names otherwise (``message.status_updated``) is read under
            the name the lake keeps it by (``message.status``), and so is the
            ``type=message.status_updated`` folder of a lake written before that was so
            (deduplicated with ``message.status``; the next compaction moves it there).
        since, until
            Inclusive bounds on ``occurred_at`` (a date as ``until`` means its whole day);
            only the matching ``date=`` folders are read.

        Returns
        -------
        polars.LazyFrame
            EVENT_SCHEMA's columns plus ``date`` (the partition date).
        """
        self._require_folder()
        lo, hi = self._range(since, until)
        given = _type_names(type)
        # Kirim's other name of a type (message.status_updated) finds what the lake keeps
        types = None if given is None else [canonical_type(t) for t in given]
        if types:
            self._check_types(types)
        plans = self._plan(
            "events",
            types=types,
            lo=lo.date().isoformat() if lo else None,
            hi=hi.date().isoformat() if hi else None,
            window_days=self.dedup_window_days,
        )
        lf = scan(self.storage, "events", plans)
        if lo is not None:
            lf = lf.filter(pl.col("occurred_at") >= lo)
        if hi is not None:
            lf = lf.filter(pl.col("occurred_at") <= hi)
        return lf

    def _check_types(self, types: list[str]) -> None:
        """LakeError for a type neither known nor in the lake whose name is close to one that
        is (``message.stauts``): a typo read as an empty frame passes unseen. A known type,
        or one with no near name (a type Kirim added), reads as empty until it arrives."""
        unknown = [t for t in types if t not in KNOWN_TYPES]
        if not unknown:  # the usual case: no listing
            return
        present = {decode_type(g) for g in list_groups(self.storage, "events") if g is not None}
        names = sorted(present | KNOWN_TYPES)
        for wanted in unknown:
            if wanted in present:
                continue
            near = [name for name in names if _near(wanted, name)]
            if near:
                raise LakeError(
                    f"no events of type {wanted!r} in the lake; did you mean {near[0]!r}?"
                )

    def deliveries(
        self, *, since: TimeLike | None = None, until: TimeLike | None = None
    ) -> pl.LazyFrame:
        """Delivery rows (receipts and Kirim's history) as a LazyFrame: exact copies collapse,
        and Kirim's history is one row per attempt, the last fetched (a later backfill fetches
        an attempt again, with its outcome once it has one).

        ``since`` / ``until`` bound ``coalesce(created_at, received_at)``, as does ``as_of``.
        """
        self._require_folder()
        lo, hi = self._range(since, until)
        plans = self._plan(
            "deliveries",
            lo=lo.date().isoformat() if lo else None,
            hi=hi.date().isoformat() if hi else None,
        )
        lf = scan(self.storage, "deliveries", plans)
        when = pl.coalesce("created_at", "received_at")
        if lo is not None:
            lf = lf.filter(when >= lo)
        if hi is not None:
            lf = lf.filter(when <= hi)
        return lf

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new in-memory DuckDB connection with the lake's views.

        Returns
        -------
        duckdb.DuckDBPyConnection
            Views ``events`` and ``deliveries`` (deduplicated like :meth:`events`, restricted
            by :meth:`as_of`) and the analytics views, over the files present now; call again
            to see later writes.
        """
        self._require_folder()
        con = duckdb.connect()
        # Timestamps come out in UTC like the Polars readers' (DuckDB would otherwise convert
        # them to the machine's zone, and a join with a helper's frame would fail on the type).
        con.execute("SET TimeZone = 'UTC'")
        # Where the files are pyarrow datasets (S3), DuckDB does not know their row counts (it
        # assumes one row), and for a small left side it runs an ASOF join as a nested loop:
        # the conversation_cycles view took 42 s on 1M events that way, 0.6 s without.
        con.execute("SET asof_loop_join_threshold = 0")
        # A query may name the caller's DataFrames as tables, as with duckdb.sql(): DuckDB
        # looks for them in the frame that called .sql(), which for lake.sql() is ours.
        con.execute("SET python_scan_all_frames = true")
        tables = ("events", "deliveries")
        for table in tables:
            create_stand_in(con, table)  # so that creating the next views binds no files
        for name, body in self.analytics_views().items():
            con.execute(f"CREATE OR REPLACE VIEW {quote_identifier(name)} AS {body}")
        for table in tables:
            plans = self._plan(table, window_days=self.dedup_window_days)
            create_view(con, self.storage, table, plans, as_of=self.as_of_ts)
        return con

    def sql(
        self, query: str, *, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> duckdb.DuckDBPyRelation:
        """Run SQL over views ``events``, ``deliveries`` and the analytics views.

        Parameters
        ----------
        query
            DuckDB SQL. No extension is needed, also for lakes on S3.
        params
            Values of the query's ``?`` / ``$1`` (a sequence) or ``$name`` (a mapping)
            placeholders, as ``duckdb.sql(query, params=...)`` takes them: an aware
            datetime compares with the timestamps as the instant it is, a naive one as UTC.

        Returns
        -------
        duckdb.DuckDBPyRelation
            Fetch with ``.fetchall()``, ``.pl()``, ``.arrow()``, ``.df()``.

        Each call opens a new connection (see :meth:`connect`): relations of two calls
        cannot be joined, nor a temporary table kept between them; for a session, use
        ``con = lake.connect()``. Polars, pandas and Arrow frames of the calling code can be
        named in the query, as with ``duckdb.sql``.

        Examples
        --------
        >>> lake.sql("select type, count(*) from events group by 1").pl()  # doctest: +SKIP
        >>> vip = pl.DataFrame({"conversation_id": ["cnv_1"]})  # doctest: +SKIP
        >>> lake.sql("select * from conversation_lifecycles join vip using (conversation_id)")
        ... # doctest: +SKIP
        >>> since = datetime(2026, 5, 1, tzinfo=UTC)  # doctest: +SKIP
        >>> lake.sql("select count(*) from events where occurred_at >= $since",
        ...          params={"since": since})  # doctest: +SKIP
        """
        return self.connect().sql(query, params=params)

    def span(self) -> tuple[datetime, datetime] | None:
        """When the lake's events happened: the first and the last ``occurred_at``, whatever
        ``as_of`` (where an ``as_of`` finds something); None when it holds no event.

        Examples
        --------
        >>> import tempfile, kirim_events as ke
        >>> ke.Lake(tempfile.mkdtemp()).span() is None
        True
        """
        self._require_folder()
        # planned again if a compaction deletes its files meanwhile
        return reread(self._span, storage=self.storage)

    def _span(self) -> tuple[datetime, datetime] | None:
        plans = self._plan("events", window_days=self.dedup_window_days)
        # deduplicated: a retry whose body has no time of its own takes it from its
        # signature, so a copy may carry an event time that the kept copy does not
        first, last = (
            scan(self.storage, "events", plans)
            .select(pl.col("occurred_at").min(), pl.col("occurred_at").max().alias("last"))
            .collect()
            .row(0)
        )
        return None if first is None else (first, last)

    def as_of(self, ts: TimeLike) -> Lake:
        """The same lake, as the world looked at ``ts``.

        Parameters
        ----------
        ts
            An instant: an aware datetime, a naive one (UTC), ISO text, a date (its
            midnight, UTC), or a span before now such as ``"12h"`` or ``"7d"``.

        Returns
        -------
        Lake
            The same API (events, deliveries, sql, analytics) restricted to events with
            ``occurred_at <= ts`` and delivery rows with ``coalesce(created_at, received_at)
            <= ts``; ``as_of_ts`` is set. Writes through it go to the same lake. On a lake
            already as of an instant, the earlier of the two counts: a view never widens.
        """
        view = copy.copy(self)
        at = to_utc(ts, now=self._clock(), name="as_of")
        view.as_of_ts = at if self.as_of_ts is None else min(at, self.as_of_ts)
        return view

    # ------------------------------------------------------------------ upkeep

    def compact(
        self,
        *,
        full: bool = False,
        target_file_bytes: int = 256 * 1024 * 1024,
        hook: Hook | None = None,
    ) -> CompactionReport:
        """Merge the partitions written since the last compaction, deduplicating.

        Parameters
        ----------
        full
            Rewrite every partition, compacted or not, through the current dedup and file
            schema, not only those with change markers: after an upgrade that changed
            either, or restoring a lake from a copy. The lake records a full run as it
            begins; one that crashed or was stopped is finished by the next run, full or
            not (:meth:`unfinished_full_compaction`).
        target_file_bytes
            Aim for merged files of about this size (one file per partition below it).
        hook
            Called with each step name of :data:`STEPS` as it completes; tests raise from it
            to simulate a crash there.

        Returns
        -------
        CompactionReport
            Partitions, rows and files in and out, duplicates removed.

        Crash-safe at every step: see :mod:`kirim_events.lake.compact`.

        Raises
        ------
        LakeError
            The folder (or S3 prefix) holds other things and none of a lake's, as readers
            refuse it: compacting a path one level off found nothing to do and reported
            zeros. A folder not made yet holds nothing to compact: an empty report.
        StorageError
            The storage failed; on S3, a request denied or left unanswered, in one line
            naming the lake and what to check (:meth:`Storage.s3_error`). Nothing is lost:
            a compaction stopped at any step is finished by the next run.
        """
        if not self.storage.local or os.path.isdir(self.storage.root):
            self._require_folder()
        try:
            return _compact(
                self.storage,
                window_days=self.dedup_window_days,
                target_file_bytes=target_file_bytes,
                full=full,
                writer_id=self.writer_id,
                now=self.now,
                hook=hook,
            )
        except Exception as exc:
            # the Parquet files are read by pyarrow, not through the storage's own calls:
            # a request S3 refused there came as pyarrow's OSError
            failed = self.storage.s3_error(exc, action="read, write and delete in")
            if failed is None:
                raise
            for note in getattr(exc, "__notes__", ()):  # a lease left behind (lock.py)
                failed.add_note(note)
            raise failed from exc

    def unfinished_full_compaction(self) -> str | None:
        """When the full compaction (``compact(full=True)``) began that crashed or was
        stopped before it reached every group (UTC, ISO text), or None. The next
        :meth:`compact`, full or not, finishes it: it rewrites the groups not reached
        through today's dedup and file schema (``CompactionReport.finished_full_run``).

        Examples
        --------
        >>> import tempfile, kirim_events as ke
        >>> ke.Lake(tempfile.mkdtemp()).unfinished_full_compaction() is None
        True
        """
        record = FullRun.load(self.storage)
        return None if record is None else record.started_at

    def _partitions(self) -> Iterator[_Partition]:
        """Every partition of both tables, with the files our readers count in it; none on
        an S3 lake whose bucket was deleted since it was first read: LakeError, as a read."""
        found = False
        for part in self._each_partition():
            found = True
            yield part
        if not found:
            self._require_bucket()

    def _each_partition(self) -> Iterator[_Partition]:
        for table in ("events", "deliveries"):
            for group in list_groups(self.storage, table):
                manifest = Manifest.load(self.storage, manifest_path(table, group))
                for day in list_dates(self.storage, table, group):
                    folder = partition_dir(table, group, day)
                    sizes = parquet_names(self.storage, folder)
                    counted = manifest.counted(day, list(sizes))
                    yield _Partition(table, group, day, folder, sizes, counted, manifest)

    def _rows_in(self, rel: str) -> int:
        return int(pq.read_metadata(self.storage.full(rel), filesystem=self.storage.fs).num_rows)

    def damaged_files(self) -> list[str]:
        """Files our readers count whose Parquet footer cannot be read (truncated, damaged,
        or not Parquet), or events files without a column every event has (``event_key``,
        ``occurred_at``, ``received_at``: a Parquet file not written by kirim-events, whose
        rows would read as events with nulls), as paths relative to the lake. Reads each
        file's footer only. LakeError where there is no lake, as the readers raise it.

        A file listed that a compaction (in another process) deletes before its footer is
        read is not damaged: the files are listed again (:func:`~kirim_events.lake.reader.reread`).
        """
        self._require_folder()  # no lake there (a mistyped bucket) is not a lake undamaged
        return reread(self._damaged_files, storage=self.storage)

    def _damaged_files(self) -> list[str]:
        damaged = []
        for part in self._partitions():
            for name in part.counted:
                rel = f"{part.folder}/{name}"
                try:
                    footer = pq.read_metadata(self.storage.full(rel), filesystem=self.storage.fs)
                except (pa.ArrowException, OSError) as exc:
                    if vanished_file(exc) or s3_failure(exc) is not None:
                        # deleted since it was listed (a compaction): gone, not damaged; a
                        # request S3 denied or left unanswered: no damage either
                        raise
                    damaged.append(rel)
                    continue
                if part.table == "events" and not set(REQUIRED_EVENT_COLUMNS).issubset(
                    footer.schema.names
                ):
                    damaged.append(rel)
        return damaged

    def stats(self) -> pl.DataFrame:
        """Rows, files and bytes per partition (files our readers count; copies included).

        Columns: ``table``, ``type``, ``date``, ``files``, ``rows``, ``bytes``, ``clean``
        (compacted, nothing written since, and no file left over from an interrupted
        compaction: a plain Parquet reader sees each event of a clean partition once),
        ``leftover_files`` (on disk, not counted by our readers; the next compaction
        deletes them). Listed again if a compaction deletes a file listed before it is read
        (:func:`~kirim_events.lake.reader.reread`).
        """
        self._require_folder()
        return reread(self._stats, storage=self.storage)

    def _stats(self) -> pl.DataFrame:
        out = [
            {
                "table": part.table,
                "type": None if part.group is None else decode_type(part.group),
                "date": date.fromisoformat(part.day),
                "files": len(part.counted),
                "rows": sum(self._rows_in(f"{part.folder}/{name}") for name in part.counted),
                "bytes": sum(part.sizes[n] for n in part.counted),
                "clean": part.manifest.is_clean(part.day, part.counted)
                and len(part.counted) == len(part.sizes),
                "leftover_files": len(part.sizes) - len(part.counted),
            }
            for part in self._partitions()
        ]
        schema = {
            "table": pl.String,
            "type": pl.String,
            "date": pl.Date,
            "files": pl.Int64,
            "rows": pl.Int64,
            "bytes": pl.Int64,
            "clean": pl.Boolean,
            "leftover_files": pl.Int64,
        }
        return pl.DataFrame(out, schema=schema)
