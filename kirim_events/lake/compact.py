"""Compaction: merge each changed partition's small files into a few large, deduplicated ones.

Only partitions named by change markers (``_state/changes/``, left by the writer) are
visited, with their neighbours inside the dedup window, so the cost follows the partitions
written since the last run, not the size of the lake; of those, only partitions that are not
clean (or lost a copy to a neighbour) are rewritten. A full run (``full=True``) rewrites every
partition holding files, first leaving a change marker in each (named after a file it holds,
so the run consumes it as it would a writer's); it is recorded as unfinished until every
group is done, and the next run of either kind finishes one that crashed. Per group (one
event type, or all deliveries) the steps are, with a crash possible between any two:

1. ``planned``: list markers, the group's manifest and the partition files.
2. ``file_written``: write the merged files under new ``c-<generation>-...`` names (temp
   names, made durable, renamed into place; one hook call per file). Readers ignore ``c-``
   files the manifest does not list, so nothing changes for them yet.
3. ``manifest_published``: publish the new manifest atomically -- the commit point. From now
   on readers count the new files and ignore the replaced ones. A run whose writes fail
   before it (a full disk) deletes the files of step 2 it had put in place, which a plain
   reader would count beside the files they merge (``_Group._drop_unpublished``).
4. ``file_deleted``: delete the replaced files (and orphans of crashed runs).
5. ``markers_cleared``: delete the markers this run consumed. A crash before this leaves the
   markers, so the next run revisits the partitions and finishes the clean-up.

Before the groups, each run moves the files of a legacy event folder (a
``type=message.status_updated`` that versions before 01d6abb wrote) into the folder of the
type it is stored as now, where the run then merges them (``_migrate_legacy``).

At every point our readers see the old files or the new ones, never neither and never both.
Plain engines (DuckDB/Polars on the folders) see one copy per event_key once a run finishes.

Empty folders: once done, a run removes each folder it deleted a file from that is now
empty (a partition it emptied, a change-marker folder whose markers it consumed: one per
type and day otherwise, piling up for every later run and reader to list), never one
directly under the lake root (``Storage.remove_empty_folders``); on S3 it deletes their
zero-byte ``folder/`` objects instead. A writer may have just made such a folder, or found
it, and be about to move a file in; this is safe without any time margin: ``rmdir(2)``
removes only an empty folder, atomically, so a file moved in first keeps the folder, and a
move that finds the folder gone (ENOENT, its temp file still there) makes it again and
retries (``Storage._move_in``). The writer's markers and files land, whichever comes first.
(A margin on the folder's mtime would not protect a writer that finds an old folder, as
finding it does not touch it; and it would spare every folder a run empties, as the run's
own deletes have just modified them.)

Dedup: the first received copy of each event_key wins (``received_at``, then ``ingest_seq``,
then the tie-breaks of ``reader.EVENT_ORDER``), across all partitions of its type within the
dedup window; delivery rows collapse when exact.
Run one compaction at a time per lake: a lock file enforces it on local disks; on S3 a lease
record (``_state/compact.lease``, renewed by a thread) stops a second compactor that starts
while one runs. With S3 conditional writes (boto3 installed, a lake opened from its
location) it is taken and renewed only if unchanged since it was read, so of two starting in
the same instant exactly one runs; without them it is best effort (both could proceed: a
warning is logged, schedule a single compactor per lake); see :mod:`kirim_events.lake.lock`.
Before each manifest is published a run checks that it still holds the lease and that the
manifest is the one it planned from, and stops otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from kirim_events.errors import LakeError, SchemaVersionError, StorageError
from kirim_events.lake.lock import compaction_lock
from kirim_events.lake.paths import (
    compaction_file_name,
    is_compaction_file,
    is_our_file,
    parse_partition_dir,
    writer_file_name,
)
from kirim_events.lake.reader import (
    EVENT_ORDER,
    LEGACY_GROUPS,
    REQUIRED_EVENT_COLUMNS,
    arrow_files,
    file_schema,
    first_copies,
    group_dir,
    keep_first,
    list_dates,
    list_groups,
    near_days,
    parquet_names,
    polars_schema,
)
from kirim_events.lake.state import (
    FULL_RUN_PATH,
    FullRun,
    Manifest,
    check_version,
    manifest_path,
)
from kirim_events.lake.storage import Staged, Storage, is_temp_name
from kirim_events.lake.writer import (
    change_marker,
    marker_file_name,
    parquet_bytes,
    partition_dir,
)

__all__ = ["STEPS", "CompactionReport", "compact"]

STEPS = ("planned", "file_written", "manifest_published", "file_deleted", "markers_cleared")
"""Names passed to the ``hook`` of :func:`compact`, in order (some repeat per file)."""

# A compacted events file is ordered by the ids analytics groups on, then event time:
# conversation, then message (one message belongs to one conversation), so the events of a
# conversation sit together and, within it, those of each message. A group-by over such a
# file meets each group's rows together (timelines about a third faster at 10M events in
# Polars, DuckDB's bare GROUP BY a fifth), the id columns compress better, and row-group
# statistics on the ids let an engine skip row groups when it looks one id up. Events with
# neither id (contacts) keep event-time order.
CLUSTER_ORDER = ("conversation_id", "message_id", "occurred_at", "event_key")

Hook = Callable[[str], None]
logger = logging.getLogger(__name__)
TMP_TTL = 3_600.0


@dataclass
class CompactionReport:
    """What one compaction run did."""

    partitions: int = 0
    rows_in: int = 0
    rows_out: int = 0
    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    files_deleted: int = 0
    seconds: float = 0.0
    touched: list[tuple[str, str | None, str]] = field(default_factory=list)
    finished_full_run: str | None = None
    """When a full compaction began that crashed or was stopped before it reached every
    group, which this (normal) run finished: it rewrote the groups not reached."""
    warnings: list[str] = field(default_factory=list)
    """What the run's user should be told (also logged): an S3 lease only best effort."""

    @property
    def duplicates_removed(self) -> int:
        """Rows dropped as copies of an event (or delivery row) kept elsewhere."""
        return self.rows_in - self.rows_out


def _markers(
    storage: Storage, temps: dict[str, tuple[str, str | None, str] | None]
) -> dict[tuple[str, str | None], dict[str, list[str]]]:
    """Change markers: (table, group) -> date -> marker paths; the temp files of markers
    not yet renamed into place are added to ``temps`` instead, with their partitions
    (table, group, date): a write killed before its first rename left its data files'
    temp files there too, and no marker will ever name that partition for them."""
    found: dict[tuple[str, str | None], dict[str, list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for rel, _size in storage.list_files("_state/changes"):
        temp = is_temp_name(rel.rsplit("/", 1)[-1])
        if temp:
            temps[rel] = None
        parts = rel.split("/")[2:]  # drop "_state", "changes"
        if len(parts) == 3 and parts[0] == "deliveries":
            table, group, day = "deliveries", None, parse_partition_dir(parts[1], "date")
        elif len(parts) == 4 and parts[0] == "events":
            table, day = "events", parse_partition_dir(parts[2], "date")
            group = parse_partition_dir(parts[1], "type")
            if group is None:
                continue
        else:
            continue
        if day is not None and temp:
            temps[rel] = (table, group, day)
        elif day is not None:
            found[(table, group)][day].append(rel)
    return found


def _clean_tmp(storage: Storage, now: float) -> None:
    """Remove temp files of writes that died before their rename (older than an hour)."""
    if not storage.local:
        return
    _clean_temps(storage, [f"_tmp/{e.name}" for e in storage.list_dir("_tmp") if not e.is_dir], now)


def _clean_temps(storage: Storage, rels: list[str], now: float) -> list[str]:
    """Remove those of these temp files (local) not modified for an hour: left by a write
    that died before its rename. A younger one may be a write still going on: those are
    returned (left for a later run)."""
    if not storage.local:
        return []
    young = []
    for rel in rels:
        try:
            if os.stat(storage.full(rel)).st_mtime < now - TMP_TTL:
                storage.delete(rel)
            else:
                young.append(rel)
        except FileNotFoundError:
            continue
    return young


def _marker_ms(rel: str) -> int:
    """The writer clock (ms) in a marker's file name; 0 if unreadable."""
    name = rel.rsplit("/", 1)[1]
    try:
        return int(name.split("-")[1], 16)
    except (IndexError, ValueError):
        return 0


def _migrate_legacy(
    storage: Storage,
    *,
    writer_id: str,
    now: Callable[[], float],
    hook: Hook,
    check: Callable[[], None],
    manifests: set[str],
) -> set[str]:
    """Move the files of legacy event folders (``reader.LEGACY_GROUPS``: a
    ``type=message.status_updated`` written before 01d6abb) into the folder of the type they
    are stored as now; return the folders it deleted from.

    Crash-safe like the rest: (1) each file the legacy manifest counts is copied, as it is,
    into the same date of the new type under a new writer name, its change marker first,
    so this run's compaction of that type (or the next run's) merges it with the copies
    already there, first received winning (the rows hold no ``type``: the folder names
    it); (2) the legacy files' change markers are deleted; (3) the legacy files; (4) the
    legacy manifest. Until (3) is done, readers read the legacy folder as the new type,
    deduplicated with it (``reader.plan_table``); a crash anywhere leaves it to the next
    run to copy again (the copies collapse at compaction) and go on. A plain reader sees
    the copies twice until a run finishes, as during any compaction. ``manifests``: the
    manifest paths on disk as the run began (none is read where none is there)."""
    deleted_from: set[str] = set()
    present = set(list_groups(storage, "events"))
    for old, new in LEGACY_GROUPS.items():
        manifest_rel = manifest_path("events", old)
        if old not in present:
            if manifest_rel in manifests:  # a crash before (4)
                storage.delete(manifest_rel)
            continue
        check()
        manifest = Manifest.load(storage, manifest_rel)
        days = list_dates(storage, "events", old)
        listed = {d: parquet_names(storage, partition_dir("events", old, d)) for d in days}
        foreign = [
            f"{partition_dir('events', old, d)}/{n}"
            for d in days
            for n in sorted(listed[d])
            if not is_our_file(n)
        ]
        if foreign:
            raise LakeError(
                f"{foreign[0]} is not named as kirim-events names its files (put there by "
                "hand?); move it out of the lake and run again"
            )
        ms, seq = int(now() * 1000), 0
        for day in days:
            folder = partition_dir("events", old, day)
            for name in manifest.counted(day, list(listed[day])):
                data = storage.read_bytes(f"{folder}/{name}")
                if data is None:
                    raise LakeError(f"{folder}/{name} vanished while it was being moved")
                seq += 1
                copy = writer_file_name(ms, seq, writer_id + "mv")
                storage.publish_many(
                    [
                        (change_marker("events", new, day, copy), b""),
                        (f"{partition_dir('events', new, day)}/{copy}", data),
                    ],
                    first=1,
                )
                hook("file_written")
        # The markers of the files moved, before the files: a legacy folder is visited by
        # every run whatever its markers, and a marker whose file a crash had deleted first
        # would name a file never listed again. A marker whose file is not there after an
        # hour is consumed too (see compact); one of an older collector still writing
        # there, before its file, is left, and the next run moves the file.
        stale = int((now() - TMP_TTL) * 1000)
        cleared = False
        for rel, _size in storage.list_files(f"_state/changes/{group_dir('events', old)}"):
            marked = parse_partition_dir(rel.split("/")[-2], "date")
            if marked is None:
                continue
            if marker_file_name(rel) in listed.get(marked, {}) or _marker_ms(rel) < stale:
                storage.delete(rel)
                deleted_from.update([rel.rsplit("/", 1)[0], rel.rsplit("/", 2)[0]])
                cleared = True
        if cleared:
            hook("markers_cleared")
        for day in days:
            folder = partition_dir("events", old, day)
            for name in sorted(listed[day]):
                storage.delete(f"{folder}/{name}")
                hook("file_deleted")
            deleted_from.add(folder)
        deleted_from.add(group_dir("events", old))
        storage.delete(manifest_rel)
    return deleted_from


def _unfinished(storage: Storage) -> FullRun | None:
    """The record of a full run to finish (:class:`FullRun`); a damaged one is an error
    saying what to do: a full run replaces it and does what the record was kept for."""
    try:
        return FullRun.load(storage)
    except SchemaVersionError:
        raise
    except LakeError as exc:
        raise LakeError(
            f"{exc}. It records a full compaction begun and not finished; run kirim-events "
            "compact --full (Lake.compact(full=True)), which rewrites every type and replaces "
            "it"
        ) from None


Groups = list[tuple[str, str | None]]
"""Every group of both tables, legacy folders aside: (table, encoded type or None)."""


def _groups(storage: Storage) -> Groups:
    """The lake's groups, listed once per run (after the legacy folders are moved)."""
    return [
        (table, group)
        for table in ("events", "deliveries")
        for group in list_groups(storage, table)
        if group not in LEGACY_GROUPS
    ]


def _generations(storage: Storage, groups: Groups) -> dict[str, int]:
    """Every group's manifest path -> its generation (a full run's starting point)."""
    return {
        rel: Manifest.load(storage, rel).generation
        for table, group in groups
        for rel in [manifest_path(table, group)]
    }


def _unvouched(
    storage: Storage, report: CompactionReport, manifests: set[str], groups: Groups
) -> set[tuple[str, str | None]]:
    """The groups with no manifest whose partitions hold ``c-`` files: ``_state/compaction``
    was lost (or a copy restored without it), or the group's first compaction stopped after
    writing files and before publishing its manifest. Those files may be the only copy of
    the events they hold, so the group is rewritten whole, as a full run does, merging every
    file (see :mod:`kirim_events.lake.state`); its first manifest must cover every partition
    holding one, or the partitions it left out would count none of theirs. A group never
    compacted has no ``c-`` file and costs a listing of its partitions. ``manifests``: the
    manifest paths on disk (one listing: reading each group's manifest here cost every run,
    however few partitions it compacts, a request or two per event type on S3)."""
    found: set[tuple[str, str | None]] = set()
    for table, group in groups:
        rel = manifest_path(table, group)
        if rel in manifests:
            continue
        days = list_dates(storage, table, group)
        holding = [
            d
            for d in days
            if any(
                is_compaction_file(n)
                for n in parquet_names(storage, partition_dir(table, group, d))
            )
        ]
        if holding:
            found.add((table, group))
            said = (
                f"{partition_dir(table, group, holding[0]).rsplit('/', 1)[0]}: "
                f"{len(holding)} partition(s) hold compacted files (c-...) but {rel} is "
                "missing (the first compaction of this type stopped before it published "
                "it, or _state/compaction was lost): the group is rewritten whole from "
                "every file there, deduplicated, under a new manifest; no c- file is "
                "deleted unread"
            )
            report.warnings.append(said)
            logger.warning("%s", said)
    return found


class UnreadableFiles(LakeError):
    """Files of one group that cannot be read (damaged, cut short, not Parquet, no right to
    read them): that group is left as it is, the others are compacted."""

    def __init__(self, rels: list[str], cause: BaseException) -> None:
        self.rels, self.cause = rels, cause
        said = str(cause).strip().split("\n", 1)[0]
        super().__init__(f"{', '.join(rels)} cannot be read ({type(cause).__name__}: {said})")


class _Group:
    """Compaction of one group (an event type, or all deliveries)."""

    def __init__(
        self,
        storage: Storage,
        table: str,
        group: str | None,
        changed: set[str],
        *,
        window: int,
        target_file_bytes: int,
        row_group_rows: int,
        writer_id: str,
        now: Callable[[], float],
        hook: Hook,
        report: CompactionReport,
        workers: int,
        check: Callable[[], None] = lambda: None,
        full: bool = False,
    ) -> None:
        self.storage, self.table, self.group = storage, table, group
        self.changed, self.window = changed, window if table == "events" else 0
        self.target, self.row_group_rows = target_file_bytes, row_group_rows
        self.writer_id, self.now, self.hook, self.report = writer_id, now, hook, report
        self.manifest_rel = manifest_path(table, group)
        self.manifest = Manifest.load(storage, self.manifest_rel)
        self.workers, self.check, self.full = workers, check, full
        self.lock = threading.Lock()
        self.deleted_from: set[str] = set()  # folders a file was deleted from
        self.marked: dict[str, list[str]] = {}  # markers a full run left: day -> paths
        self.unsettled: set[str] = set()  # days holding a temp file too young to remove

    def folder(self, day: str) -> str:
        return partition_dir(self.table, self.group, day)

    def run(self) -> set[tuple[str, str]]:
        """Compact this group; return the files seen, as (day, name), for marker clean-up.

        By day: one write names its file alike in every partition it touches, and moves
        them in one by one after all its markers, so a name seen on one day says nothing
        of another day's file, which may still be on its way."""
        existing = set(list_dates(self.storage, self.table, self.group))
        members = sorted(
            {d for c in self.changed if c in existing for d in near_days(c, self.window, existing)}
        )
        temps: list[str] = []
        listed = {d: parquet_names(self.storage, self.folder(d), temps) for d in members}
        young = _clean_temps(self.storage, temps, self.now())
        # a temp file too young to remove keeps its partition's markers (compact), so that a
        # later run visits the partition again and removes it once it is an hour old: left
        # by a run killed between its renames, it would else stay for good
        self.unsettled = {
            d for d in members if any(t.startswith(f"{self.folder(d)}/") for t in young)
        }
        self._refuse_foreign(listed)
        counted = {d: self.manifest.counted(d, list(listed[d])) for d in members}
        # A full run rewrites clean partitions too: the dedup rule or the file schema may
        # have changed since they were compacted (or the lake was restored from a copy).
        dirty = [
            d
            for d in members
            if (self.full and counted[d]) or not self.manifest.is_clean(d, counted[d])
        ]
        # Files already merged: listed now, or replaced (and perhaps deleted) by an earlier run.
        seen = {(d, n) for d in members for n in [*listed[d], *self.manifest.replaced.get(d, ())]}
        self.hook("planned")
        winners = None
        rewrite = list(dirty)
        if dirty and self.table == "events":
            winners, losing_days = self._winners(members, counted)
            rewrite = sorted(set(dirty) | losing_days)  # clean days that lost a copy too
        if self.full:
            self._mark(rewrite, counted)
        new = Manifest(
            generation=self.manifest.generation + 1,
            files=dict(self.manifest.files),
            rows=dict(self.manifest.rows),
            replaced=dict(self.manifest.replaced),
        )
        staged: list[Staged] = []
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                done = pool.map(
                    lambda d: self._rewrite(d, counted[d], listed[d], winners, staged), rewrite
                )
                for day, (names, rows) in zip(rewrite, done, strict=True):
                    new.files[day], new.rows[day] = names, rows
                    new.replaced[day] = sorted(set(listed[day]) - set(names))
            self.storage.commit(staged, after_each=lambda _rel: self.hook("file_written"))
            if rewrite:
                self._still_ours()
                new.save(self.storage, self.manifest_rel)
        except (StorageError, LakeError):
            self.storage.discard(staged)
            self._drop_unpublished([s.rel for s in staged])
            raise
        finally:
            self.storage.discard(staged)
        if rewrite:
            self.manifest = new
            self.hook("manifest_published")
        # Delete everything listed that the current manifest does not count: the replaced
        # files of this run, and leftovers of an earlier run that crashed before its deletes.
        # A rewritten day's files were listed before its new ones were written: the new
        # manifest lists files the listing lacks, and so would vouch for nothing there.
        doomed = [
            f"{self.folder(day)}/{name}"
            for day in members
            for name in sorted(
                set(listed[day]) - set(new.files[day])
                if day in rewrite
                else set(listed[day]) - set(self.manifest.counted(day, list(listed[day])))
            )
        ]
        if doomed and not rewrite:
            self._still_ours()  # what a stale manifest leaves uncounted, a newer one may count
        with ThreadPoolExecutor(self.workers * 4) as pool:
            list(pool.map(self._delete, doomed))
        self.deleted_from.update(rel.rsplit("/", 1)[0] for rel in doomed)
        self.storage.sync_dirs([self.folder(d) for d in members])
        return seen

    def _drop_unpublished(self, rels: list[str]) -> None:
        """Delete this run's output files that are in place (renamed in; on S3, every one
        written) when the run failed before its manifest counted them: a full disk, a write
        refused. Readers of ours ignore them, but a plain reader counted each of their events
        once more, and each failed run (a disk still full) left another copy of the group's
        partitions, filling the disk further. None that the manifest now on storage counts
        (a publish that failed after its rename); best effort: what is left is deleted by
        the next run as the leftovers of a crashed one."""
        if not rels:
            return
        try:
            current = Manifest.load(self.storage, self.manifest_rel)
            counted = {f"{self.folder(d)}/{n}" for d, names in current.files.items() for n in names}
            for rel in rels:
                if rel not in counted:
                    self.storage.delete(rel)
        except (StorageError, LakeError) as exc:
            logger.warning("could not delete the files of a failed compaction: %s", exc)

    def _mark(self, days: list[str], counted: dict[str, list[str]]) -> None:
        """Leave a change marker in each of ``days`` before anything is written there.

        A full run rewrites partitions no marker names (clean ones): a crash between its
        writes and its deletes would leave files a plain reader counts twice and no marker
        making a later run clear them up. Each marker names a file the partition holds, so
        it is seen and consumed like a writer's (in this run, or in the next, which clears up
        after a crashed one: named after a ``c-`` file, it reads as long stale, so that run
        consumes it even where it rewrites nothing, the partition being clean again; the
        groups not reached are rewritten by that run too, as the lake recorded the full run
        as unfinished: :class:`~kirim_events.lake.state.FullRun`)."""
        if not days:
            return
        items = [(change_marker(self.table, self.group, d, counted[d][0]), b"") for d in days]
        self.storage.publish_many(items)
        for day, (rel, _data) in zip(days, items, strict=True):
            self.marked[day] = [rel]

    def _still_ours(self) -> None:
        """Raise LakeError unless this run still holds the lake (its lease on S3) and the
        manifest is the one it planned from: publishing over another compaction's manifest
        would count files that run deleted, and drop the ones it wrote."""
        self.check()
        current = Manifest.load(self.storage, self.manifest_rel).generation
        if current != self.manifest.generation:
            raise LakeError(
                f"{self.manifest_rel} changed while this compaction ran (generation "
                f"{self.manifest.generation} -> {current}: another compaction?); stopping "
                "before publishing anything: nothing is lost, the next run compacts again"
            )

    def _refuse_foreign(self, listed: dict[str, dict[str, int]]) -> None:
        """LakeError naming the Parquet files not named as kirim-events names its own
        (:func:`is_our_file`): a file put there by hand would be merged into the lake and
        then deleted."""
        foreign = [
            f"{self.folder(day)}/{name}"
            for day, names in listed.items()
            for name in sorted(names)
            if not is_our_file(name)
        ]
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise LakeError(
                f"{len(foreign)} Parquet file(s) in the lake that kirim-events did not write: "
                f"{', '.join(foreign[:3])}{more}. Compaction would merge them into the lake and "
                "delete them: move them out of the lake and run again"
            )

    def _delete(self, rel: str) -> None:
        self.storage.delete(rel)
        with self.lock:
            self.report.files_deleted += 1
        self.hook("file_deleted")

    def _read(self, day: str, names: list[str], columns: list[str] | None = None) -> pl.DataFrame:
        try:
            return self._read_files(day, names, columns)
        except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
            bad = self._unreadable(day, names)
            if not bad:
                # each file reads alone, or S3 refused or dropped a request: a failure of the
                # storage, not of a file, raised as it was (the run words it, with what the
                # credentials must be allowed to do)
                raise
            raise UnreadableFiles(bad, exc) from exc

    def _unreadable(self, day: str, names: list[str]) -> list[str]:
        """The files of ``names`` that cannot be read whole, each tried alone (an error path);
        none when S3 failed a request instead: the file may be sound."""
        bad = []
        for name in names:
            rel = f"{self.folder(day)}/{name}"
            try:
                arrow_files([self.storage.full(rel)], self.storage).to_table()
            except (pa.ArrowException, OSError) as exc:
                if self.storage.s3_error(exc) is not None:
                    return []
                bad.append(rel)
        return bad

    def _read_files(
        self, day: str, names: list[str], columns: list[str] | None = None
    ) -> pl.DataFrame:
        schema = file_schema(self.table)
        paths = [self.storage.full(f"{self.folder(day)}/{n}") for n in names]
        if not names:
            empty = schema.empty_table()
            frame = pl.from_arrow(empty if columns is None else empty.select(columns))
        elif self.storage.local:
            lazy = pl.scan_parquet(
                paths,
                hive_partitioning=False,
                glob=False,  # "[1]" in the lake's path would match nothing: no rows, no error
                schema=polars_schema(schema),
                missing_columns="insert",
                extra_columns="ignore",
            )
            frame = (lazy if columns is None else lazy.select(columns)).collect()
            if frame.height == 0:
                # Compaction deletes what it read: reading nothing from files that hold rows
                # (as a glob-like path once did) must stop it before anything is replaced.
                held = arrow_files(paths, self.storage)
                if (rows := held.count_rows()) > 0:
                    raise LakeError(f"read no rows from {len(paths)} files holding {rows}")
        else:
            dataset = arrow_files(paths, self.storage, schema)
            frame = pl.from_arrow(dataset.to_table(columns=columns))
        assert isinstance(frame, pl.DataFrame)
        if self.table == "events":
            for name in REQUIRED_EVENT_COLUMNS:
                if name in frame.columns and frame[name].null_count():
                    # a Parquet file not written by kirim-events: merged, its rows would
                    # become events with nulls, or be dropped and the file deleted
                    raise LakeError(
                        f"{self.folder(day)} holds rows without {name} (a file not written "
                        f"by kirim-events?): {', '.join(self._lacking(day, names, name))}; "
                        "move it out of the lake and run again"
                    )
        return frame

    def _lacking(self, day: str, names: list[str], column: str) -> list[str]:
        """The files of ``names`` with a null in ``column`` or without it (an error path)."""
        found = []
        for name in names:
            rel = f"{self.folder(day)}/{name}"
            table = arrow_files([self.storage.full(rel)], self.storage)
            if column not in table.schema.names or table.to_table([column])[column].null_count:
                found.append(rel)
        return found

    def _winners(
        self, members: list[str], counted: dict[str, list[str]]
    ) -> tuple[pl.DataFrame, set[str]]:
        """(event_key, date) of the winning copy of every key, and the days holding losers."""

        def read_keys(day: str) -> pl.DataFrame:
            frame = self._read(day, counted[day], ["event_key", *EVENT_ORDER])
            return frame.with_columns(pl.lit(day).alias("_date"))

        with ThreadPoolExecutor(self.workers) as pool:
            keys = pl.concat(list(pool.map(read_keys, members)))
        winners = keep_first(keys, ["event_key"], [*EVENT_ORDER, "_date"]).select(
            "event_key", "_date"
        )
        losing = (
            keys.select("event_key", "_date")
            .unique()
            .join(winners, on="event_key", suffix="_won")
            .filter(pl.col("_date") != pl.col("_date_won"))
        )
        return winners, set(losing["_date"].to_list())

    def _rewrite(
        self,
        day: str,
        names: list[str],
        listed: dict[str, int],
        winners: pl.DataFrame | None,
        staged: list[Staged],
    ) -> tuple[list[str], int]:
        frame = self._read(day, names)
        rows_in = frame.height
        # events are sorted by CLUSTER_ORDER below (a total order: it ends with the key),
        # so the dedup need not keep an order of its own for them
        frame = first_copies(frame, self.table, maintain_order=self.table != "events")
        if self.table == "events":
            if winners is not None:
                mine = winners.filter(pl.col("_date") == day).select("event_key")
                frame = frame.join(mine, on="event_key", how="semi")
            frame = frame.sort(list(CLUSTER_ORDER))
        bytes_in = sum(listed[n] for n in names)
        per_row = bytes_in / rows_in if rows_in else 1.0
        rows_per_file = max(1, int(self.target / max(per_row, 1.0)))
        n_files = max(1, math.ceil(frame.height / rows_per_file)) if frame.height else 0
        out_names = []
        arrow = frame.to_arrow().cast(file_schema(self.table))
        ms = int(self.now() * 1000)
        bytes_out = 0
        for i in range(n_files):
            chunk: pa.Table = arrow.slice(i * rows_per_file, rows_per_file)
            name = compaction_file_name(self.manifest.generation + 1, ms, self.writer_id, i)
            data = parquet_bytes(chunk, row_group_size=self.row_group_rows)
            item = self.storage.stage(f"{self.folder(day)}/{name}", data)
            with self.lock:
                staged.append(item)
            out_names.append(name)
            bytes_out += len(data)
        with self.lock:
            self.report.partitions += 1
            self.report.rows_in += rows_in
            self.report.rows_out += frame.height
            self.report.files_in += len(names)
            self.report.files_out += len(out_names)
            self.report.bytes_in += bytes_in
            self.report.bytes_out += bytes_out
            self.report.touched.append((self.table, self.group, day))
        return out_names, frame.height


def compact(
    storage: Storage,
    *,
    window_days: int = 2,
    target_file_bytes: int = 256 * 1024 * 1024,
    row_group_rows: int = 128 * 1024,
    full: bool = False,
    writer_id: str = "compact",
    now: Callable[[], float] = time.time,
    hook: Hook | None = None,
    workers: int | None = None,
) -> CompactionReport:
    """Compact the partitions changed since the last run; ``full=True`` rewrites them all.

    A normal run rewrites only the partitions change markers name (and neighbours that lost
    a copy), never a clean one. ``full=True`` rewrites every partition holding files,
    clean or not, through the same dedup and file schema: the remedy after the dedup rule or
    the schema changed (a partition compacted before keeps what the old rule kept, and
    columns since dropped) or after restoring a lake from a copy. It leaves a change marker
    in each partition before writing there, so the next run of either kind clears up after
    a crash, and records itself as it begins (``_state/full-compaction.json``: every
    group's manifest generation then); a run of either kind that finds the record rewrites
    whole, as a full run does, every group whose generation has not moved (a group not
    reached: its partitions are rewritten under one manifest) and deletes the record once
    every group is done (``report.finished_full_run``). A normal run otherwise rewrites no
    clean partition. ``report.partitions`` counts the partitions rewritten.

    See the module documentation for the steps and guarantees; ``hook(step)`` is called
    after each step (tests raise from it to simulate a crash there). Partitions of a group
    are rewritten by ``workers`` threads (default: the number of CPUs).
    """
    started = time.perf_counter()
    report = CompactionReport()
    step: Hook = hook or (lambda _step: None)
    if check_version(storage) is None:
        return report  # never written by kirim-events: nothing to do, and create nothing
    # the folders a file was deleted from, removed at the end if empty (on S3: their
    # ``folder/`` objects, the lease's own too, as _state/compact.lease is deleted last)
    deleted_from = {"_state"}
    owner = f"{writer_id}-{uuid.uuid4().hex[:8]}"
    with compaction_lock(storage, owner, now, warnings=report.warnings) as check:
        _clean_tmp(storage, now())
        # one listing of the manifests (only compaction writes them, and it holds the lake)
        manifests = {rel for rel, _size in storage.list_files("_state/compaction")}
        temps = [rel for rel in manifests if is_temp_name(rel.rsplit("/", 1)[-1])]
        manifests.difference_update(temps)
        deleted_from |= _migrate_legacy(
            storage, writer_id=writer_id, now=now, hook=step, check=check, manifests=manifests
        )
        # temp files beside their targets (written so to a folder on another filesystem
        # than _tmp) of manifests; those of data files are met in _Group.run
        _clean_temps(storage, temps, now())
        # the temp files of markers are removed after the groups, those of a partition that
        # holds a temp file too young to remove left for a later run to visit it again
        marker_temps: dict[str, tuple[str, str | None, str] | None] = {}
        markers = _markers(storage, marker_temps)
        changes: dict[tuple[str, str | None], set[str]] = {k: set(v) for k, v in markers.items()}
        for where in marker_temps.values():
            if where is not None:
                changes.setdefault(where[:2], set()).add(where[2])
        unsettled: set[tuple[str, str | None, str]] = set()
        groups = _groups(storage)  # once: three steps below went over them, each listing
        unvouched = _unvouched(storage, report, manifests, groups)
        # groups rewritten whole, as a full run does: every group of a full run; a group
        # with no manifest but c- files; the groups a crashed full run had not reached
        whole = set(unvouched)
        # a full run records itself over whatever record is there, even one it cannot read
        unfinished = None if full else _unfinished(storage)
        if full:
            began = datetime.fromtimestamp(now(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            FullRun(began, _generations(storage, groups)).save(storage)
        elif unfinished is not None:
            left = unfinished.not_reached(storage)
            whole |= {(t, g) for t, g in groups if manifest_path(t, g) in left}
            report.finished_full_run = unfinished.started_at
            logger.info(
                "finishing the full compaction begun %s: %d group(s) not reached yet",
                unfinished.started_at,
                len(left),
            )
        for key in [k for k in changes if k[0] == "events" and k[1] in LEGACY_GROUPS]:
            del changes[key]  # markers of files an older collector is still moving in
        for table, group in groups:  # a legacy folder is not one: emptied above
            if full or (table, group) in whole:
                days = set(list_dates(storage, table, group))
                changes.setdefault((table, group), set()).update(days)
        unreadable: list[UnreadableFiles] = []
        for (table, group), days in sorted(
            changes.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))
        ):
            check()
            group_run = _Group(
                storage,
                table,
                group,
                days,
                window=window_days,
                target_file_bytes=target_file_bytes,
                row_group_rows=row_group_rows,
                writer_id=writer_id,
                now=now,
                hook=step,
                report=report,
                workers=workers or os.cpu_count() or 1,
                check=check,
                full=full or (table, group) in whole,
            )
            try:
                seen = group_run.run()
            except UnreadableFiles as exc:
                unsettled.update((table, group, day) for day in group_run.unsettled)
                # One damaged file stopped every run at its group, and the groups after it
                # were never compacted again: a plain reader counted their copies for good.
                unreadable.append(exc)
                logger.error("%s: its type is left as it is; the others are compacted", exc)
                continue
            deleted_from.update(group_run.deleted_from)
            unsettled.update((table, group, day) for day in group_run.unsettled)
            group_markers = markers[(table, group)]
            for day, rels in group_run.marked.items():
                group_markers[day].extend(r for r in rels if r not in group_markers[day])
            # A marker is consumed once its file was seen in its partition (merged now, or counted
            # and the partition is clean). A marker whose file is not there after an hour was
            # consumed some other way: its write crashed before the rename, or two crashed
            # runs in a row merged and deleted the file and forgot its name.
            stale = int((now() - TMP_TTL) * 1000)
            consumed = [
                rel
                for day, day_markers in group_markers.items()
                if day not in group_run.unsettled
                for rel in day_markers
                if (day, marker_file_name(rel)) in seen or _marker_ms(rel) < stale
            ]
            for rel in consumed:
                storage.delete(rel)
            deleted_from.update(rel.rsplit("/", 1)[0] for rel in consumed)
            if consumed:
                step("markers_cleared")
        _clean_temps(
            storage, [rel for rel, where in marker_temps.items() if where not in unsettled], now()
        )
        if unreadable:
            # the engine's own error, as a read of the lake raises it (the CLI names every
            # damaged file then: Lake.damaged_files); the other groups are done
            raise unreadable[0].cause
        if full or unfinished is not None:
            # every group reached: the full run is finished, unless the lake was taken over
            # meanwhile (this run's lease lapsed), by a full run maybe, whose record this is
            try:
                check()
            except LakeError:
                said = (
                    "another compaction took over the lease as this one ended: the record"
                    f" of an unfinished full run ({FULL_RUN_PATH}) is left to it (the next"
                    " run deletes it if it was this run's)"
                )
                report.warnings.append(said)
                logger.warning("%s", said)
            else:
                storage.delete(FULL_RUN_PATH)
    storage.remove_empty_folders(deleted_from)
    report.seconds = time.perf_counter() - started
    return report
