"""A compaction that finishes between a read's planning and its reading, made to happen
exactly there: :func:`compacted_meanwhile` gives a Lake class one of whose read methods,
once it has planned its frame, lets a real compaction of the same lake (through another
Lake object, as another process would run it) delete the files it planned, before the
caller reads them. Nothing about the read is faked: the frame is the Lake's own, and the
files are gone from the disk when it is read.

On S3 a file can also vanish in the middle of a read: pyarrow asks for an object's size
(HEAD), then for its bytes (GET). :func:`compacted_between_head_and_get` gives a filesystem
that runs a real compaction between the two, for a Lake to read with."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Container, Mapping
from datetime import timedelta
from typing import Any

import pyarrow.fs as pafs

import kirim_events as ke
from kirim_events.events import EventRecord
from kirim_events.lake.compact import CompactionReport
from kirim_events.lake.storage import open_storage


def compact_with_late_copy(
    location: str, late_copy: EventRecord, env: Mapping[str, str] | None = None
) -> CompactionReport:
    """Compact the lake at ``location`` through a Lake of its own (another process's, in
    effect) after writing a copy of ``late_copy`` received an hour later, so that the
    compaction rewrites that partition and deletes its files, compacted ones too. A
    compaction that deleted nothing fails the test: the race would not be one."""
    other = ke.Lake(location, env=env)
    later = late_copy.received_at + timedelta(hours=1)
    other.write_events([dataclasses.replace(late_copy, received_at=later)])
    report = other.compact()
    assert report.files_deleted, "the compaction deleted no file: no race"
    return report


def compacted_meanwhile(
    method: str,
    calls: Container[int],
    late_copy: EventRecord,
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[type[ke.Lake], list[CompactionReport]]:
    """A Lake class whose ``method`` (``events``, ``message_timelines`` ...) runs a real
    compaction right after planning, on the calls numbered in ``calls`` (1 = its first call
    on any object of the class), and the list of those compactions' reports, in order.

    Each compaction first writes a copy of ``late_copy`` received an hour later (a copy
    the readers and compaction drop: the first received wins), so that it rewrites that
    partition, and deletes the files planned, even when they are compacted files already.
    A compaction that deleted nothing fails the test: the race would not be one. ``env``:
    the S3 environment the compacting Lake is opened with, for a lake on S3.
    """
    ran: list[CompactionReport] = []
    numbered = [0]

    class CompactedMeanwhile(ke.Lake):
        pass

    def planned_then_compacted(self: ke.Lake, *args: Any, **kwargs: Any) -> Any:
        frame = getattr(super(CompactedMeanwhile, self), method)(*args, **kwargs)
        numbered[0] += 1
        if numbered[0] in calls:
            ran.append(compact_with_late_copy(self.location, late_copy, env))
        return frame

    setattr(CompactedMeanwhile, method, planned_then_compacted)
    return CompactedMeanwhile, ran


def compacted_between_head_and_get(
    location: str, env: Mapping[str, str], calls: Container[int], late_copy: EventRecord
) -> tuple[pafs.FileSystem, list[CompactionReport]]:
    """A filesystem over the S3 lake at ``location`` (give it to ``ke.Lake(location,
    filesystem=...)``) that opens a Parquet object (pyarrow's HEAD: it exists) and then,
    for the objects numbered in ``calls`` (1 = the first opened), runs
    :func:`compact_with_late_copy`, which deletes it, before pyarrow reads its bytes (GET);
    and the reports of those compactions. Every call goes to pyarrow's own S3 filesystem.

    Objects are numbered once, not at each opening: a query may open one object twice at
    once (Polars scans a frame used twice in a plan twice), and the second opening waits
    for the compaction the first one runs, then fails its GET alike."""
    real = open_storage(location, env=env).fs
    ran: list[CompactionReport] = []
    numbered: dict[str, int] = {}
    one_at_a_time = threading.Lock()

    class CompactedAfterHead(_Delegating):
        def open_input_file(self, path: str) -> Any:
            opened = real.open_input_file(path)
            if path.endswith(".parquet"):
                with one_at_a_time:
                    if path not in numbered:
                        numbered[path] = len(numbered) + 1
                        if numbered[path] in calls:
                            ran.append(compact_with_late_copy(location, late_copy, env))
            return opened

    return pafs.PyFileSystem(CompactedAfterHead(real)), ran


class _Delegating(pafs.FileSystemHandler):
    """A pyarrow filesystem handler passing every call to ``real``."""

    def __init__(self, real: pafs.FileSystem) -> None:
        self.real = real

    def get_type_name(self) -> str:
        return "delegating-" + self.real.type_name

    def normalize_path(self, path: str) -> str:
        return str(self.real.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> Any:
        return self.real.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> Any:
        return self.real.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.real.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.real.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.real.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError("not a lake's to do")

    def delete_file(self, path: str) -> None:
        self.real.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.real.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.real.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.real.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.real.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.real.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.real.open_append_stream(path, metadata=metadata)
