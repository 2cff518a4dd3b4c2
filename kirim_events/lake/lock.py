"""Keep compactions of one lake exclusive: a lock file locally, a lease record on S3."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from kirim_events.errors import LakeError, StorageError
from kirim_events.filelock import file_lock
from kirim_events.lake.storage import Storage

__all__ = ["LEASE_SECONDS", "RENEW_SECONDS", "compaction_lock"]

log = logging.getLogger(__name__)

LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0


@contextmanager
def compaction_lock(
    storage: Storage, owner: str, now: Callable[[], float]
) -> Iterator[Callable[[], None]]:
    """Hold the lake's compaction lock; yields a ``check()`` to call before publishing: on
    S3 it renews the lease and raises LakeError if another compaction took it over."""
    if not storage.local:
        with _lease(storage, owner, now) as check:
            yield check
        return
    with file_lock(storage.full("_state/compact.lock"), wait=False) as held:
        if not held:
            raise LakeError(f"another compaction of {storage.uri} is running")
        yield lambda: None


@contextmanager
def _lease(storage: Storage, owner: str, now: Callable[[], float]) -> Iterator[Callable[[], None]]:
    """Best-effort exclusion on object storage, which has no lock: a lease record that a
    second compactor sees and respects. Two compactors starting in the same instant can both
    miss it, so on S3 schedule one compactor per lake (one cron job, one machine).

    A thread renews the lease every RENEW_SECONDS while the run holds it, so a long group
    never lets it lapse; it lapses LEASE_SECONDS after a crashed compactor's last renewal.
    The yielded ``check()`` renews it too, and raises LakeError when another compaction has
    taken it over meanwhile (this one was thought dead): called before each manifest is
    published, it stops the run before it can undo the other's work.
    """
    lease = _Lease(storage, owner, now)
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
    try:
        yield lease.check
    finally:
        stop.set()
        thread.join()
        lease.release()


class _Lease:
    REL = "_state/compact.lease"

    def __init__(self, storage: Storage, owner: str, now: Callable[[], float]) -> None:
        self.storage, self.owner, self.now = storage, owner, now
        self.lock = threading.Lock()

    def _record(self) -> dict[str, Any] | None:
        data = self.storage.read_bytes(self.REL)
        try:
            record = json.loads(data) if data else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def _publish(self) -> None:
        record = {"owner": self.owner, "until": self.now() + LEASE_SECONDS}
        self.storage.publish(self.REL, json.dumps(record).encode())

    def take(self) -> None:
        record = self._record()
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
            self._publish()

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
            record = self._record()
            if record is None or record.get("owner") != self.owner:
                raise LakeError(
                    f"another compaction of {self.storage.uri} took over the lease while this "
                    "one ran (it was renewed too late): stopping before publishing anything; "
                    "nothing is lost, and the next run compacts what is left"
                )
            self._publish()

    def release(self) -> None:
        """Delete the lease if it is still ours; a failure is logged, not raised (it would
        hide the error the run may be ending with; the lease then lapses by itself)."""
        try:
            with self.lock:
                record = self._record()
                if record is not None and record.get("owner") == self.owner:
                    self.storage.delete(self.REL)  # never another compaction's lease
        except StorageError as exc:
            log.warning("could not release the compaction lease (%s); it lapses by itself", exc)
