"""The helpers against a plain-Python reading of their documented rules, in both engines.

test_analytics_random checks that Polars and DuckDB agree; a rule changed in both (the tie
order, the cycle of an event at a close's instant, what counts as a missing assignment)
would pass it. Here each helper's rows are rebuilt from the rules of docs/analytics.md and
the module docstrings, one event at a time, on small odd event sets: ties to the
microsecond, statuses before ``sent``, several events of one status, unknown statuses,
unassignments, closes without an opening or at one instant, and ``as_of`` at and beside
event times.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from test_analytics_support import T0, duck, from_duck

from kirim_events.analytics import conversations, health, timelines
from kirim_events.schema import EVENT_SCHEMA, deliveries_table

Row = dict[str, Any]
RANK = {"pending": 0, "sent": 1, "failed": 2, "delivered": 3, "read": 4}
STATUS_OF = {rank: name for name, rank in RANK.items()}
LABELS = {
    "131047": "outside_24h_window",
    "1006": "recipient_not_on_whatsapp",
    "outside_24h_window": "outside_24h_window",
}  # the codes drawn below
OPENING = {"message.received", "message.sent", "message.created", "message.status"}
US = timedelta(microseconds=1)


def t(seconds: float) -> datetime:
    return T0 + timedelta(microseconds=round(seconds * 1_000_000))


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return ((later - earlier) // US) / 1_000_000


def _least(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _dups(event: Row, copies: dict[str, int] | None) -> int | None:
    return None if copies is None else copies.get(event["event_key"], 1) - 1


def _total(events: list[Row], copies: dict[str, int] | None) -> int | None:
    return None if copies is None else sum(_dups(e, copies) or 0 for e in events)


# ---------------------------------------------------------------- the reference


def _messages(events: list[Row], as_of: datetime | None) -> dict[str, list[Row]]:
    """Status events per message, in event-time order (docs: ties by arrival, then the
    lower status, then the key)."""
    by: dict[str, list[Row]] = defaultdict(list)
    for e in events:
        if (
            e["type"] == "message.status"
            and e["message_id"] is not None
            and e["status"] in RANK
            and (as_of is None or e["occurred_at"] <= as_of)
        ):
            by[e["message_id"]].append(e)
    for rows in by.values():
        rows.sort(
            key=lambda e: (e["occurred_at"], e["received_at"], RANK[e["status"]], e["event_key"])
        )
    return by


def ref_timelines(
    events: list[Row], copies: dict[str, int] | None, as_of: datetime | None
) -> dict[Any, Row]:
    out = {}
    for message, rows in _messages(events, as_of).items():
        first = {s: _least([e["occurred_at"] for e in rows if e["status"] == s]) for s in RANK}
        failures = [e for e in rows if e["status"] == "failed"]
        code = failures[0]["error_code"] if failures else None
        arrived = first["delivered"] is not None or first["read"] is not None
        out[message] = {
            "phone_number_id": _least([e["phone_number_id"] for e in rows]),
            "recipient_id": _least([e["recipient_id"] for e in rows]),
            "conversation_id": _least([e["conversation_id"] for e in rows]),
            "sent_at": first["sent"],
            "delivered_at": first["delivered"],
            "read_at": first["read"],
            "failed_at": first["failed"],
            "status": STATUS_OF[max(RANK[e["status"]] for e in rows)],
            "error_code": code,
            "error_title": failures[0]["error_title"] if failures else None,
            "error_label": None if code is None else LABELS.get(code, "other"),
            "n_events": len(rows),
            "n_duplicates": _total(rows, copies),
            "out_of_order": any(
                a["received_at"] > b["received_at"]
                for i, a in enumerate(rows)
                for b in rows[i + 1 :]
            ),
            "read_without_delivered": first["read"] is not None and first["delivered"] is None,
            "failed_after_delivered": first["failed"] is not None and arrived,
            "never_sent": first["sent"] is None,
            "reached_sent": first["sent"] is not None or arrived,
            "reached_delivered": arrived,
            "time_to_deliver": _seconds(first["delivered"], first["sent"]),
            "time_to_read": _seconds(first["read"], first["sent"]),
            "first_received_at": min(e["received_at"] for e in rows),
            "last_received_at": max(e["received_at"] for e in rows),
        }
    return out


def ref_history(
    events: list[Row], copies: dict[str, int] | None, as_of: datetime | None
) -> dict[Any, Row]:
    out = {}
    for message, rows in _messages(events, as_of).items():
        best: int | None = None
        for seq, e in enumerate(rows, 1):
            before, rank = best, RANK[e["status"]]
            best = rank if best is None else max(best, rank)
            out[(message, seq)] = {
                "event_key": e["event_key"],
                "status": e["status"],
                "occurred_at": e["occurred_at"],
                "received_at": e["received_at"],
                "previous_status": None if before is None else STATUS_OF[before],
                "current_status": STATUS_OF[best],
                "is_upgrade": before is None or rank > before,
                "arrived_late": any(e["received_at"] > f["received_at"] for f in rows[seq:]),
                "error_code": e["error_code"],
                "n_duplicates": _dups(e, copies),
            }
    return out


def _chains(assigns: list[Row], rounds: int = 4) -> dict[str, int]:
    """Each assignment's place in the chain of its instant (docs: assignments at one instant
    are ordered along their chain): 0 when its ``previous_user_id`` is the user of no other
    assignment at that instant, else 1 + the largest place of those, ``rounds`` times over."""
    chain = dict.fromkeys((e["event_key"] for e in assigns), 0)
    for _ in range(rounds):
        chain = {
            y["event_key"]: max(
                (
                    chain[x["event_key"]] + 1
                    for x in assigns
                    if x["occurred_at"] == y["occurred_at"]
                    and x["event_key"] != y["event_key"]
                    and x["user_id"] is not None
                    and x["user_id"] == y["previous_user_id"]
                ),
                default=0,
            )
            for y in assigns
        }
    return chain


def _conversations(events: list[Row], as_of: datetime | None) -> dict[str, list[Row]]:
    """Events per conversation in event-time order (assignments at one instant along
    their chain), each with ``_cycle`` (1 + close instants
    strictly before it) and, for assignments, ``_missing`` (its previous user is not the
    assignee before it, across closes) and ``_first`` (the conversation's first one)."""
    by: dict[str, list[Row]] = defaultdict(list)
    for e in events:
        if e["conversation_id"] is not None and (as_of is None or e["occurred_at"] <= as_of):
            by[e["conversation_id"]].append(dict(e))
    for rows in by.values():
        chain = _chains([e for e in rows if e["type"] == "conversation.assigned"])
        rows.sort(
            key=lambda e: (
                e["occurred_at"],
                chain.get(e["event_key"], 0),
                e["received_at"],
                e["event_key"],
            )
        )
        closes = {e["occurred_at"] for e in rows if e["type"] == "conversation.closed"}
        assignee, seen = None, False
        for e in rows:
            e["_cycle"] = 1 + sum(1 for c in closes if c < e["occurred_at"])
            if e["type"] == "conversation.assigned":
                e["_missing"], e["_first"] = e["previous_user_id"] != assignee, not seen
                assignee, seen = e["user_id"], True
    return by


def _summary(rows: list[Row], copies: dict[str, int] | None) -> Row:
    """What a lifecycle and a cycle count alike over their events."""
    assigns = [e for e in rows if e["type"] == "conversation.assigned"]
    closes = [e for e in rows if e["type"] == "conversation.closed"]
    opened = rows[0]["occurred_at"]
    return {
        "opened_at": opened,
        "n_assignments": sum(1 for e in assigns if e["user_id"] is not None),
        "n_assignees": len({e["user_id"] for e in assigns} - {None}),
        "assignee_id": assigns[-1]["user_id"] if assigns else None,
        "n_closes": len(closes),
        "closed_at": closes[-1]["occurred_at"] if closes else None,  # the last in time
        "closed_by_user_id": closes[-1]["closed_by_user_id"] if closes else None,
        "missing_opening": not any(
            e["type"] in OPENING and e["occurred_at"] == opened for e in rows
        ),
        "n_missing_assignments": sum(1 for e in assigns if e["_missing"]),
        "n_events": len(rows),
        "n_duplicates": _total(rows, copies),
        "last_event_at": rows[-1]["occurred_at"],
    }


def ref_lifecycles(
    events: list[Row], copies: dict[str, int] | None, as_of: datetime | None
) -> dict[Any, Row]:
    out = {}
    for conversation, rows in _conversations(events, as_of).items():
        row = _summary(rows, copies)
        assigns = [e for e in rows if e["type"] == "conversation.assigned"]
        missing_first = bool(assigns) and assigns[0]["_missing"]
        roots = [
            e["occurred_at"]
            for e in assigns
            if e["user_id"] is not None and e["previous_user_id"] is None
        ]
        first = None if missing_first else _least(roots)
        n_cycles = rows[-1]["_cycle"]
        is_open = row["closed_at"] is None or row["last_event_at"] > row["closed_at"]
        unseen = row["missing_opening"]
        out[conversation] = row | {
            "first_assigned_at": first,
            "n_reopens": n_cycles - 1,
            "n_cycles": n_cycles,
            "is_open": is_open,
            "time_to_first_assignment": None if unseen else _seconds(first, row["opened_at"]),
            "time_to_close": None
            if unseen or is_open
            else _seconds(row["closed_at"], row["opened_at"]),
            "missing_first_assignment": missing_first,
        }
    return out


def ref_cycles(
    events: list[Row], copies: dict[str, int] | None, as_of: datetime | None
) -> dict[Any, Row]:
    out = {}
    for conversation, rows in _conversations(events, as_of).items():
        for cycle in sorted({e["_cycle"] for e in rows}):
            these = [e for e in rows if e["_cycle"] == cycle]
            row = _summary(these, copies)
            assigns = [e for e in these if e["type"] == "conversation.assigned"]
            missing_first = bool(assigns) and assigns[0]["_first"] and assigns[0]["_missing"]
            first = _least([e["occurred_at"] for e in assigns if e["user_id"] is not None])
            first = None if missing_first else first
            unseen = row["missing_opening"]
            out[(conversation, cycle)] = row | {
                "first_assigned_at": first,
                "is_open": row["n_closes"] == 0,
                "is_reopen": cycle > 1,
                "missing_first_assignment": missing_first,
                "time_to_first_assignment": None if unseen else _seconds(first, row["opened_at"]),
                "time_to_close": None if unseen else _seconds(row["closed_at"], row["opened_at"]),
            }
    return out


# ---------------------------------------------------------------- odd event sets

TIMES = (0, 0, 0, 0.000001, 1, 1, 2, 60, -5)  # few values, one a microsecond apart: ties
LAGS = (0, 0, 0.000001, 5, -1, 90)
USERS = (None, None, "usr_a", "usr_b", "usr_c")
KINDS = (
    *("message.status",) * 4,
    *("conversation.assigned",) * 2,
    "conversation.closed",
    "conversation.closed",
    "message.received",
    "contact.updated",
)


def _events(rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    for n in range(rng.randint(1, 24)):
        occurred = t(rng.choice(TIMES))
        row: Row = dict.fromkeys(EVENT_SCHEMA.names)
        row.update(
            event_key=f"{rng.choice('AaBk_')}{n}",  # unique; their order breaks the last ties
            type=rng.choice(KINDS),
            occurred_at=occurred,
            received_at=occurred + timedelta(seconds=rng.choice(LAGS)),
            origin="webhook",
            conversation_id=rng.choice(("cnv_1", "cnv_2", None)),
        )
        if row["type"] == "message.status":
            row.update(
                message_id=rng.choice(("wamid.1", "wamid.2", "wamid.3", None)),
                status=rng.choice((*RANK, "sent", "deleted")),
                phone_number_id=rng.choice(("106540352242922", "100000000000000", None)),
                recipient_id=rng.choice(("628111111111", "628222222222")),
                error_code=rng.choice(("131047", "1006", "999", "outside_24h_window", None)),
                error_title=rng.choice(("title a", "title b", None)),
            )
        elif row["type"] == "conversation.assigned":
            row.update(user_id=rng.choice(USERS), previous_user_id=rng.choice(USERS))
        elif row["type"] == "conversation.closed":
            row.update(closed_by_user_id=rng.choice(USERS))
        rows.append(row)
    return rows


HELPERS: dict[
    str, tuple[Callable[..., pl.LazyFrame], Callable[..., dict[Any, Row]], tuple[str, ...]]
] = {
    "message_timelines": (timelines.message_timelines, ref_timelines, ("message_id",)),
    "message_status_history": (
        timelines.message_status_history,
        ref_history,
        ("message_id", "seq"),
    ),
    "conversation_lifecycles": (
        conversations.conversation_lifecycles,
        ref_lifecycles,
        ("conversation_id",),
    ),
    "conversation_cycles": (
        conversations.conversation_cycles,
        ref_cycles,
        ("conversation_id", "cycle"),
    ),
}


def _keyed(frame: pl.DataFrame, keys: tuple[str, ...]) -> dict[Any, Row]:
    rows = {}
    for row in frame.to_dicts():
        key = tuple(row.pop(k) for k in keys)
        rows[key[0] if len(key) == 1 else key] = row
    assert len(rows) == frame.height
    return rows


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_helper_follows_its_documented_rules_in_both_engines(seed: int) -> None:
    rng = random.Random(seed)
    rows = _events(rng)
    events = pl.from_arrow(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)).lazy()
    copies = None
    copies_frame = None
    if rng.random() < 0.7:
        copies = {r["event_key"]: rng.choice((2, 3)) for r in rows if rng.random() < 0.3}
        copies_frame = pl.LazyFrame(
            {"event_key": list(copies), "n_copies": list(copies.values())},
            schema={"event_key": pl.String, "n_copies": pl.Int64},
        )
    instant = rng.choice((None, t(0), t(0) - US, t(0.000001), t(1), t(60) + US, t(-6)))
    con = duck(events, copies_frame, as_of=instant)
    for view, (helper, reference, keys) in HELPERS.items():
        expected = reference(rows, copies, instant)
        polars_rows = helper(events, copies=copies_frame, as_of=instant).collect()
        for engine, got in (("polars", polars_rows), ("duckdb", from_duck(con, view))):
            assert _keyed(got, keys) == expected, (view, engine)


def _crowded_assignments(rng: random.Random) -> list[Row]:
    """Mostly assignments of two conversations at three instants, arriving in any order:
    chains, loops and unassignments at one instant are common (Kirim's whole seconds)."""
    rows: list[Row] = []
    for n in range(rng.randint(2, 10)):
        occurred = t(rng.choice((0, 0, 0, 1, 1, 2)))
        row: Row = dict.fromkeys(EVENT_SCHEMA.names)
        row.update(
            event_key=f"{rng.choice('abc')}{n}",
            type=rng.choice(
                ("conversation.assigned",) * 4 + ("conversation.closed", "message.received")
            ),
            occurred_at=occurred,
            received_at=occurred + timedelta(seconds=rng.choice((0, 1, 5, 9))),
            origin="webhook",
            conversation_id=rng.choice(("cnv_1", "cnv_2")),
            user_id=rng.choice(USERS),
            previous_user_id=rng.choice(USERS),
        )
        rows.append(row)
    return rows


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_assignments_at_one_instant_follow_their_chain_in_both_engines(seed: int) -> None:
    rows = _crowded_assignments(random.Random(seed))
    events = pl.from_arrow(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)).lazy()
    con = duck(events, None)
    for view in ("conversation_lifecycles", "conversation_cycles"):
        helper, reference, keys = HELPERS[view]
        expected = reference(rows, None, None)
        for engine, got in (("polars", helper(events).collect()), ("duckdb", from_duck(con, view))):
            assert _keyed(got, keys) == expected, (view, engine)


def ref_health(events: list[Row], receipts: list[Row], as_of: datetime | None) -> dict[Any, Row]:
    out: dict[Any, Row] = defaultdict(dict)
    by: dict[Any, list[Row]] = defaultdict(list)
    for r in receipts:
        if r["origin"] == "webhook" and (as_of is None or r["received_at"] <= as_of):
            by[(r["received_at"].date(), r["event_type"])].append(r)
    for key, rs in by.items():
        attempts = [max(r["attempt"] or 1, 1) for r in rs]
        out[key] |= {
            "deliveries": len(rs),
            **{f"n_attempt_{n}": attempts.count(n) for n in range(1, 8)},
            "n_attempt_8": sum(1 for a in attempts if a >= 8),
            "retry_rate": sum(1 for a in attempts if a > 1) / len(rs),
            "max_attempt": max(attempts),
            **{k: sum(1 for r in rs if r["outcome"] == o) for k, o in _OUTCOMES.items()},
        }
    seen: dict[Any, list[int]] = defaultdict(list)
    for e in events:
        happened = as_of is None or max(e["occurred_at"], e["received_at"]) <= as_of
        if e["origin"] == "webhook" and happened:
            key = (e["received_at"].date(), e["type"])
            seen[key].append((e["received_at"] - e["occurred_at"]) // US)
    for key, late in seen.items():
        late.sort()
        out[key] |= {
            "n_events": len(late),
            "lateness_p50": _quantile(late, 0.5),
            "lateness_p90": _quantile(late, 0.9),
            "lateness_max": late[-1] / 1e6,
        }
    return out


_OUTCOMES = {"duplicates": "duplicate", "rejected": "rejected", "quarantined": "quarantined"}


def _quantile(ordered: list[int], q: float) -> float:
    at = (len(ordered) - 1) * q
    low = ordered[int(at)]
    high = ordered[min(int(at) + 1, len(ordered) - 1)]
    return (low + (high - low) * (at - int(at))) / 1e6


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_delivery_health_follows_its_documented_rules_in_both_engines(seed: int) -> None:
    rng = random.Random(seed)
    times = (-90000, -1, 0, 0.5, 59.999999, 60, 3600)  # T0 is 10:00: one day before
    events: list[Row] = []
    for n in range(rng.randint(0, 12)):
        occurred = t(rng.choice(times))
        row: Row = dict.fromkeys(EVENT_SCHEMA.names)
        row.update(
            event_key=f"k{n}",
            type=rng.choice(("message.status", "conversation.closed")),
            occurred_at=occurred,
            received_at=occurred + timedelta(seconds=rng.choice((0, 0.000001, 30, 86400, -2))),
            origin=rng.choice(("webhook", "webhook", "backfill")),
        )
        events.append(row)
    receipts = [
        {
            "delivery_id": f"d{n}",
            "attempt": rng.choice((None, 0, 1, 1, 2, 7, 8, 12)),
            "event_type": rng.choice(("message.status", "conversation.closed", None)),
            "origin": rng.choice(("webhook", "webhook", "backfill")),
            "outcome": rng.choice(("new", "duplicate", "rejected", "quarantined")),
            "received_at": t(rng.choice(times)),
        }
        for n in range(rng.randint(0, 12))
    ]
    instant = rng.choice((None, t(0), t(60) - US, t(60), t(-90001)))
    frame = pl.from_arrow(pa.Table.from_pylist(events, schema=EVENT_SCHEMA)).lazy()
    polars_rows = health.delivery_health(
        frame, pl.from_arrow(deliveries_table(receipts)).lazy(), as_of=instant
    ).collect()
    duck_rows = from_duck(duck(frame, None, receipts, as_of=instant), "delivery_health")
    expected = ref_health(events, receipts, instant)
    for got in (polars_rows, duck_rows):
        rows = _keyed(got, ("day", "event_type"))
        assert rows.keys() == expected.keys()
        for key, row in rows.items():
            for column, value in row.items():
                want = expected[key].get(column)
                if isinstance(want, float):  # quantiles: the same formula, not the same steps
                    assert abs(value - want) <= 1e-9 * max(1.0, abs(want)), (key, column)
                else:
                    assert value == want, (key, column)
