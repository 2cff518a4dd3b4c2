"""Quarantine files: signed bodies that cannot be parsed, kept byte-exact and fsync'd."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kirim_events.atomicfile import fsync_dir, make_dirs, replace_file
from kirim_events.errors import StorageError

__all__ = [
    "Quarantined",
    "find_quarantined",
    "read_quarantine",
    "write_quarantine",
]


def find_quarantined(data_dir: Path, body: bytes) -> Path | None:
    """The ``.body`` file already holding exactly ``body``, if any (any day's folder)."""
    digest = hashlib.sha256(body).hexdigest()
    for path in sorted((data_dir / "quarantine").glob(f"*/*-{digest[:16]}-*.body")):
        with contextlib.suppress(OSError):
            if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                return path
    return None


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


def write_quarantine(
    data_dir: Path, body: bytes, headers: Mapping[str, str], reason: str, when: datetime
) -> Path:
    """Write ``body`` and a ``.json`` description under ``data_dir/quarantine/<day>/``.

    Names are ``<time>-<sha256 prefix>-<random>.body`` and ``.json`` (reason, receipt time,
    size, sha256, and the ``X-Kirim-*``, content-type and user-agent headers; nothing else, so
    no credentials). Each file is written under a temporary name, fsync'd and renamed, and
    its folder fsync'd (``atomicfile.replace_file``); then ``quarantine/`` and DATA/ above
    it, at every write.
    Returns the ``.body`` path; raises StorageError on failure.
    """
    when = when.astimezone(UTC)
    digest = hashlib.sha256(body).hexdigest()
    folder = data_dir / "quarantine" / when.strftime("%Y-%m-%d")
    stem = f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{digest[:16]}-{uuid.uuid4().hex[:8]}"
    kept = {
        k.lower(): v
        for k, v in headers.items()
        if k.lower().startswith("x-kirim-") or k.lower() in {"content-type", "user-agent"}
    }
    meta = {
        "reason": reason,
        "received_at": when.isoformat(),
        "size": len(body),
        "sha256": digest,
        "headers": kept,
    }
    try:
        make_dirs(folder)
        replace_file(folder / f"{stem}.body", body)
        replace_file(folder / f"{stem}.json", json.dumps(meta, indent=1).encode())
        # again at each write, not only when make_dirs creates them: a day's folder made by
        # a writer that died before its fsync would otherwise never be made durable
        fsync_dir(folder.parent)
        fsync_dir(folder.parent.parent)
    except OSError as exc:
        raise StorageError(f"cannot write quarantine file: {exc}") from exc
    return folder / f"{stem}.body"
