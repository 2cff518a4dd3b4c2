"""Where the lake's bytes live: a local folder or an S3 prefix, with atomic publish.

``Storage`` hides the difference between a local folder (plain ``os`` calls, so that files
can be fsync'd) and S3-compatible object storage (``pyarrow.fs.S3FileSystem``). Paths given
to it are relative to the lake root and use ``/``.

Atomic publish:

* local: write ``DATA/_tmp/<random>``, fsync the file, create the target folder (fsyncing
  each new folder's parent), rename into place, fsync the target folder. A target on another
  filesystem than ``DATA/_tmp`` (``DATA/events`` a symlink to another disk) is staged beside
  itself instead, as ``.<name>.<random>.tmp`` (a rename across filesystems fails with EXDEV):
  hidden, so readers skip it, and removed by compaction when a crashed write left it. A
  compaction may
  remove the target folder, found empty, between its creation and the rename
  (:meth:`Storage.remove_empty_folders`): the rename then fails with ENOENT, and the folder
  is made again and the rename retried (:meth:`Storage._move_in`). A batch of files
  (:meth:`Storage.publish_many`) is made durable with one ``syncfs(2)`` before and one after
  the renames on Linux >= 5.8 (per filesystem written to), the same guarantee at a fraction
  of the journal commits.
  Readers see the whole file or nothing; nothing is ever overwritten in place except
  ``_state`` records, which are replaced by the same atomic rename.
* S3: one PUT of the final key; S3 makes an object visible only once it is complete.

Conditional writes (S3 only, with a boto3 client: the ``s3`` extra and a lake opened from
its location, not a filesystem the caller made): :meth:`Storage.read_tagged` reads an object
with its ETag, :meth:`Storage.put_if` writes it only if it is still as read
(``If-None-Match: *`` when there was none, else ``If-Match: <ETag>``) and
:meth:`Storage.delete_if` deletes it on the same condition. The compaction lease is built on
them (:mod:`kirim_events.lake.lock`).

Foreign ``OSError`` s and boto errors are translated into
:class:`~kirim_events.errors.StorageError` here (the conditions into ``ConditionFailed``
and ``ConditionsUnsupported``), and so are failed S3 requests met by the engines reading an
S3 lake's Parquet files (:meth:`Storage.s3_error`): a request S3 denied or a server that
could not be reached is one line naming the lake and what to check, never a credential
(told apart and worded by :mod:`kirim_events.lake.s3failures`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import posixpath
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import pyarrow.fs as pafs

from kirim_events.atomicfile import fsync_dir, make_dirs, remove_quiet, write_new
from kirim_events.config import shown_url
from kirim_events.errors import ConfigError, StorageError
from kirim_events.lake.s3failures import (
    BOTO_DENIED,
    ConditionFailed,
    ConditionsUnsupported,
    failure_message,
    quoted,
    s3_failure,
    scrub,
)

__all__ = ["Entry", "Staged", "Storage", "open_storage"]

_S3_THREADS = 16
_RENAME_TRIES = 5


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a folder listing."""

    name: str
    is_dir: bool
    size: int


@dataclass(slots=True)
class Staged:
    """A file written by :meth:`Storage.stage`, waiting for :meth:`Storage.commit`."""

    rel: str
    tmp: str | None
    dev: int | None = None
    """Local: the filesystem (``st_dev``) of the temp file, the target's own: :meth:`Storage.
    commit` syncs each filesystem once, found by it rather than by a stat of every folder."""


@contextmanager
def _translate_boto(
    storage: Storage, action: str, rel: str, request: str, *, conditional: bool = False
) -> Iterator[None]:
    """boto errors as this module's: the conditions apart, a StorageError worded as the same
    failure met by pyarrow (:meth:`Storage._s3_message`): a request S3 denied, one that got no
    answer, another failure of S3; what botocore says otherwise, with no credential."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        ParamValidationError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    try:
        yield
    except ParamValidationError as exc:
        if conditional:  # a botocore older than S3's conditional writes knows no IfMatch
            raise ConditionsUnsupported(
                storage._scrub(f"this boto3 cannot send them: {exc}")
            ) from exc
        raise StorageError(
            storage._scrub(f"lake storage failed to {action} {rel!r}: {exc}")
        ) from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or (
            status == 412
        ):
            # NoSuchKey: an If-Match on an object deleted since it was read
            raise ConditionFailed(f"{rel!r} changed since it was read ({code})") from exc
        if code == "NotImplemented" or status == 501:
            said = storage._scrub(str(error.get("Message", "")))
            raise ConditionsUnsupported(f"{code or status}: {said}") from exc
        if code in BOTO_DENIED or status == 403:
            kind = "denied"
        else:
            kind = code or "UNKNOWN"
            kind = kind if status is None else f"{kind} (HTTP status {status})"
        said = str(error.get("Message", "")).strip().split("\n", 1)[0]
        raise StorageError(storage._s3_message((kind, request), said, action)) from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        message = storage._s3_message(("unreachable", request), "", action)
        raise StorageError(message) from exc
    except BotoCoreError as exc:
        raise StorageError(
            storage._scrub(f"lake storage failed to {action} {rel!r}: {exc}")
        ) from exc


_ACTIONS = {"list": "list", "read": "read", "write": "write", "delete": "delete", "sync": "write"}


@contextmanager
def _translate(storage: Storage, action: str, rel: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        # a failed S3 request (denied, unanswered, NO_SUCH_BUCKET, ...): one line saying
        # what to check, worded as the same failure met by a read or by boto3
        failure = None if storage.local else s3_failure(exc)
        if failure is not None:
            message = storage._s3_message(failure, quoted(exc), _ACTIONS.get(action, action))
            raise StorageError(message) from exc
        raise StorageError(
            storage._scrub(f"lake storage failed to {action} {rel!r}: {exc}")
        ) from exc


class Storage:
    """A lake root on a local disk or on S3."""

    def __init__(
        self,
        root: str,
        fs: pafs.FileSystem,
        *,
        local: bool,
        uri: str,
        s3_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root.rstrip("/")
        self.fs = fs
        self.local = local
        self.uri = uri
        # the environment an S3 lake's filesystem was made from (None: given by the caller)
        self._s3_env = s3_env
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.stage_beside = False
        """Local: stage every file beside its target rather than in ``DATA/_tmp`` (done
        anyway for a target on another filesystem than ``_tmp``: see :meth:`stage`)."""

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def s3_error(self, exc: BaseException, *, action: str = "read") -> StorageError | None:
        """One line for a failed S3 request of this lake (:func:`s3_failure`), naming the
        lake, the request and what to check; None for a local lake and for other failures.

        ``action`` is what the credentials must be allowed to do to the lake (``read``,
        ``write``, ``list``, ``delete``, ...), as the message says it. A denied request says
        to check the credentials and their rights on the lake; one that got no answer names
        the endpoint tried and says to check it. Neither quotes S3's or pyarrow's text, nor
        names a credential's value; another failure (``NO_SUCH_BUCKET``, ``SLOW_DOWN``, ...)
        quotes S3's own message, with any of the lake's credentials blanked out (a store
        may echo the request's headers). boto3's failures (the lease) are worded the same.
        """
        failure = None if self.local else s3_failure(exc)
        if failure is None:
            return None
        return StorageError(self._s3_message(failure, quoted(exc), action))

    def _s3_message(self, failure: tuple[str, str], said: str, action: str) -> str:
        """The one line for a failed S3 request of this lake (:func:`failure_message`)."""
        return failure_message(self.uri, self._endpoint, failure, self._scrub(said), action)

    def _scrub(self, text: str) -> str:
        """``text`` with the values of this lake's AWS credentials blanked out."""
        return scrub(text, self._s3_env or {})

    def _endpoint(self) -> str:
        """The S3 endpoint this lake's requests go to, as it may be shown."""
        if self._s3_env is None:
            return "the endpoint of the filesystem given"
        settings = _s3_settings(self._s3_env)
        url = _endpoint_url(settings)
        if url is None:
            region = settings.get("region")
            return f"AWS's endpoint{' for ' + region if region else ''}"
        return shown_url(url)

    def full(self, rel: str) -> str:
        """Full path of ``rel`` for this storage's filesystem (and for local readers)."""
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    # ------------------------------------------------------------------ reading

    def list_dir(self, rel: str) -> list[Entry]:
        """List a folder; a missing folder is empty."""
        path = self.full(rel)
        with _translate(self, "list", rel):
            if self.local:
                try:
                    it = os.scandir(path)
                except (FileNotFoundError, NotADirectoryError):
                    return []
                entries: list[Entry] = []
                with it:
                    for e in it:
                        try:
                            folder = e.is_dir()
                            entries.append(Entry(e.name, folder, 0 if folder else e.stat().st_size))
                        except FileNotFoundError:
                            # deleted since the folder was read (a compaction removing the
                            # files it replaced): that entry only, not the whole folder
                            continue
                return entries
            selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
            return [
                Entry(
                    info.base_name,
                    info.type == pafs.FileType.Directory,
                    int(info.size or 0),
                )
                for info in self.fs.get_file_info(selector)
            ]

    def list_files(self, rel: str) -> list[tuple[str, int]]:
        """All files under a folder, recursively, as ``(relative path, size)``."""
        base = self.full(rel)
        out: list[tuple[str, int]] = []
        with _translate(self, "list", rel):
            if self.local:
                for dirpath, _dirs, files in os.walk(base):
                    for name in files:
                        full = os.path.join(dirpath, name)
                        try:
                            size = os.stat(full).st_size
                        except FileNotFoundError:
                            continue
                        out.append((os.path.relpath(full, self.root).replace(os.sep, "/"), size))
                return out
            selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File:
                    out.append((info.path[len(self.root) + 1 :], int(info.size or 0)))
        return out

    @property
    def bucket(self) -> str | None:
        """An S3 lake's bucket; None for a local one."""
        return None if self.local else self.root.split("/", 1)[0]

    def bucket_missing(self) -> bool:
        """Whether an S3 lake's bucket does not exist (its listing is merely empty)."""
        if self.bucket is None:
            return False
        try:
            info: pafs.FileInfo = self.fs.get_file_info(self.bucket)
        except OSError:  # no right to look at the bucket (a policy for the prefix only)
            return False
        return bool(info.type == pafs.FileType.NotFound)

    def is_object(self, path: str | None = None) -> bool:
        """Whether an S3 lake's root (or ``path``, a full path of its filesystem) is an
        object rather than a prefix: an object's URL given for a lake; False when local."""
        if self.local:
            return False
        try:
            info = self.fs.get_file_info(self.root if path is None else path)
        except OSError:
            # a HEAD denied (a policy on team/* for the lake at team): not known to be one;
            # a store out of reach is met, and said, by the lake's next request
            return False
        return bool(info.type == pafs.FileType.File)

    def read_bytes(self, rel: str) -> bytes | None:
        """Whole file contents, or None when it does not exist."""
        path = self.full(rel)
        with _translate(self, "read", rel):
            if self.local:
                try:
                    return Path(path).read_bytes()
                except FileNotFoundError:
                    return None
            # pyarrow reads an S3 object as a HEAD (its size) then ranged GETs: an object
            # replaced in between (a lease renewed, a manifest published) read as the first
            # bytes of the new one, cut at the old size. Read again until the size agrees.
            for _ in range(5):
                try:
                    with self.fs.open_input_stream(path) as stream:
                        data = bytes(stream.read())
                except FileNotFoundError:
                    return None
                info = self.fs.get_file_info(path)
                if info.type == pafs.FileType.NotFound:
                    return None
                if info.size == len(data):
                    return data
            raise StorageError(f"{rel} kept changing while it was read")

    # ------------------------------------------------------------------ writing

    def publish(self, rel: str, data: bytes) -> None:
        """Make ``rel`` hold exactly ``data``, atomically and durably (see module doc)."""
        self.publish_many([(rel, data)])

    def publish_many(self, items: Sequence[tuple[str, bytes]], *, first: int = 0) -> None:
        """Publish several files, each atomically, all durable on return.

        Local: every temp file is written, then made durable (one ``syncfs(2)`` for the batch
        on Linux, else an fsync per file), then renamed into place in order, then the renames
        are made durable the same way: two journal commits per batch instead of two per file.
        S3: the PUTs run in parallel, the ``first`` items all before the rest.
        """
        if not self.local:
            with ThreadPoolExecutor(_S3_THREADS) as pool:
                for wave in (items[:first], items[first:]):
                    list(pool.map(lambda item: self.stage(*item), wave))
            return
        staged: list[Staged] = []
        try:
            staged.extend(self.stage(rel, data) for rel, data in items)
            self.commit(staged)
        finally:
            self.discard(staged)

    def stage(self, rel: str, data: bytes) -> Staged:
        """First half of a publish: the bytes are written but not yet visible under ``rel``.

        On S3 the object is written under its final key at once (a PUT is atomic); callers
        that stage S3 files must make readers ignore them until committed (compaction names
        them ``c-...`` and lists them in its manifest only after the commit).
        """
        with _translate(self, "write", rel):
            if not self.local:
                with self.fs.open_output_stream(self.full(rel)) as out:
                    out.write(data)
                return Staged(rel, None)
            tmp, dev = self._temp_path(self.full(rel))
            for attempt in range(_RENAME_TRIES):
                try:
                    # its folder needs no fsync: commit renames it into place and syncs it
                    write_new(tmp, data, fsync=_SYNCFS is None, sync_folder=False)
                    break
                except FileNotFoundError:
                    # staged beside its target: a compaction may have removed the folder,
                    # found empty, since _temp_path made it (as between a commit's mkdir
                    # and rename: _move_in); made again, as a rename would
                    folder = os.path.dirname(tmp)
                    if folder != os.path.dirname(self.full(rel)) or attempt == _RENAME_TRIES - 1:
                        raise
                    make_dirs(folder, fsync=_SYNCFS is None)
            return Staged(rel, tmp, dev)

    def _temp_path(self, target: str) -> tuple[str, int]:
        """Where a local file bound for ``target`` is written first, and the filesystem
        (``st_dev``) of both: ``DATA/_tmp`` when that is on the target's filesystem, else
        beside the target (:func:`temp_name`).

        A rename is atomic only within one filesystem; across two it fails with EXDEV
        ("Invalid cross-device link"). ``DATA/events`` (or any folder of the lake) may be a
        symlink to another disk: every write there failed, and the journal never flushed.
        ``stage_beside=True`` stages every file beside its target. Two stats per file on
        the collector's flush path (the target's folder, ``_tmp``), as many calls as the
        ``os.makedirs`` of ``_tmp`` alone made before."""
        folder = os.path.dirname(target)
        dev = _device(folder)
        if not self.stage_beside:
            tmp_dir = self.full("_tmp")
            try:
                tmp_dev = os.stat(tmp_dir).st_dev
            except FileNotFoundError:
                os.makedirs(tmp_dir, exist_ok=True)
                tmp_dev = os.stat(tmp_dir).st_dev
            if dev == tmp_dev:
                return os.path.join(tmp_dir, uuid.uuid4().hex), dev
        # the target's folder holds the temp file from now on, so a compaction finding it
        # empty cannot remove it before the rename (remove_empty_folders)
        make_dirs(folder, fsync=_SYNCFS is None)
        return os.path.join(folder, temp_name(os.path.basename(target))), dev

    def commit(
        self, staged: Sequence[Staged], after_each: Callable[[str], None] | None = None
    ) -> None:
        """Second half: make staged files durable and rename them into place, in order."""
        pending = [s for s in staged if s.tmp is not None]
        if not self.local or not pending:
            for s in staged:
                if after_each is not None:
                    after_each(s.rel)
            return
        with _translate(self, "write", pending[0].rel):
            # one syncfs per filesystem written (each temp file is on its target's), known
            # from the staging: no stat of each folder, on the collector's flush path
            if _SYNCFS is not None:
                _syncfs_each((s.dev, os.path.dirname(s.tmp)) for s in pending if s.tmp)
            parents = {os.path.dirname(self.full(s.rel)): s.dev for s in pending}
            for parent in parents:
                make_dirs(parent, fsync=_SYNCFS is None)
            for s in pending:
                self._move_in(s)
                if after_each is not None:
                    after_each(s.rel)
            if _SYNCFS is not None:
                _syncfs_each((dev, parent) for parent, dev in parents.items())
            else:
                self._sync_paths(list(parents))

    def _move_in(self, staged: Staged) -> None:
        """Rename a staged temp file to its target, whose folder :meth:`commit` made.

        A compaction may have removed that folder since, found empty
        (:meth:`remove_empty_folders`): the rename then fails with ENOENT while the temp file
        is still there, so the folder is made again and the rename retried. One compaction
        removes a folder at most once; only a later run, removing it again between a retry's
        ``mkdir`` and rename, could make that fail too, hence a few tries rather than one.
        """
        assert staged.tmp is not None
        target = self.full(staged.rel)
        for attempt in range(_RENAME_TRIES):
            try:
                os.replace(staged.tmp, target)
                break
            except FileNotFoundError as exc:
                if not os.path.exists(staged.tmp):
                    raise  # the temp file is gone, not the folder: nothing to retry
                if attempt == _RENAME_TRIES - 1:
                    raise StorageError(
                        f"lake storage failed to write {staged.rel!r}: its folder was removed "
                        f"{_RENAME_TRIES} times while the file was moved in"
                    ) from exc
                make_dirs(os.path.dirname(target), fsync=_SYNCFS is None)
        staged.tmp = None

    def discard(self, staged: Sequence[Staged]) -> None:
        """Remove the temp files of staged files that were never committed."""
        for s in staged:
            if s.tmp is not None:
                remove_quiet(s.tmp)
                s.tmp = None

    def _sync_paths(self, folders: list[str]) -> None:
        if _SYNCFS is not None:
            # one syncfs per filesystem: the folders may be on several (a symlinked events/)
            for folder in _one_per_device(folders):
                _syncfs(folder)
        else:
            for folder in folders:
                with suppress(FileNotFoundError):  # a folder that is gone has nothing to sync
                    fsync_dir(folder)

    def delete(self, rel: str) -> None:
        """Delete a file; a missing file is not an error."""
        path = self.full(rel)
        with _translate(self, "delete", rel):
            if self.local:
                remove_quiet(path)
                return
            with suppress(FileNotFoundError):
                self.fs.delete_file(path)

    def remove_empty_folders(self, rels: Iterable[str]) -> None:
        """Remove these folders if they are empty (compaction's clean-up of the folders it
        deleted files from); on S3, their ``folder/`` objects (:meth:`drop_folder_markers`).

        Local: never the lake root nor a folder directly under it (``events``, ``_state``,
        ...): only folders at least two levels down. ``rmdir(2)`` removes a folder only when
        it holds nothing, atomically, so a file a writer moved in first keeps it; a writer
        that made the folder and moves a file in after the removal makes it again
        (:meth:`_move_in`). Deepest first (one of these folders inside another goes first);
        the parents are then synced so that a crash does not bring the folders back.
        Best effort: a folder that cannot be removed is left (an empty folder is harmless).
        """
        if not self.local:
            self.drop_folder_markers(rels)
            return
        folders = {r for r in (rel.strip("/") for rel in rels) if "/" in r}
        removed: list[str] = []
        for rel in sorted(folders, key=lambda r: (-r.count("/"), r)):
            if any(part in ("", ".", "..") for part in rel.split("/")):
                continue
            try:
                os.rmdir(self.full(rel))
            except OSError:  # not empty (the usual case), already gone, or not ours to remove
                continue
            removed.append(rel)
        parents = {rel.rsplit("/", 1)[0]: None for rel in removed}
        self.sync_dirs([p for p in parents if p not in removed])

    def drop_folder_markers(self, rels: Iterable[str]) -> None:
        """Delete the empty ``folder/`` objects of these folders of an S3 lake.

        pyarrow puts one in each folder it deletes a file from, so that the folder still
        "exists" once empty: after each compaction, one per partition it rewrote or emptied
        and per change-marker folder, piling up with the days. Only zero-byte objects named
        ``<lake prefix>/<folder>/`` are deleted, never one outside the lake. pyarrow cannot
        name such a key, so boto3 does (the ``s3`` extra); without it, or with a filesystem
        the caller made, nothing is done. Best effort: a marker is harmless to any reader.
        """
        client = self._s3_client()
        if client is None:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        bucket = self.root.partition("/")[0]
        folders = {r for r in (rel.strip("/") for rel in rels) if r}
        keys = [f"{self._bucket_key(r)[1]}/" for r in sorted(folders)]

        def drop(key: str) -> None:
            try:
                if client.head_object(Bucket=bucket, Key=key)["ContentLength"] == 0:
                    client.delete_object(Bucket=bucket, Key=key)
            except (BotoCoreError, ClientError):
                pass  # none there (the usual 404), or no right to look: left as it is

        with ThreadPoolExecutor(_S3_THREADS) as pool:
            list(pool.map(drop, keys))

    # ------------------------------------------------------------------ conditional writes

    def conditional_writes(self) -> bool:
        """Whether :meth:`read_tagged`, :meth:`put_if` and :meth:`delete_if` can be used: an S3
        lake with a boto3 client (the store may still refuse them: ConditionsUnsupported)."""
        return not self.local and self._s3_client() is not None

    def _bucket_key(self, rel: str) -> tuple[str, str]:
        bucket, _, prefix = self.root.partition("/")
        rel = rel.strip("/")
        return bucket, f"{prefix}/{rel}" if prefix else rel

    def read_tagged(self, rel: str) -> tuple[bytes, str] | None:
        """An S3 object's contents and ETag, from one GET; None when it does not exist."""
        from botocore.exceptions import ClientError

        client = self._s3_client()
        bucket, key = self._bucket_key(rel)
        with _translate_boto(self, "read", rel, "GetObject"):
            try:
                answer = client.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(answer["Body"].read()), str(answer["ETag"])

    def put_if(self, rel: str, data: bytes, *, etag: str | None) -> str:
        """Write an S3 object only if it is as :meth:`read_tagged` saw it: absent when
        ``etag`` is None (``If-None-Match: *``), else still of that ETag (``If-Match``).

        Returns the new ETag. Raises ConditionFailed when it changed (another writer won),
        ConditionsUnsupported when the store does not do conditional writes (or the installed
        botocore predates them), StorageError for any other failure.
        """
        client = self._s3_client()
        bucket, key = self._bucket_key(rel)
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        with _translate_boto(self, "write", rel, "PutObject", conditional=True):
            answer = client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
            return str(answer["ETag"])

    def delete_if(self, rel: str, etag: str) -> None:
        """Delete an S3 object only if its ETag is still ``etag`` (raises as :meth:`put_if`)."""
        client = self._s3_client()
        bucket, key = self._bucket_key(rel)
        with _translate_boto(self, "delete", rel, "DeleteObject", conditional=True):
            client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)

    def _s3_client(self) -> Any:
        """A boto3 S3 client with the filesystem's settings; None where there is none.

        One per storage, made once even when threads ask at the same moment, from a session
        of its own: boto3's default session (``boto3.client``) is not safe to make clients
        from in several threads at once, as two lakes used in two threads would. ConfigError
        when boto3 cannot make one from the environment (an ``AWS_PROFILE`` naming no
        profile): a compaction then stops before its lease, having done nothing."""
        with self._client_lock:
            return self._make_client()

    def _make_client(self) -> Any:
        if self._client is None and self._s3_env is not None:
            try:
                import boto3.session
            except ImportError:
                return None
            settings = _s3_settings(self._s3_env)
            kwargs = {
                "endpoint_url": _endpoint_url(settings),
                "region_name": settings.get("region"),
                "aws_access_key_id": settings.get("access_key"),
                "aws_secret_access_key": settings.get("secret_key"),
                "aws_session_token": settings.get("session_token"),
            }
            from botocore.exceptions import BotoCoreError, ProfileNotFound

            try:
                session = boto3.session.Session()
                self._client = session.client("s3", **{k: v for k, v in kwargs.items() if v})
            except (BotoCoreError, ValueError) as exc:
                # an AWS_PROFILE naming no profile: pyarrow reads the lake without it (with
                # the keys given), but boto3 makes no client (the lease, the folder markers);
                # ValueError: a setting botocore reads with int() (AWS_MAX_ATTEMPTS=three)
                hint = (
                    "check AWS_PROFILE and the AWS config files"
                    if isinstance(exc, ProfileNotFound)
                    else "check the AWS environment"
                )
                raise ConfigError(
                    self._scrub(f"cannot configure S3 access for the lake at {self.uri}: {exc}")
                    + f" ({hint})"
                ) from exc
        return self._client

    def sync_dirs(self, rels: Sequence[str]) -> None:
        """Make earlier deletions in local folders durable (no-op on S3)."""
        if self.local and rels:
            with _translate(self, "sync", rels[0]):
                self._sync_paths([self.full(r) for r in rels])


TEMP_SUFFIX = ".tmp"


def temp_name(name: str) -> str:
    """The name of a temp file staged beside the file ``name`` it becomes: ``.<name>.<random>
    .tmp``. Hidden and not ending in ``.parquet``, so no reader takes a half-written one for
    data (ours skip names starting with ``.``; a ``**/*.parquet`` glob does not match it);
    compaction removes those of crashed writes (``compact._clean_temps``)."""
    return f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for a name :func:`temp_name` gives (and ``atomicfile.replace_file`` too)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _device(folder: str) -> int:
    """The filesystem (``st_dev``) ``folder`` is on, or would be on once made: that of its
    nearest existing ancestor, symlinks followed."""
    path = folder
    while True:
        try:
            return os.stat(path).st_dev
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent


def _one_per_device(folders: Iterable[str]) -> list[str]:
    """One of ``folders`` per filesystem they are on (those gone are skipped)."""
    found: dict[int, str] = {}
    for folder in folders:
        try:
            found.setdefault(os.stat(folder).st_dev, folder)
        except FileNotFoundError:
            continue  # a folder that is gone has nothing to sync
    return list(found.values())


def _syncfs_each(folders: Iterable[tuple[int | None, str]]) -> None:
    """One ``syncfs`` per filesystem of these ``(st_dev, folder)``, on the first of its
    folders still there (one that is gone has nothing to sync)."""
    by_device: dict[int | None, dict[str, None]] = {}
    for dev, folder in folders:
        by_device.setdefault(dev, {})[folder] = None
    for candidates in by_device.values():
        for folder in candidates:
            try:
                _syncfs(folder)
            except FileNotFoundError:
                continue
            break


def _find_syncfs() -> Callable[[int], int] | None:
    # syncfs(2) flushes one filesystem: the same guarantee as an fsync of every file on it.
    # Linux only, and only trusted since 5.8 (it reports writeback errors from then on).
    if sys.platform != "linux":
        return None
    release = platform.release().split(".")
    try:
        if (int(release[0]), int(release[1])) < (5, 8):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError, ValueError, IndexError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return cast("Callable[[int], int]", func)


_SYNCFS = _find_syncfs()


def _syncfs(path: str) -> None:
    assert _SYNCFS is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def open_storage(
    location: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> Storage:
    """Open a lake root: a local path, or ``s3://bucket/prefix``.

    For S3 the standard AWS environment is used (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``) plus ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for
    S3-compatible servers (MinIO, moto, R2). Pass ``filesystem=`` to supply your own (for
    an ``s3://`` location; ConfigError for a folder with any but a local filesystem).
    """
    text = os.fspath(location)
    if not text.startswith("s3://"):
        if "://" in text:
            raise ConfigError(  # shown without what may be a password or a token
                f"unsupported lake location {shown_url(text)!r}: use a folder or s3://"
            )
        if filesystem is not None and filesystem.type_name != "local":
            # pyarrow names an S3 object "bucket/key": taken for a folder, the lake went to
            # the local disk and the filesystem given was never used
            # the location to write instead, as open_storage takes it: "./lake/team" was
            # said as s3://./lake/team (a bucket named "."), "lake/./team" with a "." part
            parts = (p for p in posixpath.normpath(text).split("/") if p not in ("", ".", ".."))
            raise ConfigError(
                f"filesystem= is for an s3://bucket/prefix lake; {text!r} is a local "
                f"folder (for the {filesystem.type_name} filesystem given, write "
                f"s3://{'/'.join(parts)})"
            )
        return Storage(
            str(Path(text).expanduser().resolve()),
            pafs.LocalFileSystem(),
            local=True,
            uri=text,
        )
    parsed = urlparse(text)
    if "@" in text:  # pyarrow takes s3://KEY:SECRET@bucket (a "/" in SECRET too); never shown
        raise ConfigError(
            "an S3 lake location must not carry credentials (user:password@) nor any '@': "
            "use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if not parsed.netloc:
        raise ConfigError(f"S3 lake location {shown_url(text)!r} has no bucket")
    if "?" in text or "#" in text:  # urlparse would drop what follows, silently
        raise ConfigError(
            f"S3 lake location {shown_url(text)!r}: a prefix with '?' or '#' is not supported"
        )
    prefix = parsed.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        # S3 keys are not paths: "a/./b" was written as a/b by one server and listed as
        # a/./b, so every write went where no read looked; "a//b" failed inside pyarrow
        raise ConfigError(
            f"S3 lake location {shown_url(text)!r}: a prefix with an empty, '.' or '..' "
            "part is not supported"
        )
    root = parsed.netloc + "/" + prefix
    environ = None
    if filesystem is None:
        environ = os.environ if env is None else env
        settings = _s3_settings(environ)
        try:
            filesystem = pafs.S3FileSystem(**settings)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot configure S3 access: {exc}") from exc
    return Storage(root.rstrip("/"), filesystem, local=False, uri=text, s3_env=environ)


def _endpoint_url(settings: Mapping[str, str]) -> str | None:
    """The endpoint URL of :func:`_s3_settings`; None for AWS's own."""
    if "endpoint_override" not in settings:
        return None
    return f"{settings['scheme']}://{settings['endpoint_override']}"


def _s3_settings(env: Mapping[str, str]) -> dict[str, str]:
    """pyarrow's S3FileSystem arguments from the AWS environment variables."""
    kwargs: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint.strip())
        if "@" in endpoint:  # an endpoint has no other use for one
            raise ConfigError(  # never shown
                "AWS_ENDPOINT_URL must not carry a user name or password: use "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if not endpoint.strip().lower().startswith(("http://", "https://")):
            raise ConfigError(
                "AWS_ENDPOINT_URL must start with http:// or https://, got "
                f"{shown_url(endpoint.strip())!r}"
            )
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    return kwargs
