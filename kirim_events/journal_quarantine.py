"""Quarantine files: signed bodies that cannot be parsed, kept byte-exact and fsync'd.

One copy per body and delivery: Kirim retries a delivery up to 8 times (kirim-api.md §3),
and a retry of one whose 2xx was lost, or answered 503, brings the same bytes under the same
``X-Kirim-Delivery-Id`` and ``X-Kirim-Event-Id``. It is counted in the description kept
(``count``, ``last_received_at``), not kept again; another body, or the same one under
another delivery or event id, gets its own files.

Looking for the kept copy and writing it happen under one lock, across threads and across
processes: a ``flock`` on ``DATA/quarantine/`` itself (:mod:`kirim_events.filelock`), so
several collectors on one data folder, or a backfill beside a collector, keep one copy
and lose no count. Only quarantine writes take it; an accepted delivery never does.

Copies kept before the names carried the key (their last part was 8 random hex) are found
by their description instead: the same ``sha256`` and the same delivery and event ids.
Only copies of the very same bytes are looked at (their names carry the sha256 prefix),
so this costs nothing while no other copy of the body is kept.

A writer killed before its rename leaves a ``.<name>.<random>.tmp`` file; as every writer
holds the lock while its own exist, the next quarantine write removes them, from every
day's folder (quarantine writes are rare: the look costs one listing of the day folders).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kirim_events.atomicfile import fsync_dir, make_dirs, remove_quiet, replace_file
from kirim_events.errors import StorageError
from kirim_events.filelock import file_lock

__all__ = [
    "Quarantined",
    "quarantine_once",
    "read_quarantine",
    "write_quarantine",
]


@dataclass(frozen=True)
class Quarantined:
    """What the quarantine holds, as reconcile needs it (see :func:`read_quarantine`)."""

    event_ids: set[str]
    """The ``X-Kirim-Event-Id`` of every kept delivery whose description names one."""
    kept: int
    """Deliveries kept (``.json`` descriptions found)."""
    first: Path | None
    """The oldest kept ``.body``, for an operator to start from."""
    unreadable: list[Path] = field(default_factory=list)
    """Descriptions that could not be read or parsed: their event ids are unknown."""

    def notes(self) -> list[str]:
        """What an operator should be told: nothing when the quarantine is empty."""
        out: list[str] = []
        if self.kept:
            are = "delivery is" if self.kept == 1 else "deliveries are"
            out.append(
                f"{self.kept} {are} kept in quarantine, not in the lake (signed bodies that"
                f" could not be parsed), counted as held, not replayed; the first: {self.first}"
            )
        if self.unreadable:
            out.append(
                f"{len(self.unreadable)} quarantine description(s) could not be read, so"
                f" their events may be replayed again; the first: {self.unreadable[0]}"
            )
        return out


def read_quarantine(data_dir: Path) -> Quarantined:
    """Read every quarantined delivery's description (``.json``) under ``data_dir``:
    events our endpoint acknowledged and kept, though not as rows of the lake."""
    ids: set[str] = set()
    unreadable: list[Path] = []
    paths = sorted((data_dir / "quarantine").glob("*/*.json"))  # day folders, then time
    for path in paths:
        try:
            headers = json.loads(path.read_text()).get("headers", {})
            event_id = headers.get("x-kirim-event-id")
        except (OSError, ValueError, AttributeError):
            unreadable.append(path)
            continue
        if isinstance(event_id, str) and event_id:
            ids.add(event_id)
    first = paths[0].with_suffix(".body") if paths else None
    return Quarantined(ids, len(paths), first, unreadable)


_WRITING = threading.Lock()  # this process's writers queue here, one at a time on the flock


@contextlib.contextmanager
def _writing(data_dir: Path) -> Iterator[None]:
    """Held from looking for a kept copy to its last write: by one thread of one process
    on ``data_dir`` at a time (two retries at once keep one copy and count both)."""
    folder = data_dir / "quarantine"
    make_dirs(folder)  # fsync'd when made; the flock locks the folder itself, no file in it
    with _WRITING, file_lock(folder):
        yield


def _ids(headers: Mapping[str, object]) -> tuple[object, object]:
    return headers.get("x-kirim-delivery-id", ""), headers.get("x-kirim-event-id", "")


def _delivery_key(digest: str, kept: Mapping[str, str]) -> str:
    """8 hex of the body's sha256 with the delivery and event ids: the same for every retry
    of one delivery, another for another body or delivery."""
    ids = [digest, kept.get("x-kirim-delivery-id", ""), kept.get("x-kirim-event-id", "")]
    # surrogatepass: an unsigned header may hold half a UTF-16 pair (json.dumps keeps it too)
    return hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _named(data_dir: Path, digest: str) -> list[Path]:
    """The ``.body`` files named with this sha256 prefix (any day's folder, oldest first: a
    retry may come 31 hours after the first attempt)."""
    return sorted((data_dir / "quarantine").glob(f"*/*-{digest[:16]}-*.body"))


def _holds(path: Path, body: bytes) -> bool:
    """Whether ``path`` holds exactly ``body``, compared byte for byte."""
    try:
        return path.read_bytes() == body
    except FileNotFoundError:  # an operator's clean-up meanwhile
        return False


def _describes(path: Path, digest: str, kept: Mapping[str, str]) -> bool:
    """Whether the description of ``path`` names this body's sha256 and delivery."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (FileNotFoundError, ValueError):  # another OSError is a storage failure (503)
        return False
    if not isinstance(meta, dict) or not isinstance(meta.get("headers"), dict):
        return False
    return bool(meta.get("sha256") == digest and _ids(meta["headers"]) == _ids(kept))


def _kept_copy(data_dir: Path, body: bytes, digest: str, kept: Mapping[str, str]) -> Path | None:
    """The ``.body`` of this body and delivery, kept already: named with its key, or, kept
    before names carried one, described with its sha256 and ids (the small ``.json`` read
    first, the body only when it matches)."""
    key = f"-{_delivery_key(digest, kept)}"
    named = _named(data_dir, digest)
    for path in named:
        if path.stem.endswith(key) and _holds(path, body):
            return path
    for path in named:
        if not path.stem.endswith(key) and _describes(path, digest, kept) and _holds(path, body):
            return path
    return None


def _seen_again(path: Path, meta: dict[str, object], when: datetime) -> dict[str, object]:
    """The description of ``path`` counting one more receipt at ``when``; ``meta`` (this
    receipt's) when none can be read: a writer that died between the two files left none."""
    try:
        old = json.loads(path.with_suffix(".json").read_text())
    except (FileNotFoundError, ValueError):  # another OSError is a storage failure (503)
        return meta
    if not isinstance(old, dict):
        return meta
    count = old.get("count", 1)  # a description written before counts were kept: 1
    count = count if isinstance(count, int) and not isinstance(count, bool) else 1
    return {**old, "count": count + 1, "last_received_at": when.isoformat()}


def write_quarantine(
    data_dir: Path, body: bytes, headers: Mapping[str, str], reason: str, when: datetime
) -> Path:
    """Keep ``body`` and a ``.json`` description under ``data_dir/quarantine/<day>/``.

    Names are ``<time>-<sha256 prefix>-<key>.body`` and ``.json`` (reason, receipt time,
    size, sha256, and the ``X-Kirim-*``, content-type and user-agent headers; nothing else, so
    no credentials; ``count`` and ``last_received_at``), ``key`` from the body's sha256 and
    the ``X-Kirim-Delivery-Id`` and ``X-Kirim-Event-Id``. When the same bytes are kept for
    that delivery already (a retry), only their ``.json`` is written again, one more in
    ``count``. Each file is written under a temporary name, fsync'd and renamed, and its
    folder fsync'd (``atomicfile.replace_file``); then ``quarantine/`` and DATA/ above it, at
    every write. Returns the ``.body`` path; raises StorageError on failure.
    """
    return _keep(data_dir, body, headers, reason, when, once=False)[0]


def quarantine_once(
    data_dir: Path, body: bytes, headers: Mapping[str, str], reason: str, when: datetime
) -> bool:
    """:func:`write_quarantine` unless the same bytes are kept and described already, under
    any delivery (a history walked twice, by backfill and reconcile or by two runs): then
    nothing is written or counted. True when it wrote now; a copy left without its
    description (its writer died between the two files) gets one then."""
    return _keep(data_dir, body, headers, reason, when, once=True)[1]


def _keep(
    data_dir: Path,
    body: bytes,
    headers: Mapping[str, str],
    reason: str,
    when: datetime,
    *,
    once: bool,
) -> tuple[Path, bool]:
    """(the ``.body`` path, whether anything was written)."""
    when = when.astimezone(UTC)
    digest = hashlib.sha256(body).hexdigest()
    kept = {
        k.lower(): v
        for k, v in headers.items()
        if k.lower().startswith("x-kirim-") or k.lower() in {"content-type", "user-agent"}
    }
    meta: dict[str, object] = {
        "reason": reason,
        "received_at": when.isoformat(),
        "size": len(body),
        "sha256": digest,
        "headers": kept,
        "count": 1,
        "last_received_at": when.isoformat(),
    }
    try:
        with _writing(data_dir):
            if once:
                copies = [p for p in _named(data_dir, digest) if _holds(p, body)]
                described = [c for c in copies if c.with_suffix(".json").exists()]
                if described:
                    return described[0], False
                path = copies[0] if copies else None  # one left without its description
            else:
                path = _kept_copy(data_dir, body, digest, kept)
                if path is not None:
                    meta = _seen_again(path, meta, when)
            new = path is None
            if path is None:
                stamp = when.strftime("%Y%m%dT%H%M%S%fZ")
                key = _delivery_key(digest, kept)
                path = (
                    data_dir
                    / "quarantine"
                    / when.strftime("%Y-%m-%d")
                    / f"{stamp}-{digest[:16]}-{key}.body"
                )
                make_dirs(path.parent)
            # a killed writer's, in any day's folder (its retries may come days later, or
            # never): every writer holds the lock while its temporary files exist
            for tmp in (data_dir / "quarantine").glob("*/.*.tmp"):
                remove_quiet(tmp)
            if new:
                replace_file(path, body)
            replace_file(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        # again at each write, not only when make_dirs creates them: a day's folder made by
        # a writer that died before its fsync would otherwise never be made durable
        fsync_dir(path.parent.parent)
        fsync_dir(path.parent.parent.parent)
    except OSError as exc:
        raise StorageError(f"cannot write quarantine file: {exc}") from exc
    return path, True
