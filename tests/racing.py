"""A compaction that finishes between a read's planning and its reading, made to happen
exactly there: :func:`compacted_meanwhile` gives a Lake class one of whose read methods,
once it has planned its frame, lets a real compaction of the same lake (through another
Lake object, as another process would run it) delete the files it planned, before the
caller reads them. Nothing about the read is faked: the frame is the Lake's own, and the
files are gone from the disk when it is read."""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from datetime import timedelta
from typing import Any

import kirim_events as ke
from kirim_events.events import EventRecord
from kirim_events.lake.compact import CompactionReport


def compacted_meanwhile(
    method: str, calls: Container[int], late_copy: EventRecord
) -> tuple[type[ke.Lake], list[CompactionReport]]:
    """A Lake class whose ``method`` (``events``, ``message_timelines`` ...) runs a real
    compaction right after planning, on the calls numbered in ``calls`` (1 = its first call
    on any object of the class), and the list of those compactions' reports, in order.

    Each compaction first writes a copy of ``late_copy`` received an hour later (a copy
    the readers and compaction drop: the first received wins), so that it rewrites that
    partition, and deletes the files planned, even when they are compacted files already.
    A compaction that deleted nothing fails the test: the race would not be one.
    """
    ran: list[CompactionReport] = []
    numbered = [0]

    class CompactedMeanwhile(ke.Lake):
        pass

    def planned_then_compacted(self: ke.Lake, *args: Any, **kwargs: Any) -> Any:
        frame = getattr(super(CompactedMeanwhile, self), method)(*args, **kwargs)
        numbered[0] += 1
        if numbered[0] in calls:
            other = ke.Lake(self.location)  # another process's Lake, in effect
            later = late_copy.received_at + timedelta(hours=1)
            other.write_events([dataclasses.replace(late_copy, received_at=later)])
            report = other.compact()
            assert report.files_deleted, "the compaction deleted no file: no race"
            ran.append(report)
        return frame

    setattr(CompactedMeanwhile, method, planned_then_compacted)
    return CompactedMeanwhile, ran
