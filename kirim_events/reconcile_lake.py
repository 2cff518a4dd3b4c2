"""The lake's side of reconcile: what it holds, whether the journal flushes there, what it lost."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

from kirim_events.errors import ConfigError
from kirim_events.journal_index import KeyIndex, lake_identity
from kirim_events.lake.reader import reread
from kirim_events.printable import printable
from kirim_events.reconcile_report import ReconcileReport
from kirim_events.reconcile_scan import HASH_SEED, Lost, Scan, hashes

__all__ = ["check_lake", "in_lake", "lost_from_lake"]


def in_lake(lake: Any, keys: list[str], ids: list[str]) -> tuple[set[str], set[str]]:
    """Which of ``keys`` (event keys) and ``ids`` (event ids) the lake holds."""
    if not keys and not ids:
        return set(), set()
    storage = getattr(lake, "storage", None)
    if storage is not None and storage.local and not os.path.isdir(storage.root):
        return set(), set()  # a data folder not made yet (a dry run makes none) holds nothing
    frame = reread(  # planned again if a compaction deletes its files meanwhile
        lambda: (
            lake.events()
            .select("event_key", "event_id")
            .filter(pl.col("event_key").is_in(keys) | pl.col("event_id").is_in(ids))
            .collect()
        ),
        storage=storage,
    )
    return set(frame["event_key"].to_list()), set(frame["event_id"].to_list())


def check_lake(
    index: KeyIndex | None, lake: Any, root: Path, report: ReconcileReport
) -> bool | None:
    """Whether the journal flushes into ``lake``: True, False, or None when unknown (no
    record, or no Lake). False is a ConfigError unless on a dry run (a note then): events
    imported would land in the wrong lake."""
    target = None if index is None else index.flush_target()
    ours = lake_identity(lake, root)
    if target is None or ours is None:
        return None
    if target == ours:
        return True
    kind, _, where = target.partition(":")
    shown = {"file": where, "s3": f"s3://{where}"}.get(kind, "the data folder")
    message = (
        f"the journal flushes into the lake at {printable(shown)}, not the one reconciled:"
        " pass that one (--lake), or what reconcile imports would land in another lake"
    )
    if not report.dry_run:
        raise ConfigError(message)
    report.notes.append(message)
    return False


def lost_from_lake(
    lake: Any, scan: Scan, index: KeyIndex | None, report: ReconcileReport, ours: bool | None
) -> Lost | None:
    """The hashes of the keys and ids that the dedup index holds and neither the journal's
    inbox nor the lake does (files deleted or lost after the events were stored), or None
    when there are none (or, for a journal that never recorded its lake, when most of the
    range is missing: a lake mix-up more likely than a loss; a note says so).

    The inbox is read before the lake: a flush moves an event from the one to the other
    only after the lake holds it, so an event is found in one of the two whenever the flush
    runs. Only the lake rows whose hash the walk kept are collected. ``ours`` says whether
    the journal flushes into ``lake`` (:func:`check_lake`; None: unknown).
    """
    if index is None or (not scan.indexed_keys and not scan.indexed_ids):
        return None
    waiting = hashes(sorted(index.inbox_keys()))
    wanted_keys = pl.concat([hashes([]), *scan.indexed_keys]).unique()
    wanted_ids = pl.concat([hashes([]), *scan.indexed_ids]).unique()
    storage = getattr(lake, "storage", None)
    if storage is not None and storage.local and not os.path.isdir(storage.root):
        held_keys = held_ids = pl.Series([], dtype=pl.UInt64)  # no lake yet: it holds none
    else:
        held = reread(  # planned again if a compaction deletes its files meanwhile
            lambda: (
                lake.events()
                .select(
                    k=pl.col("event_key").hash(seed=HASH_SEED),
                    i=pl.col("event_id").hash(seed=HASH_SEED),
                    has_id=pl.col("event_id").is_not_null(),
                )
                .filter(
                    pl.col("k").is_in(wanted_keys.implode())
                    | (pl.col("has_id") & pl.col("i").is_in(wanted_ids.implode()))
                )
                .collect()
            ),
            storage=storage,
        )
        held_keys, held_ids = held["k"], held.filter("has_id")["i"]
    lost_keys = wanted_keys.filter(~wanted_keys.is_in(pl.concat([held_keys, waiting]).implode()))
    lost_ids = wanted_ids.filter(~wanted_ids.is_in(pl.concat([held_ids, waiting]).implode()))
    n_lost, n_wanted = len(lost_keys) + len(lost_ids), len(wanted_keys) + len(wanted_ids)
    if ours is None and n_lost > 100 and 2 * n_lost > n_wanted:
        # a journal that never said where it flushes (older ones) may flush elsewhere
        report.notes.append(
            f"the lake lacks {n_lost} of the {n_wanted} events the journal's dedup index"
            " remembers in this range: if the journal flushes into another lake, pass it with"
            " --lake; they were not taken for lost"
        )
        return None
    if not n_lost:
        return None
    return Lost(set(lost_keys.to_list()), set(lost_ids.to_list()))
