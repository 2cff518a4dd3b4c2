"""Where the lake's bytes live: a local folder or an S3 prefix, with atomic publish.

``Storage`` hides the difference between a local folder (plain ``os`` calls, so that files
can be fsync'd) and S3-compatible object storage (``pyarrow.fs.S3FileSystem``). Paths given
to it are relative to the lake root and use ``/``.

Atomic publish:

* local: write ``DATA/_tmp/<random>``, fsync the file, create the target folder (fsyncing
  each new folder's parent), rename into place, fsync the target folder. Readers see the whole
  file or nothing; nothing is ever overwritten in place except ``_state`` records, which are
  replaced by the same atomic rename.
* S3: one PUT of the final key; S3 makes an object visible only once it is complete.

Foreign ``OSError`` s are translated into :class:`~kirim_events.errors.StorageError` here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from kirim_events.errors import ConfigError, StorageError

__all__ = ["Entry", "Storage", "open_storage"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a folder listing."""

    name: str
    is_dir: bool
    size: int


@contextmanager
def _translate(action: str, rel: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"lake storage failed to {action} {rel!r}: {exc}") from exc


class Storage:
    """A lake root on a local disk or on S3."""

    def __init__(self, root: str, fs: pafs.FileSystem, *, local: bool, uri: str) -> None:
        self.root = root.rstrip("/")
        self.fs = fs
        self.local = local
        self.uri = uri

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def full(self, rel: str) -> str:
        """Full path of ``rel`` for this storage's filesystem (and for local readers)."""
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    # ------------------------------------------------------------------ reading

    def list_dir(self, rel: str) -> list[Entry]:
        """List a folder; a missing folder is empty."""
        path = self.full(rel)
        with _translate("list", rel):
            if self.local:
                try:
                    with os.scandir(path) as it:
                        return [
                            Entry(e.name, e.is_dir(), 0 if e.is_dir() else e.stat().st_size)
                            for e in it
                        ]
                except (FileNotFoundError, NotADirectoryError):
                    return []
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
        with _translate("list", rel):
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

    def read_bytes(self, rel: str) -> bytes | None:
        """Whole file contents, or None when it does not exist."""
        path = self.full(rel)
        with _translate("read", rel):
            if self.local:
                try:
                    return Path(path).read_bytes()
                except FileNotFoundError:
                    return None
            try:
                with self.fs.open_input_stream(path) as stream:
                    return bytes(stream.read())
            except FileNotFoundError:
                return None

    # ------------------------------------------------------------------ writing

    def publish(self, rel: str, data: bytes) -> None:
        """Make ``rel`` hold exactly ``data``, atomically and durably (see module doc)."""
        target = self.full(rel)
        with _translate("write", rel):
            if not self.local:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
                return
            tmp_dir = self.full("_tmp")
            os.makedirs(tmp_dir, exist_ok=True)
            tmp = os.path.join(tmp_dir, uuid.uuid4().hex)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                parent = os.path.dirname(target)
                _makedirs_durable(parent)
                os.replace(tmp, target)
                _fsync_dir(parent)
            except BaseException:
                _unlink_quiet(tmp)
                raise

    def delete(self, rel: str) -> None:
        """Delete a file; a missing file is not an error."""
        path = self.full(rel)
        with _translate("delete", rel):
            if self.local:
                _unlink_quiet(path)
                return
            with suppress(FileNotFoundError):
                self.fs.delete_file(path)

    def sync_dir(self, rel: str) -> None:
        """Make earlier deletions in a local folder durable (no-op on S3)."""
        if self.local:
            with _translate("sync", rel):
                _fsync_dir(self.full(rel))


def _unlink_quiet(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: str) -> None:
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    _fsync_dir(parent)


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
    S3-compatible servers (MinIO, moto, R2). Pass ``filesystem=`` to supply your own.
    """
    text = os.fspath(location)
    if not text.startswith("s3://"):
        if "://" in text:
            raise ConfigError(f"unsupported lake location {text!r}: use a folder or s3://")
        return Storage(
            str(Path(text).expanduser().resolve()),
            pafs.LocalFileSystem(),
            local=True,
            uri=text,
        )
    parsed = urlparse(text)
    if not parsed.netloc:
        raise ConfigError(f"S3 lake location {text!r} has no bucket")
    root = parsed.netloc + "/" + parsed.path.strip("/")
    if filesystem is None:
        environ = os.environ if env is None else env
        filesystem = _s3_from_env(environ)
    return Storage(root.rstrip("/"), filesystem, local=False, uri=text)


def _s3_from_env(env: Mapping[str, str]) -> pafs.FileSystem:
    kwargs: dict[str, object] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
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
    try:
        return pafs.S3FileSystem(**kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot configure S3 access: {exc}") from exc
