"""Backfill: pull Kirim's delivery history into the journal (then the lake), resumably.

``backfill(data, client=..., since=..., until=...)`` walks ``GET /v1/webhook_deliveries`` for
``[since, until)`` and, page by page:

1. turns every history row matching the filters asked into a ``deliveries`` row
   (``origin = "backfill"``, ``outcome`` = Kirim's status) and, when the row carries its
   ``payload``, parses it into events (``origin = "backfill"``). Kirim may ignore a
   filter (kirim-api.md §7.4 only assumes them): rows shown outside one are skipped and
   counted per filter, a row without the field is kept
   (:mod:`kirim_events.history_filter`), and the page counts as read;
2. appends both to the collector's :class:`~kirim_events.journal.Journal` in one durable
   commit, so events go through the same dedup index as webhooks and replays;
3. only then saves the checkpoint (filters, cursor, ``created_before``) under
   ``DATA/_state/backfill/``. A killed run started again with the same arguments resumes
   from the last checkpointed cursor. A range given as a span ago (``since="1h"``) names
   other times at each start: resumed within 24 hours of its start, the old range
   is finished, then the rest up to the end of the range asked now is walked under a
   checkpoint of its own (so an hourly ``since="1h"`` after a killed run loses no hour).

Exactly once in the lake, across kills: events are deduplicated by the journal's index;
delivery rows of a page fetched twice (killed after the commit, before the checkpoint) are
exact copies, because ``received_at`` is the run's fixed snapshot time, and the lake
collapses exact copies of delivery rows. A later run over the same range fetches the rows
again at another time: the lake keeps one row per attempt of a delivery, the last fetched,
so an attempt seen under way and again with its outcome is one row (a delivery retried
since adds a row for its new attempt).

The range is split into ``4 x slices`` time slices walked by ``slices`` threads through one
:class:`~kirim_events.client.KirimClient`, whose single rate limiter keeps all of them within
Kirim's limit. ``created_before`` is fixed when the run starts (``until``, or now). Each slice
asks for ``HISTORY_OVERLAP`` more on both sides and keeps only rows inside its own bounds, so
the result is right whether Kirim's bounds are inclusive or exclusive, and whatever it rounds
them to. A Kirim that ignores the time range (kirim-api.md §7.4 only assumes it) would send
every slice the whole history: the first page showing a row far outside the range its slice
asked for ends the slicing at once (:data:`TIME_FILTER_IGNORED`, said through ``progress``
and in ``notes``), and one slice over the whole range is walked instead, checkpointed as
such, so a resumed run walks it too. A cursor Kirim refuses (expired) starts a new chain of
pages that skips what was read, in the time order the rows read show
(:mod:`kirim_events.history_slices`). Memory
stays flat: one page per slice is held at a time; the journal is flushed to the lake in
bounded batches.

The library never prints: pass ``progress=`` to receive a :class:`BackfillProgress` after
every page (the CLI draws a progress bar from it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kirim_events.atomicfile import make_dirs, move_file, replace_file
from kirim_events.client import Delivery, KirimClient, Page, format_time
from kirim_events.errors import (
    ConfigError,
    Interrupted,
    PayloadError,
    StorageError,
)
from kirim_events.events import EventRecord, canonical_type, parse_delivery, parse_time
from kirim_events.filelock import file_lock
from kirim_events.history_filter import TIME_FILTER, FilterTally, HistoryFilter
from kirim_events.history_slices import (
    HISTORY_OVERLAP,
    Slice,
    split,
    untimed_mark,
    walk_restarting,
)
from kirim_events.journal import Journal
from kirim_events.journal_index import data_folder, refuse_foreign_folder, refuse_inside_lake
from kirim_events.stopsignals import held
from kirim_events.subscription_health import (
    FailureStreaks,
    SubscriptionAlert,
    alerts,
    reaches_now,
    read_statuses,
)
from kirim_events.timearg import is_span, parse_when

__all__ = [
    "HISTORY_OVERLAP",
    "TIME_FILTER_IGNORED",
    "BackfillProgress",
    "BackfillReport",
    "backfill",
    "delivery_events",
    "delivery_row",
]

log = logging.getLogger("kirim_events.backfill")

CHECKPOINT_VERSION = 1
_PIECES = 4  # time slices per parallel fetcher
_FLUSH_BATCH = 2_000  # events per lake write at the end: bounds memory, not the file count
SPAN_RESUME_WITHIN = timedelta(hours=24)  # a killed "--since 7d" run resumes within this
TIME_FILTER_IGNORED = (
    "Kirim ignores --since/--until (a page asked for one time slice held rows far outside"
    " it): the history is walked once, not in time slices that would each read all of it"
)
"""The note of a run that found Kirim ignoring the time range and stopped slicing."""


def check_order(
    since: datetime,
    until: datetime | None,
    *,
    now: datetime | None = None,
    names: tuple[str, str] = ("since", "until"),
) -> None:
    """ConfigError unless ``since`` is before ``until`` (None: now) and, with ``now``, before
    now too, where Kirim's history ends; ``names`` are what the caller calls them (the
    CLI's flags)."""
    if now is not None and not since < now:
        # not "must be before until (now)": an until that was not typed, or not that one
        raise ConfigError(
            f"{names[0]} ({format_time(since)}) is not in the past: Kirim's history ends now"
            f" ({format_time(now)})"
        )
    if until is not None and not since < until:
        raise ConfigError(
            f"{names[0]} ({format_time(since)}) must be before {names[1]} ({format_time(until)})"
        )


def _asked(value: str | datetime | None, resolved: datetime | None) -> str:
    """How a run key names a bound: a span ago (``7d``) or ``now`` by its text, so that a
    killed run resumes when started again with the same arguments; a time by its value."""
    if value is None:
        return "now"
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "now" or is_span(text):
            return "ago:" + re.sub(r"\s+", "", text)
    assert resolved is not None
    return format_time(resolved)


# --------------------------------------------------------------------------- rows


def delivery_headers(d: Delivery) -> dict[str, str]:
    """The ``X-Kirim-*`` headers a history row stands for (as its webhook would carry)."""
    out = {}
    for name, value in (
        ("X-Kirim-Event-Id", d.event_id),
        ("X-Kirim-Event", d.event_type),
        ("X-Kirim-Delivery-Id", d.id),
        ("X-Kirim-Attempt", None if d.attempt is None else str(d.attempt)),
    ):
        if value is not None:
            out[name] = value
    return out


def delivery_events(
    d: Delivery, *, received_at: datetime, origin: str = "backfill"
) -> list[EventRecord]:
    """Parse a history row's payload into events ([] when it carries none).

    Raises PayloadError (the caller quarantines) when the payload is not a known body.
    """
    body = d.body()
    if body is None:
        return []
    return parse_delivery(
        body,
        delivery_headers(d),
        received_at=received_at,
        origin=origin,
        payload_exact=d.payload_exact,
    )


def delivery_row(
    d: Delivery, *, received_at: datetime, n_events: int | None, reason: str | None = None
) -> dict[str, Any]:
    """The ``deliveries`` table row (DELIVERY_SCHEMA) for one history row."""
    return {
        "delivery_id": d.id,
        "attempt": d.attempt,
        "event_id": d.event_id,
        "event_type": canonical_type(d.event_type),
        "origin": "backfill",
        "outcome": d.status,
        "reason": reason or d.error,
        "received_at": received_at,
        "created_at": d.created_at,
        "subscription_id": d.subscription_id,
        "replayed_from": d.replayed_from,
        "response_status_code": d.response_status_code,
        "n_events": n_events,
    }


# --------------------------------------------------------------------------- state


_FILTERS = ("subscription_id", "status", "event_type")
"""The history filters a run asks (those given), by their query parameter names."""

_SLICE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "cursor": (str, type(None)),
    "started": bool,
    "done": bool,
    "pages": int,
    "rows": int,
    "restarts": int,
    "went_back": bool,
    "went_forward": bool,
}
"""The types of a checkpointed slice's fields other than its times (checked apart)."""


@dataclass
class _Checkpoint:
    key: str
    since: str
    until: str  # the fixed created_before
    snapshot: str  # received_at of every row of this run
    filters: dict[str, str]
    slices: list[Slice]
    version: int = CHECKPOINT_VERSION
    time_filter_ignored: bool = False  # the run found it so: ``slices`` is one, the range

    @classmethod
    def load(cls, path: Path) -> _Checkpoint | None:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read backfill checkpoint {path}: {exc}") from exc
        except ValueError as exc:  # not JSON (cut short?)
            raise StorageError(
                f"backfill checkpoint {path} is damaged ({exc}); delete it to start the run afresh"
            ) from exc
        damaged = StorageError(
            f"backfill checkpoint {path} is damaged; delete it to start the run afresh"
        )
        if not isinstance(raw, dict):
            raise damaged
        if raw.get("version") != CHECKPOINT_VERSION:
            raise StorageError(
                f"backfill checkpoint {path} has an unknown version (written by another "
                "kirim-events?); delete it to start the run afresh (what is stored stays)"
            )
        try:
            for s in raw["slices"]:
                s.pop("last", None)  # written by a version between a12fcf2 and aa784de
            raw["slices"] = [Slice(**s) for s in raw["slices"]]
            cp = cls(**raw)
        except (TypeError, KeyError, AttributeError):
            raise damaged from None
        times: list[object] = [cp.since, cp.until, cp.snapshot]
        times += [
            t
            for s in cp.slices
            for t in (
                s.after,
                s.before,
                s.oldest,
                s.newest,
                s.fetch_before,
                s.fetch_after,
                s.low,
                s.high,
            )
        ]
        if not cp.slices or any(
            t is not None and (not isinstance(t, str) or parse_time(t) is None) for t in times
        ):
            raise damaged
        if not isinstance(cp.time_filter_ignored, bool) or (
            cp.time_filter_ignored and len(cp.slices) != 1
        ):
            raise damaged
        # the rest of the shape too: a field of another type failed later, in a fetcher,
        # as a TypeError or AttributeError traceback at every resume
        # and only the filters a run asks (another name was sent on every page; "cursor" or
        # "limit" failed in a fetcher as a TypeError traceback at every resume)
        if not isinstance(cp.filters, dict) or not all(
            k in _FILTERS and isinstance(v, str) for k, v in cp.filters.items()
        ):
            raise damaged
        if not all(
            isinstance(getattr(s, name), kinds)
            for s in cp.slices
            for name, kinds in _SLICE_FIELDS.items()
        ):
            raise damaged
        return cp

    def save(self, path: Path) -> None:
        data = json.dumps(asdict(self), indent=1, sort_keys=True).encode()
        try:
            make_dirs(path.parent)
            replace_file(path, data)  # .<name>.*.tmp until renamed: a run removes a killed one's
        except OSError as exc:
            raise StorageError(f"cannot write backfill checkpoint {path}: {exc}") from exc


def _run_key(since: str, until: str, filters: Mapping[str, str], account: str) -> str:
    """The checkpoint's name: the asked range and filters, and the Kirim account (a run
    killed against one Kirim or API key must not resume against another: its slices marked
    done would be skipped there)."""
    ident = json.dumps([since, until, sorted(filters.items()), account])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _run_lock(checkpoint: Path) -> Iterator[None]:
    """Hold ``<checkpoint>.lock`` for the whole run; a second run of the same range on the
    same data folder is refused (both wrote the one checkpoint). The file goes as the run
    ends, however it ends (one a run leaves per range asked, and a scheduled backfill asks a
    new range each time); :func:`~kirim_events.filelock.file_lock` says why that is safe."""
    lock = checkpoint.with_suffix(".lock")
    try:
        # here, not by the lock: its folder would not be fsync'd, and the checkpoint's
        # folder fsync would not make _state/backfill/ itself survive a power loss
        make_dirs(checkpoint.parent)
    except OSError as exc:
        raise StorageError(f"cannot make folder {checkpoint.parent}: {exc}") from exc
    with file_lock(lock, wait=False, remove=True) as held:
        if not held:
            raise StorageError(
                "another backfill of this range is running on this data folder (it holds "
                f"{lock}); wait for it to end"
            )
        yield


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class BackfillProgress:
    """A snapshot after each page: what the progress bar shows."""

    pages: int
    rows: int
    events_new: int
    fraction: float
    """Share of the time range walked (from its slices' pages), never less than in an
    earlier snapshot of the run: the one walk a run turns to when Kirim ignores the time
    range reads the range again from the start, and the share stays until it gets further."""
    elapsed: float
    slices_done: int
    """Time slices walked to their end, never fewer than in an earlier snapshot."""
    slices: int
    """Time slices of the run: once Kirim is found ignoring the time range, the slices
    done by then and the one walk over the range (the total may change; what is done
    stays counted)."""
    note: str | None = None
    """A line to tell the user now (given once, on the page after it arose): that Kirim
    ignores the time range (:data:`TIME_FILTER_IGNORED`). The report's ``notes`` hold it too."""

    @property
    def rows_per_second(self) -> float:
        """Rows stored per second so far."""
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, estimated from the share of the time range done (None at first)."""
        if self.fraction <= 0:
            return None
        return self.elapsed * (1 - self.fraction) / self.fraction


@dataclass
class BackfillReport:
    """What a backfill did; the CLI renders it."""

    since: datetime
    until: datetime
    slices: int
    resumed: bool
    """Whether the run went on from the checkpoint of one that did not finish (killed,
    interrupted, or stopped by an error)."""
    filters: dict[str, str] = field(default_factory=dict)
    """The history filters of the run (``subscription_id``, ``status``, ``event_type``:
    those given)."""
    pages: int = 0
    rows: int = 0
    """History rows read inside the range and the filters (those stored): a row read again
    (pages that overlap, a chain restarted after a refused cursor, a resumed run) counts
    again; the lake keeps one."""
    events_new: int = 0
    events_duplicate: int = 0
    rows_without_payload: int = 0
    rows_without_time: int = 0
    """Rows whose ``created_at`` is missing or unreadable (kept once, by the first slice
    sent one)."""
    items_unreadable: int = 0
    """Items of the history's pages that are no delivery object (null, a number): skipped,
    and counted each time a page holding them is read."""
    quarantined: int = 0
    filtered: FilterTally = field(default_factory=FilterTally)
    """Rows Kirim returned outside the filters asked (skipped, not stored), and rows kept
    that carry no value for a filter (:mod:`kirim_events.history_filter`). Rows outside
    the time range are counted by the first or last slice, once per read. Once Kirim is
    found ignoring the time range, the count is that of the one walk over the range."""
    notes: list[str] = field(default_factory=list)
    """What the user should know, one line each (``filtered`` in words)."""
    requests: int = 0
    retries: int = 0
    flushed_events: int = 0
    flushed_deliveries: int = 0
    seconds: float = 0.0
    checkpoint: str = ""
    errors: list[str] = field(default_factory=list)
    subscriptions: list[SubscriptionAlert] = field(default_factory=list)
    """Subscriptions Kirim sends nothing to (disabled: their new events make no history row,
    so no backfill finds them) or whose newest deliveries read all failed; read once per
    run, after the walk (not counted in ``requests``, the history's)."""
    subscriptions_unread: str | None = None
    """Why the subscriptions could not be read (one line), when they could not."""


# --------------------------------------------------------------------------- the run


class _Run:
    """One backfill run's shared state (threads update it under one lock)."""

    def __init__(
        self,
        client: KirimClient,
        journal: Journal,
        cp: _Checkpoint,
        path: Path,
        report: BackfillReport,
        page_size: int,
        progress: Callable[[BackfillProgress], None] | None,
        clock: Callable[[], float],
        whole: tuple[datetime, datetime] | None = None,
        streaks: FailureStreaks | None = None,
    ) -> None:
        self.client, self.journal, self.cp, self.path = client, journal, cp, path
        self.streaks = streaks or FailureStreaks()  # the run's, across its walks
        self.report, self.page_size, self.progress, self.clock = report, page_size, progress, clock
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = clock()
        self.snapshot = parse_time(cp.snapshot) or datetime.now(UTC)
        self.filter = HistoryFilter.of(cp.filters)
        since, until = parse_time(cp.since), parse_time(cp.until)
        assert since is not None
        assert until is not None
        # rows beyond these were outside what any slice asked for (--since/--until ignored);
        # ``whole``: the range of the run's walks together, of which this walk is one (a
        # row of another walk's range is that walk's, not outside the range reported)
        since, until = whole or (since, until)
        self.beyond = (since - HISTORY_OVERLAP, until + HISTORY_OVERLAP)
        # A row without a readable time belongs to no slice's range, and any slice may be
        # sent it (Kirim files it by the time it knows): the first to see it keeps it.
        self.untimed_seen: set[str] = set()
        # Kirim ignoring the time range: said with the next progress snapshot (a resumed
        # run's at its start, say_due), and its one slice over the range walked by one fetcher
        self.note_due = TIME_FILTER_IGNORED if cp.time_filter_ignored else None
        self.whole_taken = cp.time_filter_ignored  # then cp.slices is that one slice
        # The progress never steps back when the slicing ends: the slices done by then stay
        # counted, and the share of the range walked stays until the one walk passes it.
        self.slices_before = 0  # slices done when the slicing ended
        self.fraction_told = 0.0
        self.untold: deque[BackfillProgress] = deque()  # snapshots not given to progress yet
        self.filtered = FilterTally()  # this walk's, added to the report's as it ends
        self.telling = threading.Lock()  # held by the thread giving them (_tell)

    def walk(self, s: Slice) -> None:
        # A cursor Kirim no longer accepts (expired, or its encoding changed between runs)
        # starts a new chain that skips what was read (Slice.restart), saved at once. Rows
        # fetched twice are harmless (dedup index; exact copies of delivery rows). A rerun
        # starts counting refusals again (a new run, a new chance).
        walk_restarting(s, lambda: self._walk(s), restart=lambda: self._restart(s))
        whole = self._take_whole()
        if whole is not None:  # the slicing ended: this fetcher walks the range once
            walk_restarting(whole, lambda: self._walk(whole), restart=lambda: self._restart(whole))

    def _take_whole(self) -> Slice | None:
        """The one slice over the whole range, for the first fetcher to ask once Kirim was
        found ignoring the time range (None for the others, and before that)."""
        with self.lock:
            if not self.cp.time_filter_ignored or self.whole_taken:
                return None
            self.whole_taken = True
            return self.cp.slices[0]

    def _dropped(self, s: Slice) -> bool:
        """Whether ``s`` is a slice the run no longer walks (Kirim ignores the time range)."""
        return self.cp.time_filter_ignored and self.cp.slices[0] is not s

    def _ignores_time(self, window: tuple[datetime, datetime], times: list[datetime]) -> bool:
        """Whether rows at ``times`` show Kirim ignoring the time range: one is further than
        ``HISTORY_OVERLAP`` (a rounding Kirim's slack) outside the ``window`` asked for, in a
        run of several slices (one slice over the range is what the run would change to)."""
        if not times or len(self.cp.slices) < 2 or self.cp.time_filter_ignored:
            return False
        lo, hi = window
        return min(times) < lo - HISTORY_OVERLAP or max(times) >= hi + HISTORY_OVERLAP

    def _restart(self, s: Slice) -> bool:
        with self.lock:
            narrowed = s.restart()
            self.cp.save(self.path)
        return narrowed

    def _walk(self, s: Slice) -> None:
        if s.done or self.stop.is_set() or self._dropped(s):
            return
        after, before = parse_time(s.after), parse_time(s.before)
        assert after is not None
        assert before is not None
        if s.fetch_before is None:  # the cursor is bound to it: fixed for the chain
            with self.lock:
                s.fetch_before = format_time(s.window()[1])
        filters: dict[str, Any] = dict(self.cp.filters)
        window = s.window()
        filters["created_after"], filters["created_before"] = window
        pages = self.client.iter_pages(cursor=s.cursor, limit=self.page_size, **filters)
        for page, _ in pages:
            if self.stop.is_set() or self._dropped(s):
                return
            self.store(s, page, after, before, window)
            if self._dropped(s):  # this page showed it: not one request more for this slice
                return

    def _beyond_range(self, s: Slice, when: datetime) -> bool:
        """Whether a row at ``when``, outside slice ``s``, is outside the whole range asked
        for too, counted by ``s``: the first slice counts those before it, the last those
        after it, so that a row every slice is sent counts once."""
        lo, hi = self.beyond
        if when < lo:
            return s.after == self.cp.since
        return when >= hi and s.before == self.cp.until

    def store(
        self,
        s: Slice,
        page: Page,
        after: datetime,
        before: datetime,
        window: tuple[datetime, datetime],
    ) -> None:
        records: list[EventRecord] = []
        receipts: list[dict[str, Any]] = []
        quarantined = bare = untimed = 0
        tally = FilterTally()
        read: list[datetime] = []  # the times of the rows this slice owns, filtered out too
        times = [d.created_at for d in page.deliveries if d.created_at is not None]
        for d in page.deliveries:
            if d.created_at is None:
                mark = untimed_mark(d)
                with self.lock:
                    if mark in self.untimed_seen:
                        continue
                    self.untimed_seen.add(mark)
            elif not after <= d.created_at < before:
                if self._beyond_range(s, d.created_at):
                    tally.outside[TIME_FILTER] += 1
                continue  # the overlap: another slice owns it
            else:
                # read, whether stored or not: a restarted chain need not read it again
                read.append(d.created_at)
            if not tally.keep(self.filter, d):
                continue  # Kirim ignored a filter (counted, said once at the end)
            self.streaks.see(d)
            untimed += d.created_at is None
            reason = None
            try:
                found = delivery_events(d, received_at=self.snapshot)
            except PayloadError as exc:
                body = d.body()
                assert body is not None
                self.journal.quarantine_once(body, delivery_headers(d), exc.reason)
                found, reason, quarantined = [], f"quarantined: {exc.reason}", quarantined + 1
            if d.payload is None:
                bare += 1
            records.extend(found)
            n = len(found) if d.payload is not None else None
            receipts.append(delivery_row(d, received_at=self.snapshot, n_events=n, reason=reason))
        flags = self.journal.append(records, receipts)  # durable when it returns
        with self.lock:
            s.started = True
            s.cursor = page.next_cursor
            s.done = not page.has_more
            s.pages += 1
            s.rows += len(receipts)
            s.stretch(read)
            s.note_order(times)
            if self._ignores_time(window, times):
                # every slice would walk the whole history: one slice over the range instead
                # (walked from its start by the first fetcher free; what was stored stays)
                self.cp.time_filter_ignored = True
                self.slices_before = sum(x.done for x in self.cp.slices)
                self.cp.slices = [Slice(after=self.cp.since, before=self.cp.until)]
                self.note_due = TIME_FILTER_IGNORED
                # that walk reads every row again: the rows outside the filters are its count
                self.filtered = FilterTally()
            self.cp.save(self.path)  # only after the journal commit
            r = self.report
            r.pages += 1
            r.rows += len(receipts)
            r.events_new += sum(flags)
            r.events_duplicate += len(flags) - sum(flags)
            r.quarantined += quarantined
            r.rows_without_payload += bare
            r.rows_without_time += untimed
            r.items_unreadable += len(page.unreadable)
            if not self._dropped(s):
                self.filtered.add(tally)
            self._snapshot()
        self._tell()

    def say_due(self) -> None:
        """A resumed run's note, at once: its one walk may have nothing left to read (the
        run killed had other fetchers finish it), and then no page would carry it."""
        with self.lock:
            if self.note_due is None or self.progress is None:
                return
            self._snapshot()
        self._tell()

    def _tell(self) -> None:
        """Give ``progress`` the snapshots taken, in the order taken, from one thread at a
        time: a fetcher that finds another giving them leaves its own to that one and goes
        on. (Each giving its own after the lock, a fetcher slowed between the two gave an
        older snapshot after a newer one, and the bar stepped back.)"""
        while self.progress is not None and self.telling.acquire(blocking=False):
            try:
                while True:
                    with self.lock:
                        if not self.untold:
                            break
                        snap = self.untold.popleft()
                    self.progress(snap)
            finally:
                self.telling.release()
            with self.lock:  # one taken after the check above, while the giver still gave
                if not self.untold:
                    return

    def _snapshot(self) -> None:
        """Take the progress so far, with the note due (said once), for :meth:`_tell`;
        under ``self.lock``."""
        r, slices = self.report, self.cp.slices
        walked = sum(x.fraction() for x in slices) / len(slices)
        self.fraction_told = max(self.fraction_told, walked)
        snap = BackfillProgress(
            pages=r.pages,
            rows=r.rows,
            events_new=r.events_new,
            fraction=self.fraction_told,
            elapsed=self.clock() - self.started,
            slices_done=self.slices_before + sum(x.done for x in slices),
            slices=self.slices_before + len(slices),
            note=self.note_due,
        )
        self.note_due = None
        if self.progress is not None:
            self.untold.append(snap)


def backfill(
    data: str | Path,
    *,
    client: KirimClient,
    since: str | datetime,
    until: str | datetime | None = None,
    subscription_id: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    slices: int = 4,
    page_size: int = 100,
    journal: Journal | None = None,
    lake: Any = None,
    flush: bool = True,
    progress: Callable[[BackfillProgress], None] | None = None,
    now: Callable[[], float] = time.time,
) -> BackfillReport:
    """Pull Kirim's delivery history for ``[since, until)`` into the store, resumably.

    Parameters
    ----------
    data
        The data folder (journal, lake, checkpoints).
    client
        A :class:`KirimClient`; its one rate limiter paces every slice.
    since, until
        The range of delivery ``created_at`` (ISO text, a date, ``7d``-style spans ago, or
        aware datetimes). ``until`` defaults to now, fixed at the start of the run. A
        killed run of a span that started less than 24 hours ago is resumed: its range is
        finished, then walked on from its end to the end of the range asked now (the
        report's range is the whole); an older one is not resumed.
    subscription_id, status, event_type
        Optional history filters (sent on every page: cursors are filter-bound). Rows Kirim
        returns outside them are skipped and counted (``BackfillReport.filtered``, ``notes``).
    slices
        Parallel fetchers (threads sharing the client's rate limit). The range is cut into
        ``4 x slices`` time slices that the fetchers take in turn, so a busy stretch of
        history does not leave one fetcher working alone at the end.
    page_size
        Rows per page (1-100).
    journal, lake
        Reuse open ones; by default ``Journal(data)`` and ``Lake(data)`` are opened here.
    flush
        Move the journal into the lake at the end (``Journal.flush``).
    progress
        Called with a :class:`BackfillProgress` after every stored page, in the order the
        pages were stored, from one fetcher thread at a time (not always the one that
        stored the page): its counts and ``fraction`` never go back.
    now
        Clock (unix seconds).

    Returns
    -------
    BackfillReport

    Raises
    ------
    ConfigError
        Bad times or options (before anything is fetched).
    ApiError
        Kirim kept failing; the checkpoint lets the next run resume (a new run that failed
        before storing a page removes its checkpoint: there is nothing to resume).

    Examples
    --------
    >>> report = backfill("data", client=client, since="7d")  # doctest: +SKIP
    """
    if not 1 <= slices <= 64:
        raise ConfigError(f"slices must be 1 to 64, got {slices}")
    if not 1 <= page_size <= 100:
        raise ConfigError(f"page_size must be 1 to 100 (Kirim's limit), got {page_size}")
    start = datetime.fromtimestamp(now(), UTC)
    lo = parse_when(since, now=start, name="since")
    hi_asked = None if until is None else parse_when(until, now=start, name="until")
    # Nothing exists after now: cap the range there (the run key keeps the asked value).
    hi_given = None if hi_asked is None else min(hi_asked, start)
    filters = {
        k: v for k, v in zip(_FILTERS, (subscription_id, status, event_type), strict=True) if v
    }
    # "~" expanded as the journal and the lake expand it: the checkpoint and its lock sat in
    # a folder named "~" where the run was, apart from the journal they go with
    root = data_folder(data)
    bounds = (_asked(since, lo), _asked(until, hi_asked))
    key = _run_key(*bounds, filters, client.account)
    path = root / "_state" / "backfill" / f"{key}.json"
    check_order(lo, hi_asked, now=start)  # before the lock makes a folder for a bad range
    refuse_inside_lake(root)  # and before its checkpoint goes into another lake's folder
    refuse_foreign_folder(root)  # or into a folder that is no lake (a project's)
    with _run_lock(path):
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):  # a killed save's; ours alone
            with contextlib.suppress(OSError):
                tmp.unlink()
        cp = _Checkpoint.load(path)
        # a span ago, but not "now": an --until of now (or none) stays fixed when resumed
        spans = any(b.startswith("ago:") and b != "ago:now" for b in bounds)
        if cp is not None and spans:
            # "--since 7d" names the last 7 days: a run of it killed long ago walks an old range
            started = parse_time(cp.snapshot)
            if started is None or start - started > SPAN_RESUME_WITHIN:
                cp = None  # start afresh; saving the new checkpoint replaces the old one
        resumed = cp is not None
        hi = hi_given or start
        if cp is None:
            cp = _new_checkpoint(key, lo, hi, start, filters, slices)
            cp.save(path)
        # The old range first, then (a span resumed) what the range asked now adds to it:
        # an hourly "--since 1h" resuming the hour of a run killed must read its own hour too
        walks = [cp]
        if resumed and spans:
            rest = _rest(cp, lo, hi)
            if rest is not None:
                walks.append(_new_checkpoint(key, *rest, start, filters, slices))
        ranges = [_range(w) for w in walks]
        report = BackfillReport(
            since=min(since for since, _ in ranges),  # the walks' ranges meet: one range
            until=max(until for _, until in ranges),
            slices=sum(len(w.slices) for w in walks),
            resumed=resumed,
            filters=dict(cp.filters),
            checkpoint=str(path),
        )
        own_journal = journal is None
        jr = journal or Journal(root)
        sent0, retries0 = client.requests_sent, client.retries
        unread = 0  # requests of the subscription read
        try:

            def flush_journal() -> None:
                nonlocal lake
                if lake is None:
                    from kirim_events.lake import Lake

                    lake = Lake(root)
                flushed = jr.flush(lake, batch_size=_FLUSH_BATCH)
                report.flushed_events = flushed.events
                report.flushed_deliveries = flushed.receipts

            runs: list[_Run] = []
            streaks = FailureStreaks()
            try:
                for walk in walks:
                    if runs:  # the old range is walked: the rest's checkpoint replaces it
                        _finish(path, then=walk)
                    told = _told_in_part(progress, walks, runs, now)
                    whole = (report.since, report.until)
                    run = _Run(client, jr, walk, path, report, page_size, told, now, whole, streaks)
                    runs.append(run)
                    run.say_due()
                    _walk_all(run, client, walk.slices, min(slices, len(walk.slices)))
            except Interrupted:
                raise  # asked to stop: at once, the checkpoint and journal hold the pages
            except Exception as failed:
                # a run that failed (not one interrupted) still puts what it stored in the
                # lake, where readers look; the error it failed with is the one raised
                if flush:
                    _flush_after_failure(flush_journal, failed)
                if not resumed and not any(s.started for s in cp.slices):
                    # refused before its first page (a wrong key, say): nothing to resume,
                    # and a checkpoint keyed by that key would never be resumed or removed
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            if any(w.time_filter_ignored for w in walks):
                report.notes.append(TIME_FILTER_IGNORED)
            for run in runs:
                report.filtered.add(run.filtered)
            report.notes.extend(report.filtered.notes(runs[0].filter))
            if flush:
                flush_journal()
            # once per run: a disabled subscription's new events make no history row, so a
            # backfill that stored every row looked complete while Kirim sent nothing new.
            # Before the checkpoint is finished: a Ctrl-C here leaves a run that resumes
            # at once (it said "the same command resumes the run" and walked it all again)
            before = client.requests_sent
            statuses, report.subscriptions_unread = read_statuses(client, subscription_id)
            unread = client.requests_sent - before  # not the history's
            _finish(path)
        finally:
            report.requests = client.requests_sent - sent0 - unread
            report.retries = client.retries - retries0
            report.seconds = now() - start.timestamp()
            if own_journal:
                jr.close()
        # the failures at the newest end of what was read are the subscription's newest only
        # when every row up to now was read in this run: not with --status dead (each row a
        # failure), an --event-type, an --until in the past, nor a resumed run (the pages
        # of the newer slices may have been read by the run that was stopped)
        newest = not (status or event_type or resumed) and reaches_now(hi_asked, start)
        report.subscriptions = alerts(
            statuses, streaks.streaks() if newest else {}, subscription_id
        )
        return report


def _new_checkpoint(
    key: str,
    since: datetime,
    until: datetime,
    start: datetime,
    filters: dict[str, str],
    slices: int,
) -> _Checkpoint:
    """A new walk of ``[since, until)``, its rows received at ``start`` (not saved yet)."""
    return _Checkpoint(
        key=key,
        since=format_time(since),
        until=format_time(until),
        snapshot=format_time(start),
        filters=filters,
        slices=split(since, until, slices * _PIECES),
    )


def _range(cp: _Checkpoint) -> tuple[datetime, datetime]:
    """The range ``cp`` walks (its times are checked when it is loaded)."""
    since, until = parse_time(cp.since), parse_time(cp.until)
    assert since is not None
    assert until is not None
    return since, until


def _rest(cp: _Checkpoint, since: datetime, until: datetime) -> tuple[datetime, datetime] | None:
    """What a span run resuming ``cp`` walks after it: the range asked now, ``[since,
    until)``, beyond ``cp``'s (None when nothing is).

    From ``cp``'s end, not from ``since``: a run that started later within the day (a
    "--since 1h" a few hours on) leaves between the two the ranges of the runs between,
    which could only resume ``cp`` and were killed before they walked past it. A clock set
    back may put ``since`` before ``cp``'s start: then from ``since`` to ``cp``'s start or
    ``until``, whichever is later. Either way ``cp``'s range and this one meet.
    """
    old_since, old_until = _range(cp)
    if since < old_since:
        return since, max(until, old_since)
    return (old_until, until) if old_until < until else None


def _told_in_part(
    progress: Callable[[BackfillProgress], None] | None,
    walks: list[_Checkpoint],
    runs: list[_Run],
    now: Callable[[], float],
) -> Callable[[BackfillProgress], None] | None:
    """``progress`` for the walk of ``walks`` after the ``runs`` walked: its share of the
    run's range as a share of the whole, and the slices and seconds of the walks before it
    added, so that nothing told steps back from one walk to the next."""
    if progress is None or len(walks) == 1:
        return progress

    lengths = [(until - since).total_seconds() for since, until in map(_range, walks)]
    lo = sum(lengths[: len(runs)]) / sum(lengths)
    hi = sum(lengths[: len(runs) + 1]) / sum(lengths)
    slices = sum(r.slices_before + len(r.cp.slices) for r in runs)
    elapsed = now() - runs[0].started if runs else 0.0

    def tell(p: BackfillProgress) -> None:
        part = hi if p.fraction >= 1 else lo + (hi - lo) * p.fraction
        progress(
            replace(
                p,
                fraction=part,
                elapsed=elapsed + p.elapsed,
                slices_done=slices + p.slices_done,
                slices=slices + p.slices,
            )
        )

    return tell


def _flush_after_failure(flush_journal: Callable[[], None], failed: Exception) -> None:
    """Flush what a failed run stored; a flush that fails too is logged and noted on
    ``failed`` (the error the caller raises), never raised in its place."""
    try:
        flush_journal()
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        log.warning(
            "backfill failed (%s), and so did flushing what it stored: %s",
            type(failed).__name__,
            why,
        )
        failed.add_note(
            f"flushing the journal to the lake after this failure failed too: {why}"
            " (the pages stay in the journal; a later flush moves them)"
        )


def _walk_all(run: _Run, client: KirimClient, slices: list[Slice], workers: int) -> None:
    """Walk every slice, ``workers`` at a time; the first slice's error stops the others."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill") as pool:
        pending: set[Future[None]] = set()
        try:
            # inside the try: a Ctrl-C while the first slices start must interrupt them too,
            # or the pool's shutdown sits out a Retry-After they are already in; with the
            # signals held, as one landing inside a worker's Thread.start left that worker
            # unknown to the pool, which did not wait for it: it slept out the Retry-After
            # after this client was resumed, and the process could not exit until it had
            with held():
                for s in slices:
                    pending.add(pool.submit(run.walk, s))
            while pending:
                # Look, then sleep; not concurrent.futures.wait, which takes every future's
                # lock in turn: a Ctrl-C landing between two of them left one held, and its
                # worker hung for ever starting the next slice, and the pool's shutdown with
                # it. A plain sleep holds no lock, and the Ctrl-C that the OS hands to a
                # worker thread reaches the main thread within it.
                done = {f for f in pending if f.done()}
                pending -= done
                for f in done:
                    f.result()  # the first slice's error, if any
                if pending:
                    time.sleep(0.1)
        except BaseException:
            run.stop.set()  # let the other slices stop after their current page
            client.interrupt()  # without first sitting out a Retry-After or a backoff
            raise
        finally:
            try:
                pool.shutdown(wait=True)
            finally:
                client.resume()  # the caller may use this client again


def _finish(path: Path, then: _Checkpoint | None = None) -> None:
    """Move a completed run's checkpoint aside, so the next run starts afresh; or copy it
    aside and put ``then``, the walk that follows it, in its place in one rename: a run
    killed in between resumes one or the other (with neither, it would start afresh, and
    the rest of the range asked by the run killed would never be read)."""
    done = path.parent / "done"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    try:
        make_dirs(done)
        if then is None:
            move_file(path, done / f"{path.stem}-{stamp}.json")
        else:
            replace_file(done / f"{path.stem}-{stamp}.json", path.read_bytes())
    except OSError as exc:
        raise StorageError(f"cannot retire backfill checkpoint {path}: {exc}") from exc
    if then is not None:
        then.save(path)
