"""The lake's own records under ``DATA/_state/``: schema version and compaction manifests.

``_state/lake.json`` says which lake format wrote the folder::

    {"format": "kirim-events-lake", "schema_version": 1, "min_reader_version": 1}

A reader refuses (``SchemaVersionError``) a lake whose ``min_reader_version`` is newer than
the version it understands. Additive changes (a new nullable column) raise
``schema_version`` but not ``min_reader_version``, so older readers keep working.

A compaction manifest, one per group (``_state/compaction/events/type=<t>.json`` for each
event type, ``_state/compaction/deliveries.json``), records per date partition the files the
last compaction produced (``files``, ``rows``) and the files it replaced (``replaced``).
Readers trust it thus: a compaction output (``c-...``) counts only if the manifest lists it;
any other file counts unless the manifest lists it as replaced. A partition whose counted
files are exactly its manifest files is *clean*: it holds each event_key once.

A manifest cannot vouch for a partition when it is missing (``_state/compaction`` lost or
restored from nothing), lists a file of that partition that is not on disk (restored from
an older copy than the data), or lists none there while the partition holds a ``c-`` file
(restored from a copy older than the partition's first compaction; or that compaction
crashed before it published, and its output counts too, deduplicated). There the
partition's ``c-`` files may be the only copy of its compacted events, so every file counts
and the partition is not clean: readers deduplicate it (every copy on disk is a copy of a
real event, and the dedup rule keeps one of each), and compaction merges every file instead
of deleting ``c-`` files as a crashed run's leftovers.
A ``c-`` file is only ever ignored when a manifest that matches the disk leaves it out.

A full compaction begun and not finished is recorded in ``_state/full-compaction.json``::

    {"version": 1, "started_at": "2026-05-01T12:00:00Z",
     "generations": {"_state/compaction/deliveries.json": 4, ...}}

the generation of every group's manifest when it began. A full run rewrites a group's
partitions under one manifest, so a group whose generation has not moved since was not
reached; the next compaction, full or not, rewrites those groups as a full run would and
then deletes the record (see :mod:`kirim_events.lake.compact`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kirim_events.errors import LakeError, NotALakeError, SchemaVersionError
from kirim_events.lake.paths import is_compaction_file
from kirim_events.lake.storage import Storage
from kirim_events.schema import SCHEMA_VERSION

__all__ = [
    "FORMAT",
    "FULL_RUN_PATH",
    "MIN_READER_VERSION",
    "FullRun",
    "Manifest",
    "check_version",
    "ensure_version",
    "manifest_path",
]

FORMAT = "kirim-events-lake"
MIN_READER_VERSION = 1
VERSION_PATH = "_state/lake.json"
FULL_RUN_PATH = "_state/full-compaction.json"
FULL_RUN_VERSION = 1


def _load_json(storage: Storage, rel: str) -> dict[str, Any] | None:
    data = storage.read_bytes(rel)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise LakeError(f"{storage.uri}/{rel} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise LakeError(f"{storage.uri}/{rel} is not a JSON object")
    return value


def check_version(storage: Storage) -> int | None:
    """Return the lake's schema version (None for a new lake); refuse newer formats."""
    record = _load_json(storage, VERSION_PATH)
    if record is None:
        return None
    if record.get("format") != FORMAT:
        raise NotALakeError(f"{storage.uri} is not a kirim-events lake ({VERSION_PATH} format)")
    version = record.get("schema_version")
    needs = record.get("min_reader_version", version)
    if not isinstance(version, int) or not isinstance(needs, int):
        raise LakeError(f"{storage.uri}/{VERSION_PATH} has no integer schema_version")
    if needs > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the lake at {storage.uri} uses schema version {version}, which needs "
            f"kirim-events lake schema {needs} or newer; this kirim-events understands "
            f"schema {SCHEMA_VERSION}. Upgrade kirim-events to read or write it."
        )
    return version


def ensure_version(storage: Storage) -> None:
    """Write ``_state/lake.json`` for a new lake (checks an existing one)."""
    if check_version(storage) is None:
        record = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "min_reader_version": MIN_READER_VERSION,
        }
        storage.publish(VERSION_PATH, json.dumps(record, indent=2).encode())


def manifest_path(table: str, group: str | None) -> str:
    """Where the manifest of one group lives (group = encoded event type, or None)."""
    if group is None:
        return f"_state/compaction/{table}.json"
    return f"_state/compaction/{table}/type={group}.json"


@dataclass
class Manifest:
    """Compaction record of one group of partitions (see module doc)."""

    generation: int = 0
    files: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, list[str]] = field(default_factory=dict)
    missing: bool = False
    """No manifest on disk: it vouches for no ``c-`` file (see module doc)."""

    @classmethod
    def load(cls, storage: Storage, rel: str) -> Manifest:
        """Read a manifest; a missing one is empty (generation 0)."""
        record = _load_json(storage, rel)
        if record is None:
            return cls(missing=True)
        try:
            parts = record["partitions"]
            return cls(
                generation=int(record["generation"]),
                files={d: list(p["files"]) for d, p in parts.items()},
                rows={d: int(p["rows"]) for d, p in parts.items()},
                replaced={d: list(v) for d, v in record.get("replaced", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LakeError(f"{storage.uri}/{rel} is not a valid manifest: {exc}") from None

    def save(self, storage: Storage, rel: str) -> None:
        """Publish atomically (the commit point of a compaction)."""
        record = {
            "generation": self.generation,
            "partitions": {
                d: {"files": self.files[d], "rows": self.rows.get(d, 0)} for d in sorted(self.files)
            },
            "replaced": {d: sorted(v) for d, v in sorted(self.replaced.items()) if v},
        }
        storage.publish(rel, json.dumps(record, indent=1).encode())

    def vouches(self, date: str, names: list[str]) -> bool:
        """Whether this manifest says which of a partition's files (``names``, on disk)
        count: it exists and every file it lists for the partition is there; where it lists
        none (no entry: a partition first compacted after it was written, when restored
        from an older copy), only if the partition holds no ``c-`` file either."""
        if self.missing:
            return False
        listed = set(self.files.get(date, ()))
        if not listed:
            return not any(is_compaction_file(n) for n in names)
        return listed <= set(names)

    def counted(self, date: str, names: list[str]) -> list[str]:
        """Which of a partition's files readers count (see module doc): all of them where
        the manifest cannot vouch for the partition."""
        if not self.vouches(date, names):
            return sorted(names)
        listed = set(self.files.get(date, ()))
        replaced = set(self.replaced.get(date, ()))
        return sorted(
            n for n in names if (n in listed) or (not is_compaction_file(n) and n not in replaced)
        )

    def is_clean(self, date: str, counted: list[str]) -> bool:
        """True when the counted files are exactly the last compaction's output (or none)."""
        if not counted:
            return True
        return date in self.files and set(counted) == set(self.files[date])


@dataclass
class FullRun:
    """A full compaction begun and not finished (see module doc)."""

    started_at: str
    generations: dict[str, int]
    """Manifest path -> its generation when the full run began."""

    @classmethod
    def load(cls, storage: Storage) -> FullRun | None:
        """The record of an unfinished full run, or None."""
        record = _load_json(storage, FULL_RUN_PATH)
        if record is None:
            return None
        version = record.get("version")
        if not isinstance(version, int) or version > FULL_RUN_VERSION:
            raise SchemaVersionError(
                f"{storage.uri}/{FULL_RUN_PATH} has version {version!r}, which this "
                f"kirim-events (version {FULL_RUN_VERSION}) does not know; upgrade it"
            )
        try:
            generations = {str(k): int(v) for k, v in record["generations"].items()}
            return cls(started_at=str(record["started_at"]), generations=generations)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LakeError(f"{storage.uri}/{FULL_RUN_PATH} is not valid: {exc}") from None

    def save(self, storage: Storage) -> None:
        """Publish atomically."""
        record = {
            "version": FULL_RUN_VERSION,
            "started_at": self.started_at,
            "generations": dict(sorted(self.generations.items())),
        }
        storage.publish(FULL_RUN_PATH, json.dumps(record, indent=1).encode())

    def not_reached(self, storage: Storage) -> set[str]:
        """The manifest paths whose generation has not moved since the run began."""
        return {
            rel
            for rel, generation in self.generations.items()
            if Manifest.load(storage, rel).generation == generation
        }
