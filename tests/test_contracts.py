"""design.md's contracts, each spelled out here as design.md states it: the CLI's command and
option names, the lake's layout and columns as plain readers see them, the library's names
and the analytics helpers' columns. Other tests check behaviour; these fail when a name,
a path or a column that outside checks rely on drifts (design.md is the one to change first).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main

import kirim_events as ke
from kirim_events import testing
from kirim_events.cli import app
from kirim_events.events_record import ORIGINS
from kirim_events.journal import Journal
from kirim_events.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_contracts"
NOW = datetime(2026, 5, 23, 10, 0, tzinfo=UTC)  # arrival: weeks after the events happened

# --- CLI ------------------------------------------------------------------------------------

# design.md "CLI (names and the options below are fixed)": command -> the options it names
DESIGN_COMMANDS: dict[str, set[str]] = {
    "collect": {"--data", "--host", "--port", "--path"},
    "backfill": {"--data", "--since", "--until"},
    "reconcile": {"--data", "--since"},
    "compact": {"--data"},
    "replay": {"--data", "--to", "--dry-run"},
    "export": {"--data", "--to"},
    "emulate": {"--port", "--send-to", "--events", "--seed", "--rate"},
    "demo": {"--data"},
    "report": {"--data", "--html"},  # "optional HTML"
    "subscribe": {"--url"},
    "subscriptions": set(),
    "secrets rotate": set(),
    "secrets status": set(),
    "secrets retire": set(),
    "deliveries": set(),
}
# README "Limitations and what is not built yet" names these; each xfail is strict, so the
# day one is built this test says to take it off the list (and check its options).
NOT_BUILT = {"replay", "export", "subscribe", "subscriptions", "secrets rotate",
             "secrets status", "secrets retire"}  # fmt: skip


def _commands(group: Any = None, prefix: str = "") -> dict[str, Any]:
    group = typer.main.get_command(app) if group is None else group
    found: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        found[f"{prefix}{name}"] = cmd
        if hasattr(cmd, "commands"):
            found.update(_commands(cmd, prefix=f"{prefix}{name} "))
    return found


def _options(cmd: Any) -> dict[str, Any]:
    return {o: p for p in cmd.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]}


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            name, marks=pytest.mark.xfail(name in NOT_BUILT, reason="not built yet", strict=True)
        )
        for name in DESIGN_COMMANDS
    ],
)
def test_each_design_command_exists_with_its_options(command: str) -> None:
    commands = _commands()
    assert command in commands
    assert DESIGN_COMMANDS[command] <= set(_options(commands[command]))


def test_the_program_is_called_kirim_events() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kirim-events"] == "kirim_events.cli:main"


def test_collect_binds_loopback_on_the_design_path_by_default() -> None:
    options = _options(_commands()["collect"])
    assert options["--host"].default == "127.0.0.1"
    assert options["--path"].default == "/webhooks/kirim"
    library = inspect.signature(ke.collect).parameters  # the function the command calls
    assert (library["host"].default, library["path"].default) == ("127.0.0.1", "/webhooks/kirim")


def test_no_command_takes_a_secret_as_an_option() -> None:
    # design.md: secrets are never accepted as plain command-line values (ps, shell history)
    offending = [
        f"{name} {opt}"
        for name, cmd in _commands().items()
        for opt, param in _options(cmd).items()
        if re.search(r"secret|key|token|password", opt)
        or {"KIRIM_WEBHOOK_SECRET", "KIRIM_KEY"} & set(_as_list(getattr(param, "envvar", None)))
    ]
    assert offending == []
    assert "--port" in _options(_commands()["collect"])  # the walk sees options


def _as_list(value: Any) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def test_the_environment_variables_and_their_defaults() -> None:
    s = ke.Settings.load({})
    assert (s.api_url, s.data_dir) == ("https://api.kirim.chat", Path("./data"))
    s = ke.Settings.load(
        {
            "KIRIM_WEBHOOK_SECRET": "whsec_new,whsec_old",
            "KIRIM_KEY": "kdv_live_x",
            "KIRIM_API_URL": "https://kirim.example",
            "KIRIM_DATA_DIR": "/srv/lake",
        }
    )
    assert [x.reveal() for x in s.webhook_secrets] == ["whsec_new", "whsec_old"]
    assert s.api_key == ke.Secret("kdv_live_x")
    assert (s.api_url, s.data_dir) == ("https://kirim.example", Path("/srv/lake"))


# --- Library --------------------------------------------------------------------------------


def test_the_library_names_outside_checks_use() -> None:
    lake_methods = ("events", "message_timelines", "conversation_lifecycles", "sql", "as_of")
    assert all(callable(getattr(ke.Lake, m)) for m in lake_methods)
    assert "type" in inspect.signature(ke.Lake.events).parameters
    assert inspect.signature(ke.Lake.events).parameters["type"].default is None

    def shape(fn: Any) -> list[tuple[str, Any]]:
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    empty = inspect.Parameter.empty
    assert shape(ke.sign) == [("body", empty), ("secrets", empty), ("timestamp", None)]
    assert shape(ke.verify) == [
        ("body", empty),
        ("header", empty),
        ("secrets", empty),
        ("tolerance", 300),
        ("now", None),
    ]
    body = b'{"id":"evt_1"}'
    assert ke.verify(body, ke.sign(body, SECRET, timestamp=1_000), SECRET, now=1_010) == 1_000


# --- Lake layout ----------------------------------------------------------------------------

DESIGN_EVENT_COLUMNS = {
    "event_key", "event_id", "type", "occurred_at", "received_at", "origin", "delivery_id",
    "attempt", "source_format", "phone_number_id", "message_id", "conversation_id",
    "contact_id", "status", "error_code", "ingest_seq", "payload",
}  # fmt: skip
LAYOUT = [
    re.compile(r"events/type=[a-z0-9_.]+/date=\d{4}-\d{2}-\d{2}/[^/]+\.parquet"),
    re.compile(r"deliveries/date=\d{4}-\d{2}-\d{2}/[^/]+\.parquet"),
    re.compile(r"quarantine/.+"),
    re.compile(r"(_journal|_state)/.+"),
    re.compile(r"_tmp"),  # the writers' staging folder (empty after each write): not a table
]
# 2026-05-01 21:30 at UTC-05:00 is 2026-05-02 in UTC (still 2026-05-01 in New York): the
# partition is the UTC date of the event's own time, not of its arrival (NOW)
LATE_NIGHT = "2026-05-01T21:30:00.000-05:00"
WAMID = "wamid.HBgMNjI4MTExMTExMTExFQIAERgSQ09OVFJBQ1RTAA=="


def _bodies() -> list[testing.SignedRequest]:
    at = int(datetime(2026, 5, 1, 9, tzinfo=UTC).timestamp())
    contact = testing.kirim_event("contact.updated", event_id="evt_contact")
    contact["created_at"] = LATE_NIGHT
    sign = int(NOW.timestamp())
    return [
        testing.signed_request(contact, SECRET, timestamp=sign),
        testing.signed_request(contact, SECRET, timestamp=sign),  # a retry: one row
        testing.signed_request(testing.meta_status("sent", wamid=WAMID, timestamp=at), SECRET,
                               timestamp=sign),
        testing.signed_request(testing.meta_status("delivered", wamid=WAMID, timestamp=at + 5),
                               SECRET, timestamp=sign),
        testing.signed_request(b'{"signed": "but no known shape"}', SECRET, timestamp=sign),
    ]  # fmt: skip


@pytest.fixture
def webhook_lake(tmp_path: Path) -> Path:
    """A lake written the way `collect` writes one: signed POSTs, the journal, a flush."""
    journal = Journal(tmp_path)
    receiver = Receiver(journal, [SECRET], now=NOW.timestamp)

    async def post_all() -> list[int]:
        transport = httpx.ASGITransport(app=receiver)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            return [
                (
                    await client.post("/webhooks/kirim", content=r.body, headers=r.headers)
                ).status_code
                for r in _bodies()
            ]

    try:
        assert asyncio.run(post_all()) == [200] * 5
        journal.flush(ke.Lake(tmp_path))
    finally:
        journal.close()
    return tmp_path


def test_every_file_is_where_the_layout_says(webhook_lake: Path) -> None:
    paths = [
        p.relative_to(webhook_lake).as_posix()
        for p in webhook_lake.rglob("*")
        if p.is_file() or (p.is_dir() and p.name == "_tmp")
    ]
    assert [p for p in paths if not any(rule.fullmatch(p) for rule in LAYOUT)] == []
    tables = {p.split("/")[0] for p in paths}
    assert {"events", "deliveries", "quarantine", "_journal", "_state"} <= tables
    events = sorted(p for p in paths if p.startswith("events/"))
    assert {p.rsplit("/", 1)[0] for p in events} == {
        "events/type=contact.updated/date=2026-05-02",
        "events/type=message.status/date=2026-05-01",
    }
    assert any(p.startswith("deliveries/date=2026-05-23/") for p in paths)  # receipts: arrival


def test_plain_duckdb_and_polars_see_the_design_columns(webhook_lake: Path) -> None:
    glob = f"{webhook_lake}/events/**/*.parquet"
    plain = duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)")
    assert set(plain.columns) >= DESIGN_EVENT_COLUMNS
    frame = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert set(frame.columns) >= DESIGN_EVENT_COLUMNS | {"date"}
    assert frame.columns.count("type") == frame.columns.count("date") == 1
    assert frame.height == frame["event_key"].n_unique() == 3  # the retry collapsed
    # the two statuses of one message stay two events
    assert sorted(frame.filter(pl.col("message_id") == WAMID)["status"]) == ["delivered", "sent"]
    for column in ("occurred_at", "received_at"):
        assert frame.schema[column] == pl.Datetime("us", "UTC")
    assert set(frame["origin"]) <= set(ORIGINS) == {"webhook", "backfill", "replay", "import"}
    assert set(frame["source_format"]) == {"kirim", "meta"}
    day = frame.filter(pl.col("event_key") == "evt_contact").row(0, named=True)
    assert (day["date"], day["occurred_at"]) == (
        date(2026, 5, 2),
        datetime(2026, 5, 2, 2, 30, tzinfo=UTC),
    )
    contact = frame.filter(pl.col("event_key") == "evt_contact")["payload"][0]
    assert LATE_NIGHT in contact  # the exact raw body
    deliveries = pl.scan_parquet(
        f"{webhook_lake}/deliveries/**/*.parquet", hive_partitioning=True
    ).collect()
    assert deliveries.height == 5  # one row per delivery attempt seen
    assert deliveries.schema["date"] == pl.Date
    glob = f"{webhook_lake}/deliveries/**/*.parquet"
    plain = duckdb.sql(
        f"select count(*), min(date) from read_parquet('{glob}', hive_partitioning=true)"
    )
    assert plain.fetchall() == [(5, date(2026, 5, 23))]


def test_files_hold_utc_microsecond_timestamps_and_no_partition_columns(
    webhook_lake: Path,
) -> None:
    for path in webhook_lake.glob("*/**/*.parquet"):
        schema = pq.read_schema(path)
        assert not {"type", "date"} & set(schema.names), path
        for field in schema:
            if pa.types.is_timestamp(field.type):
                assert (field.type.unit, field.type.tz) == ("us", "UTC"), (path, field)


def test_files_are_never_rewritten_in_place(webhook_lake: Path) -> None:
    lake = ke.Lake(webhook_lake)
    before = {p: p.read_bytes() for p in webhook_lake.glob("events/**/*.parquet")}
    copy = _bodies()[0]  # a copy of a stored event, from Kirim's history this time
    lake.write_events(
        ke.parse_delivery(copy.body, copy.headers, received_at=NOW, origin="backfill")
    )
    lake.compact()
    after = {p: p.read_bytes() for p in webhook_lake.glob("events/**/*.parquet")}
    assert all(before[p] == data for p, data in after.items() if p in before)
    assert set(after) - set(before)  # compaction wrote its file under a new name
    assert len(lake.events().collect()) == 3


# --- Analytics helpers' columns -------------------------------------------------------------

TIMELINE_COLUMNS = [
    "message_id", "phone_number_id", "recipient_id", "conversation_id", "sent_at",
    "delivered_at", "read_at", "failed_at", "status", "error_code", "n_events",
    "n_duplicates", "out_of_order", "time_to_deliver", "time_to_read",
]  # fmt: skip
LIFECYCLE_COLUMNS = [
    "conversation_id", "opened_at", "first_assigned_at", "n_assignments", "n_assignees",
    "assignee_id", "n_closes", "n_reopens", "closed_at", "closed_by_user_id", "is_open",
    "time_to_first_assignment", "time_to_close",
]  # fmt: skip


@pytest.mark.parametrize("as_of", [None, "2026-05-01T09:00:03Z"])
def test_helpers_and_views_have_the_design_columns(webhook_lake: Path, as_of: str | None) -> None:
    lake = ke.Lake(webhook_lake)
    lake = lake if as_of is None else lake.as_of(as_of)
    for helper, columns in (
        ("message_timelines", TIMELINE_COLUMNS),
        ("conversation_lifecycles", LIFECYCLE_COLUMNS),
    ):
        frame = getattr(lake, helper)()
        names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
        assert [c for c in columns if c not in names] == [], helper
        assert [c for c in columns if c not in lake.sql(f"select * from {helper}").columns] == []
    timeline = lake.message_timelines().collect().row(0, named=True)
    assert timeline["message_id"] == WAMID
    assert timeline["status"] == ("sent" if as_of else "delivered")
