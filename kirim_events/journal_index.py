"""Lookups in a journal's dedup index (the ``keys`` table), read-write or read-only.

:class:`~kirim_events.journal.Journal` answers them on the journal it writes;
:class:`JournalView` answers them without ever writing, for a dry run that must leave the
data folder as it found it, even where that folder is read-only (a snapshot, another
user's lake).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kirim_events.errors import ConfigError, StorageError
from kirim_events.journal_write import CHUNK

__all__ = [
    "LAKE_ENTRIES",
    "JournalView",
    "KeyIndex",
    "data_folder",
    "enclosing_lake",
    "foreign_entries",
    "journal_path",
    "lake_identity",
    "refuse_foreign_folder",
    "refuse_inside_lake",
]

_TRIES = 10  # reads made while a writer changes the file, before one in read-only mode


def data_folder(data_dir: str | Path) -> Path:
    """The data folder ``data_dir`` as every part names it: ``~`` expanded, as Lake expands
    it, and made absolute (a process may change its working folder meanwhile).

    Whatever takes a data folder (the journal, the collector, backfill, reconcile, the
    demo) names it by this, so that "~/kirim" is one folder for the journal, its
    checkpoints and quarantine, and the lake. ConfigError when ``~`` names no home folder
    (a user this machine does not know, or no HOME and no entry for the user).
    """
    try:
        return Path(data_dir).expanduser().absolute()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        raise ConfigError(
            f"the data folder {str(data_dir)!r} starts with ~, but this machine knows no home"
            " folder for it (a user it does not know, or HOME unset)"
        ) from None


def journal_path(data_dir: str | Path) -> Path:
    """The journal database of the data folder ``data_dir``."""
    return Path(data_dir) / "_journal" / "journal.sqlite3"


LAKE_ENTRIES = frozenset({"events", "deliveries", "quarantine", "_journal", "_state", "_tmp"})
"""A lake's own folders (``kirim_events.lake.LAKE_ENTRIES``: defined here, as the journal
loads without the lake's libraries)."""


def enclosing_lake(data_dir: str | Path) -> tuple[Path, str] | None:
    """The lake (and which of its own folders) that ``data_dir`` lies within, if any: a
    folder above it holding a lake's marks (``_state/lake.json`` or a journal), with
    ``data_dir`` in its ``events/``, ``deliveries/``, ... folder."""
    here = Path(os.path.abspath(data_dir))
    for parent in here.parents:
        own = here.relative_to(parent).parts[0]
        if own in LAKE_ENTRIES and (
            (parent / "_state" / "lake.json").is_file() or journal_path(parent).is_file()
        ):
            return parent, own
    return None


def refuse_inside_lake(data_dir: str | Path) -> None:
    """ConfigError when ``data_dir`` lies within another lake's own folders (``--data
    DATA/events``): a journal and a lake made there put events where that lake's readers
    never look, and Parquet files under its ``events/`` that plain engines read with it
    (DuckDB then refused the whole lake: Hive partition mismatch)."""
    found = enclosing_lake(data_dir)
    if found is not None:
        lake, own = found
        raise ConfigError(
            f"{data_dir} is inside the {own}/ folder of the lake at {lake}: events stored "
            f"there would be lost to that lake and break its plain readers; use {lake} "
            "(--data DIR or KIRIM_DATA_DIR)"
        )


def foreign_entries(names: Iterable[str]) -> list[str]:
    """Of a folder's ``names``, the other things than a lake's, sorted; [] when it holds any
    of a lake's entries (:data:`LAKE_ENTRIES`: it is a lake). Dot files (data/.gitkeep) and
    a new volume's lost+found are no one's content."""
    names = list(names)
    if any(name in LAKE_ENTRIES for name in names):
        return []
    return sorted(n for n in names if not n.startswith(".") and n != "lost+found")


def refuse_foreign_folder(data_dir: str | Path) -> None:
    """NotALakeError when the data folder ``data_dir`` holds other things and none of a
    lake's (:func:`kirim_events.lake.refuse_foreign_folder`, with its message), checked by
    what makes a journal there (the collector, backfill, reconcile) before it writes: the
    CLI alone checked, and a journal made by the library turned a project's folder into one
    every command then took for a lake. Cheap: the lake's libraries load only to refuse."""
    try:
        names = os.listdir(data_dir)
    except (FileNotFoundError, NotADirectoryError):
        return  # made by the first write (a file is refused as the journal opens)
    if foreign_entries(names):
        from kirim_events.lake import refuse_foreign_folder as refuse

        refuse(data_dir)


def lake_identity(lake: object, data_dir: str | Path) -> str | None:
    """Which lake ``lake`` is, as the journal of ``data_dir`` records where it flushes: the
    data folder itself (so the record holds when the folder is moved, copied or mounted
    elsewhere), another local folder by its real path, an S3 lake by its bucket and prefix;
    None for a sink that is no Lake."""
    storage = getattr(lake, "storage", None)
    if storage is None:
        return None
    root = str(storage.root)
    if storage.local:
        path = os.path.realpath(root)
        return "data folder" if path == os.path.realpath(data_dir) else f"file:{path}"
    return "s3:" + "/".join(part for part in root.split("/") if part)


class KeyIndex:
    """``seen`` and ``seen_prefixes`` over the database at ``path``; subclasses say how
    to connect."""

    path: Path

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read journal: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            yield conn
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read journal: {exc}") from exc
        finally:
            conn.close()

    def seen(self, event_keys: Iterable[str]) -> set[str]:
        """Return which of ``event_keys`` the dedup index already holds."""
        keys = list(dict.fromkeys(event_keys))
        found: set[str] = set()
        with self._reader() as conn:
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start : start + CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT event_key FROM keys WHERE event_key IN ({marks})"
                found.update(row[0] for row in conn.execute(sql, chunk))
        return found

    def inbox_keys(self) -> set[str]:
        """The event keys waiting in the journal's inbox (stored, not yet in the lake)."""
        with self._reader() as conn:
            return {row[0] for row in conn.execute("SELECT event_key FROM inbox")}

    def flush_target(self) -> str | None:
        """The :func:`lake_identity` of the lake the journal last flushed into, or None (no
        flush since it was recorded)."""
        with self._reader() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'lake'").fetchone()
        return None if row is None else str(row[0])

    def seen_prefixes(self, prefixes: Iterable[str]) -> set[str]:
        """Return which of ``prefixes`` start some event key the dedup index holds (a Meta
        status key is ``<wamid>:<status>``: ``"<wamid>:"`` asks for any status of it)."""
        found: set[str] = set()
        # the first key at or after the prefix (the primary key's order) starts with it, or
        # none does; no upper bound to compute, so any text works as a prefix
        sql = "SELECT event_key FROM keys WHERE event_key >= ? ORDER BY event_key LIMIT 1"
        with self._reader() as conn:
            for prefix in dict.fromkeys(prefixes):
                row = conn.execute(sql, (prefix,)).fetchone()
                if prefix and row is not None and row[0].startswith(prefix):
                    found.add(prefix)
        return found


class JournalView(KeyIndex):
    """The dedup index of ``data_dir``'s journal, read-only: nothing is created, written or
    locked, so it works on a folder this process may not write.

    Without a ``-wal`` file beside it, every commit is in the database file itself (the
    last writer to close folded the WAL in and removed it): it is read as immutable, which
    creates no file. With one (a collector has the journal open), SQLite's read-only mode
    reads the WAL too. A writer may open, write and close the journal during an immutable
    read, which then sees a file changing under it: such a read is made again (the file
    and its WAL are compared before and after), and after a few tries made in read-only
    mode, as with a writer present. Against a writer opening and closing the journal in a
    loop, about 1 read in 6,000 still missed keys committed just before it (a change
    inside the file system's clock tick): a dry run then reports them missing, never
    the reverse.
    """

    def __init__(self, data_dir: str | Path) -> None:
        # the folder Journal(data_dir) writes: "~" expanded, made absolute
        self.path = journal_path(data_folder(data_dir))
        self._wal = False  # how the next read opens: read-only mode (a WAL), else immutable
        if not self.path.is_file():
            raise StorageError(f"no journal at {self.path}")

    def _state(self) -> tuple[bool, int, int, int]:
        """(a WAL is there, and the database file's inode, size and modification time)."""
        try:
            st = self.path.stat()
        except OSError as exc:
            raise StorageError(f"cannot read journal: {exc}") from exc
        wal = self.path.with_name(self.path.name + "-wal").exists()
        return wal, st.st_ino, st.st_size, st.st_mtime_ns

    def _connect(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        # read-only mode on a journal without a WAL would create -wal and -shm files
        query = "mode=ro" if self._wal else "mode=ro&immutable=1"
        return sqlite3.connect(f"{uri}?{query}", uri=True, isolation_level=None)

    def _stable(self, read: Callable[[], set[str]]) -> set[str]:
        """``read()``, made again while a writer changed the file under an immutable read."""
        for attempt in range(_TRIES):
            before = self._state()
            self._wal = before[0]  # the mode is decided once per read, from this look
            try:
                found = read()
            except StorageError:
                if self._state() == before:
                    raise  # nothing changed under it: a real error, at once
                found = None  # a page changed mid-read ("disk image is malformed")
            # with a WAL, read-only mode: SQLite's own locking holds
            if found is not None and (before[0] or self._state() == before):
                return found
            time.sleep(0.01 * (attempt + 1))
        # a writer keeps at it: one more read as its state now says (read-only mode only
        # with a WAL there, so no file is created)
        self._wal = self._state()[0]
        return read()

    def seen(self, event_keys: Iterable[str]) -> set[str]:
        """Return which of ``event_keys`` the dedup index already holds."""
        keys = list(event_keys)
        return self._stable(lambda: KeyIndex.seen(self, keys))

    def seen_prefixes(self, prefixes: Iterable[str]) -> set[str]:
        """Return which of ``prefixes`` start some event key the dedup index holds."""
        wanted = list(prefixes)
        return self._stable(lambda: KeyIndex.seen_prefixes(self, wanted))

    def inbox_keys(self) -> set[str]:
        """The event keys waiting in the journal's inbox."""
        return self._stable(lambda: KeyIndex.inbox_keys(self))

    def flush_target(self) -> str | None:
        """The lake the journal last flushed into (see :meth:`KeyIndex.flush_target`)."""
        found = self._stable(lambda: {KeyIndex.flush_target(self) or ""})
        return next(iter(found)) or None

    def close(self) -> None:
        """Nothing to release (each lookup opens and closes its own connection)."""

    def __repr__(self) -> str:
        return f"JournalView({str(self.path.parent.parent)!r})"
