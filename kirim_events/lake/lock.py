"""Keep compactions of one lake exclusive: a lock file locally, a lease record on S3."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from kirim_events.errors import LakeError
from kirim_events.lake.storage import Storage

__all__ = ["LEASE_SECONDS", "compaction_lock"]

LEASE_SECONDS = 600.0


@contextmanager
def compaction_lock(
    storage: Storage, owner: str, now: Callable[[], float]
) -> Iterator[Callable[[], None]]:
    """Hold the lake's compaction lock; yields a ``renew()`` to call between groups."""
    if not storage.local:
        with _lease(storage, owner, now) as renew:
            yield renew
        return
    path = storage.full("_state/compact.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeError(f"another compaction of {storage.uri} is running") from None
        yield lambda: None
    finally:
        os.close(fd)


@contextmanager
def _lease(storage: Storage, owner: str, now: Callable[[], float]) -> Iterator[Callable[[], None]]:
    """Best-effort exclusion on object storage, which has no lock: a lease record that a
    second compactor sees and respects. Two compactors starting in the same instant can both
    miss it, so on S3 schedule one compactor per lake (one cron job, one machine). The lease
    is renewed between groups and lapses LEASE_SECONDS after a crashed compactor's last one."""
    rel = "_state/compact.lease"
    data = storage.read_bytes(rel)
    if data:
        try:
            lease = json.loads(data)
            held = lease["owner"] != owner and float(lease["until"]) > now()
        except (ValueError, KeyError, TypeError):
            held = False
        if held:
            raise LakeError(
                f"another compaction of {storage.uri} holds the lease until "
                f"{datetime.fromtimestamp(float(lease['until']), UTC).isoformat()}"
            )

    def renew() -> None:
        record = {"owner": owner, "until": now() + LEASE_SECONDS}
        storage.publish(rel, json.dumps(record).encode())

    renew()
    try:
        yield renew
    finally:
        storage.delete(rel)
