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
    "MIN_READER_VERSION",
    "Manifest",
    "check_version",
    "ensure_version",
    "manifest_path",
]

FORMAT = "kirim-events-lake"
MIN_READER_VERSION = 1
VERSION_PATH = "_state/lake.json"


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

    @classmethod
    def load(cls, storage: Storage, rel: str) -> Manifest:
        """Read a manifest; a missing one is empty (generation 0)."""
        record = _load_json(storage, rel)
        if record is None:
            return cls()
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

    def counted(self, date: str, names: list[str]) -> list[str]:
        """Which of a partition's files readers count (see module doc)."""
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
