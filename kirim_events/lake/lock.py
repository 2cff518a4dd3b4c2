"""Keep compactions of one lake exclusive: a lock file locally, a lease record on S3."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kirim_events.errors import LakeError, StorageError
from kirim_events.filelock import file_lock
from kirim_events.lake.s3failures import ConditionFailed, ConditionsUnsupported
from kirim_events.lake.storage import Storage

__all__ = ["LEASE_SECONDS", "RENEW_SECONDS", "compaction_lock"]

log = logging.getLogger(__name__)

LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0


@contextmanager
def compaction_lock(
    storage: Storage,
    owner: str,
    now: Callable[[], float],
    *,
    warnings: list[str] | None = None,
) -> Iterator[Callable[[], None]]:
    """Hold the lake's compaction lock; yields a ``check()`` to call before publishing: on
    S3 it renews the lease and raises LakeError if another compaction took it over.

    ``warnings`` gets what the run's user should be told, as it is logged: that the S3
    lease is only best effort, and why, or that it could not be released (the CLI shows
    it; a library logs to no one)."""
    if not storage.local:
        with _lease(storage, owner, now, warnings) as check:
            yield check
        return
    with file_lock(storage.full("_state/compact.lock"), wait=False) as held:
        if not held:
            raise LakeError(f"another compaction of {storage.uri} is running")
        yield lambda: None


@contextmanager
def _lease(
    storage: Storage, owner: str, now: Callable[[], float], warnings: list[str] | None = None
) -> Iterator[Callable[[], None]]:
    """Exclusion on object storage, which has no lock: a lease record that every compactor
    reads first and respects while it has not lapsed.

    What is guaranteed depends on the store:

    * Conditional writes (a lake opened from its ``s3://`` location with boto3 installed,
      the ``s3`` extra, on a store that implements S3's ``If-None-Match`` / ``If-Match`` on
      PUT, as AWS S3 does): the lease is written only if it is still as it was read (absent,
      or the lapsed or unreadable record seen, or our own when renewing). Of two compactors
      starting in the same instant exactly one takes it; the other stops at once with
      "another compaction of ... took the lease at the same moment", before doing anything.
      A store that silently ignores these headers cannot be told apart, and gives only the
      best effort below.
    * Otherwise (a filesystem the caller made, no boto3 or one older than S3's conditional
      writes, or a store answering 501 to the conditions; a warning is logged once per
      run): best effort. A compactor that starts
      while another runs sees its lease and stops, but two starting in the same instant can
      both read "free" and both go on, the later write winning; the other then stops at its
      next check, before publishing, as taken over. Schedule one compactor per lake there.

    A thread renews the lease every RENEW_SECONDS while the run holds it, so a long group
    never lets it lapse; it lapses LEASE_SECONDS after a crashed compactor's last renewal.
    The yielded ``check()`` renews it too, and raises LakeError when another compaction has
    taken it over meanwhile (this one was thought dead): called before each manifest is
    published, it stops the run before it can undo the other's work. A run stalled for more
    than LEASE_SECONDS between a check and its publish is not covered by any lease.
    """
    lease = _Lease(storage, owner, now, warnings)
    lease.take()
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(RENEW_SECONDS):
            try:
                lease.check_once()  # (the next tick is its retry)
            except LakeError:
                return  # taken over: the run's own check() stops it
            except Exception as exc:  # a storage blip: try again at the next tick
                log.warning("could not renew the compaction lease (%s); retrying", exc)

    thread = threading.Thread(target=keep_alive, name="compact-lease", daemon=True)
    thread.start()
    failed: BaseException | None = None
    try:
        yield lease.check
    except BaseException as exc:
        failed = exc
        raise
    finally:
        stop.set()
        thread.join()
        said = lease.release()
        if said is not None and failed is not None:
            # the run ends with its error, not a report: the lease left behind must be
            # told with it, or the next run's "another compaction ... holds the lease"
            # reads as if one were running
            failed.add_note(said)


@dataclass(frozen=True, slots=True)
class _Seen:
    """The lease as read: its record (None: none, or unreadable) and, with conditional
    writes, the object's ETag (None: there is no object)."""

    record: dict[str, Any] | None
    etag: str | None = None


class _Lease:
    REL = "_state/compact.lease"

    def __init__(
        self,
        storage: Storage,
        owner: str,
        now: Callable[[], float],
        warnings: list[str] | None = None,
    ) -> None:
        self.storage, self.owner, self.now = storage, owner, now
        self.warnings = warnings
        self.lock = threading.Lock()
        self.conditional = storage.conditional_writes()
        if not self.conditional:
            self._best_effort(
                "no boto3 client for this lake (boto3 is not installed, or the "
                "caller made its filesystem)"
            )

    def _best_effort(self, why: str) -> None:
        self.conditional = False
        said = (
            f"the compaction lease of {self.storage.uri} is best effort: {why}. Two "
            "compactions starting at the same moment could both run; schedule one compactor "
            "per lake"
        )
        log.warning("%s", said)
        if self.warnings is not None:
            self.warnings.append(said)

    def _record(self) -> _Seen:
        if self.conditional:
            got = self.storage.read_tagged(self.REL)
            data, etag = got if got is not None else (None, None)
        else:
            data, etag = self.storage.read_bytes(self.REL), None
        try:
            record = json.loads(data) if data else None
        except ValueError:
            return _Seen(None, etag)
        return _Seen(record if isinstance(record, dict) else None, etag)

    def _publish(self, seen: _Seen) -> None:
        """Write our record over the lease as it was seen; ConditionFailed when it changed
        since (with conditional writes; without, the write always succeeds)."""
        record = {"owner": self.owner, "until": self.now() + LEASE_SECONDS}
        data = json.dumps(record).encode()
        if self.conditional:
            try:
                self.storage.put_if(self.REL, data, etag=seen.etag)
                return
            except ConditionsUnsupported as exc:
                self._best_effort(f"the store does not implement conditional writes ({exc})")
            except ConditionFailed:
                # boto retries a PUT whose answer was lost: the retry then fails the
                # condition its own first attempt changed. That lease is ours all the same.
                if self._record().record == record:
                    return
                raise
        self.storage.publish(self.REL, data)

    def take(self) -> None:
        seen = self._record()
        record = seen.record
        if record is not None and record.get("owner") != self.owner:
            try:
                until = float(record["until"])
            except (KeyError, TypeError, ValueError):
                until = 0.0  # an unreadable lease holds nothing
            if until > self.now():
                at = datetime.fromtimestamp(until, UTC).isoformat()
                raise LakeError(
                    f"another compaction of {self.storage.uri} holds the lease until {at}"
                )
        with self.lock:
            try:
                self._publish(seen)
            except ConditionFailed:
                raise LakeError(
                    f"another compaction of {self.storage.uri} took the lease at the same "
                    "moment: this one stops before doing anything, and that one compacts the lake"
                ) from None

    def check(self) -> None:
        """Renew; LakeError when taken over. A storage blip is tried again twice (a 503
        from S3 must not stop a healthy run); only a lease owned by another run stops it."""
        for attempt in range(3):
            try:
                self.check_once()
                return
            except StorageError:
                if attempt == 2:
                    raise
                time.sleep(1.0 + attempt)

    def check_once(self) -> None:
        with self.lock:
            seen = self._record()
            if seen.record is None or seen.record.get("owner") != self.owner:
                raise self._taken_over()
            try:
                self._publish(seen)  # (conditional: only if nobody replaced it since the read)
            except ConditionFailed:
                raise self._taken_over() from None

    def _taken_over(self) -> LakeError:
        return LakeError(
            f"another compaction of {self.storage.uri} took over the lease while this "
            "one ran (it was renewed too late): stopping before publishing anything; "
            "nothing is lost, and the next run compacts what is left"
        )

    def release(self) -> str | None:
        """Delete the lease if it is still ours; a failure is logged, not raised (it would
        hide the error the run may be ending with; the lease then lapses by itself), and
        returned (None when released) for a run that ends with an error to say it too."""
        try:
            with self.lock:
                seen = self._record()
                if seen.record is not None and seen.record.get("owner") == self.owner:
                    self._delete(seen)  # never another compaction's lease
            return None
        except StorageError as exc:
            said = (
                f"could not release the compaction lease of {self.storage.uri} ({exc}); it "
                f"lapses by itself within {LEASE_SECONDS / 60:.0f} minutes, and a compaction "
                "started before then is refused"
            )
            log.warning("%s", said)
            if self.warnings is not None:
                self.warnings.append(said)  # the CLI shows it
            return said

    def _delete(self, seen: _Seen) -> None:
        if self.conditional and seen.etag is not None:
            try:
                self.storage.delete_if(self.REL, seen.etag)
                return
            except ConditionFailed:
                return  # replaced since it was read: another compaction's now
            except ConditionsUnsupported:
                pass  # a store with conditional PUTs but not DELETEs: as it was just read
        self.storage.delete(self.REL)
