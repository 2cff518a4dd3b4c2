"""Random small event sets: the Polars helpers and the DuckDB views give the same rows.

The emulator's runs (test_analytics_emulator) are realistic; these are odd on purpose: exact
ties of event and receipt times, several events of one status, failures before and after
delivery, unassignments, closes at one instant, copies received later, a lake compacted or
not, and ``as_of`` at an event's very instant.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_analytics_support import VIEWS, at, by_key, conversation, in_utc, status

from kirim_events.events import EventRecord
from kirim_events.lake import Lake

TIMES = (0, 0, 1, 2, 60, 61, 3600)  # few values: ties are common
STATUSES = ("sent", "delivered", "read", "failed", "pending")
USERS = (None, "usr_a", "usr_b")


def _events(rng: random.Random) -> list[EventRecord]:
    records = []
    for n in range(rng.randint(1, 12)):
        occurred, lag = rng.choice(TIMES), rng.choice((0, 0, 5, -1, 90))
        cnv = rng.choice(("cnv_1", "cnv_2", None))
        if rng.random() < 0.6:
            value = rng.choice(STATUSES)
            error = (rng.choice((131047, 1006)), f"title {n}") if value == "failed" else None
            record = status(
                f"wamid.{rng.randint(1, 3)}", value, occurred, occurred + lag,
                error=error, conversation_id=cnv,
            )  # fmt: skip
            if rng.random() < 0.2:  # a second event of one status: another key
                record = dataclasses.replace(record, event_key=f"{record.event_key}#{n}")
        else:
            kind = rng.choice(("assigned", "assigned", "closed"))
            record = conversation(
                f"evt_{n}", kind, cnv or "cnv_1", occurred, occurred + lag,
                user=rng.choice(USERS), previous=rng.choice(USERS), closed_by=rng.choice(USERS),
            )  # fmt: skip
        records.append(record)
    return records


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), compact=st.booleans())
def test_polars_and_duckdb_agree_on_odd_event_sets(
    tmp_path_factory: pytest.TempPathFactory, seed: int, compact: bool
) -> None:
    rng = random.Random(seed)
    records = _events(rng)
    copies = [  # a later copy of some events (a retry): the first received is kept
        dataclasses.replace(r, received_at=at(rng.choice(TIMES) + 7200), attempt=2)
        for r in records
        if rng.random() < 0.3
    ]
    lake = Lake(Path(tmp_path_factory.mktemp("lake")))
    lake.write_events(records)
    if copies:
        lake.write_events(copies)
    if compact:
        lake.compact()
    instant = at(rng.choice(TIMES))
    for view in VIEWS:
        for reader in (lake, lake.as_of(instant)):
            polars_rows = by_key(getattr(reader, view)().collect(), view)
            duck_rows = by_key(in_utc(reader.sql(f"select * from {view}").pl()), view)
            assert_frame_equal(polars_rows, duck_rows)
