"""One reader for typed times: Lake.as_of, the core helpers' as_of and the CLI agree."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from test_analytics_support import T0, status
from typer.testing import CliRunner

import kirim_events as ke
from kirim_events.analytics.timelines import message_timelines
from kirim_events.cli import app
from kirim_events.schema import events_table
from kirim_events.timearg import parse_when, read_time, to_utc

NOW = datetime(2026, 5, 24, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01", datetime(2026, 5, 1, tzinfo=UTC)),
        ("2026-05-01T09:00", datetime(2026, 5, 1, 9, tzinfo=UTC)),  # no seconds
        ("2026-05-01 09:00:00+07:00", datetime(2026, 5, 1, 2, tzinfo=UTC)),
        ("2026-05-01T09:00:00.123456789Z", datetime(2026, 5, 1, 9, 0, 0, 123456, UTC)),
        # as Polars prints a UTC time, copied from a table into as_of
        ("2026-05-01 09:00:00.250 UTC", datetime(2026, 5, 1, 9, 0, 0, 250000, UTC)),
        (datetime(2026, 5, 1, 9), datetime(2026, 5, 1, 9, tzinfo=UTC)),  # naive: UTC
        (
            datetime(2026, 5, 1, 9, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2026, 5, 1, 14, tzinfo=UTC),
        ),
        (date(2026, 5, 1), datetime(2026, 5, 1, tzinfo=UTC)),
    ],
)
def test_every_entry_point_reads_a_time_alike(text: str | datetime, expected: datetime) -> None:
    assert read_time(text) == expected
    assert ke.Lake("/nonexistent-lake-folder").as_of(text).as_of_ts == expected
    assert parse_when(text, now=NOW, name="--as-of") == expected


@pytest.mark.parametrize(
    "text",
    [
        "20260501",
        "1779531402",
        "1779531402.5",
        "",
        "  ",
        "2026-13-01",
        "0001-01-01T00:00:00+01:00",  # before the first UTC instant
        "9999-12-31T23:00:00-05:00",  # after the last
    ],
)
def test_digits_and_non_times_are_refused_everywhere(text: str) -> None:
    """Typed as a time, ``20260501`` is a mistake, not unix seconds in 1970."""
    assert read_time(text) is None
    with pytest.raises(ke.ConfigError, match="not a time"):
        ke.Lake("/nonexistent-lake-folder").as_of(text)
    with pytest.raises(ke.ConfigError, match="not a time"):
        parse_when(text, now=NOW, name="--as-of")
    frame = pl.from_arrow(events_table([])).lazy()
    assert isinstance(frame, pl.LazyFrame)
    with pytest.raises(ke.ConfigError, match="not a time"):
        message_timelines(frame, as_of=text)


def test_pandas_nat_is_not_a_time(tmp_path: Path) -> None:
    """``NaT`` is a datetime that names no instant (what pandas' ``.max()`` of nothing is)."""
    pd = pytest.importorskip("pandas")
    assert read_time(pd.NaT) is None
    assert read_time(pd.Timestamp("2026-05-01T09:00Z")) == datetime(2026, 5, 1, 9, tzinfo=UTC)
    with pytest.raises(ke.ConfigError, match=r"^as_of NaT is not a time"):
        ke.Lake(tmp_path).as_of(pd.NaT)
    with pytest.raises(ke.ConfigError, match=r"^since NaT is not a time"):
        ke.Lake(tmp_path).events(since=pd.NaT)


def test_a_pandas_timestamp_becomes_a_plain_datetime_to_the_microsecond(
    tmp_path: Path,
) -> None:
    """``lake.as_of(pd.Timestamp(...))`` kept the Timestamp, nanoseconds and all: ``as_of_ts``
    was a pandas object and the repr showed nine digits the lake cannot hold. The
    nanoseconds are dropped (an event at the next microsecond is still after it)."""
    pd = pytest.importorskip("pandas")
    stamp = pd.Timestamp("2026-05-01 16:00:00.000001999", tz="Asia/Jakarta")
    past = ke.Lake(tmp_path).as_of(stamp)
    assert type(past.as_of_ts) is datetime
    assert past.as_of_ts == datetime(2026, 5, 1, 9, 0, 0, 1, tzinfo=UTC)
    assert repr(past).endswith("as_of='2026-05-01T09:00:00.000001+00:00')")


def test_a_numpy_datetime64_is_read_as_its_instant(tmp_path: Path) -> None:
    """What ``df["t"].to_numpy()`` gives: naive (UTC) instants, days as dates."""
    np = pytest.importorskip("numpy")
    nine = datetime(2026, 5, 1, 9, tzinfo=UTC)
    assert read_time(np.datetime64("2026-05-01T09:00")) == nine
    assert read_time(np.datetime64("2026-05-01T09:00:00.000001234")) == nine.replace(microsecond=1)
    assert read_time(np.datetime64("2026-05-01")) == datetime(2026, 5, 1, tzinfo=UTC)
    assert read_time(np.datetime64("2026-05-01"), end_of_day=True) == datetime(
        2026, 5, 1, 23, 59, 59, 999999, UTC
    )
    # a month (a week, a year) is its first instant, or its last microsecond as an until
    assert read_time(np.datetime64("2026-02")) == datetime(2026, 2, 1, tzinfo=UTC)
    assert read_time(np.datetime64("2026-02"), end_of_day=True) == datetime(
        2026, 2, 28, 23, 59, 59, 999999, UTC
    )
    assert read_time(np.datetime64("9999-12-31"), end_of_day=True) == datetime.max.replace(
        tzinfo=UTC
    )
    assert ke.Lake(tmp_path).as_of(np.datetime64("2026-05-01T09:00")).as_of_ts == nine
    assert parse_when(np.datetime64("2026-05-01T09:00"), now=NOW, name="--since") == nine
    # NaT, and an instant beyond Python's datetime (astype to microseconds wraps it round)
    for no_time in (
        np.datetime64("NaT"),
        np.datetime64("300000-01-01"),
        np.datetime64(10**18, "s"),
    ):
        assert read_time(no_time) is None
        with pytest.raises(ke.ConfigError, match=r"^as_of np.datetime64\(.* is not a time"):
            ke.Lake(tmp_path).as_of(no_time)


def test_every_reader_names_the_argument_it_refuses(tmp_path: Path) -> None:
    """The lake said only "not a time: 'x'", whichever of since, until or as_of it was."""
    lake = ke.Lake(tmp_path)
    lake.write_events([status("wamid.A", "sent", 0, 1)])
    frame = pl.from_arrow(events_table([])).lazy()
    assert isinstance(frame, pl.LazyFrame)
    refusals = {
        "as_of": [lambda: lake.as_of("soon"), lambda: message_timelines(frame, as_of="soon")],
        "since": [lambda: lake.events(since="soon"), lambda: lake.deliveries(since="soon")],
        "until": [lambda: lake.events(until="soon"), lambda: lake.deliveries(until="soon")],
    }
    for name, calls in refusals.items():
        for call in calls:
            with pytest.raises(ke.ConfigError, match=f"^{name} 'soon' is not a time: use ISO"):
                call()


def test_a_core_helper_takes_a_date_as_of() -> None:
    """A date means its midnight (UTC), as in Lake.as_of."""
    frame = pl.from_arrow(
        events_table([status("wamid.A", "sent", 0, 1), status("wamid.A", "read", 86_400, 86_401)])
    )
    assert isinstance(frame, pl.DataFrame)

    def status_on(day: date) -> list[str]:
        return message_timelines(frame.lazy(), as_of=day).collect()["status"].to_list()

    assert status_on(T0.date()) == []  # sent at 10:00 that day
    assert status_on(T0.date() + timedelta(days=1)) == ["sent"]
    assert status_on(T0.date() + timedelta(days=2)) == ["read"]


def test_report_refuses_an_empty_as_of(tmp_path: Path) -> None:
    ke.Lake(tmp_path).write_events([status("wamid.A", "sent", 0, 1)])
    result = CliRunner().invoke(app, ["report", "--data", str(tmp_path), "--as-of", ""])
    assert result.exit_code == 2, result.output
    assert "not a time" in result.output


def test_a_span_ago_is_read_alike_by_the_lake_the_helpers_and_the_cli(tmp_path: Path) -> None:
    """``report --as-of 12h`` worked while ``lake.as_of("12h")`` was refused as no time."""
    lake = ke.Lake(tmp_path, now=NOW.timestamp)
    assert lake.as_of("12h").as_of_ts == NOW - timedelta(hours=12)
    assert lake.as_of(" 7D ").as_of_ts == NOW - timedelta(days=7)
    assert lake.as_of("now").as_of_ts == NOW
    assert parse_when("12h", now=NOW, name="--as-of") == NOW - timedelta(hours=12)
    assert read_time("12h") is None  # without a now, a span names no instant
    # events() bounds take spans too, counted back from the lake's clock
    lake.write_events([status("wamid.A", "sent", 0, 1), status("wamid.B", "sent", 0, 1)])
    assert NOW - timedelta(days=2) < T0 < NOW - timedelta(days=1)
    assert lake.events(since="1d").collect().height == 0
    assert lake.events(since="2d", until="1d").collect().height == 2
    # the core helpers count back from the wall clock
    frame = pl.from_arrow(events_table([status("wamid.A", "sent", 0, 1)]))
    assert isinstance(frame, pl.DataFrame)
    assert message_timelines(frame.lazy(), as_of="1m").collect().height == 1  # T0 is past
    with pytest.raises(ke.ConfigError, match="not a time"):
        lake.as_of("12 hours")


def test_parse_when_forms() -> None:
    now = datetime(2026, 5, 10, 12, tzinfo=UTC)
    assert parse_when("7d", now=now) == now - timedelta(days=7)
    assert parse_when("90m", now=now) == now - timedelta(minutes=90)
    assert parse_when("now", now=now) == now
    assert parse_when("2026-05-01", now=now) == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_when("2026-05-01T10:00:00+02:00", now=now) == datetime(2026, 5, 1, 8, tzinfo=UTC)
    with pytest.raises(ke.ConfigError, match=r"^since '1779531402' is not a time"):
        parse_when("1779531402", now=now, name="since")


def test_a_span_past_the_first_instant_is_said_so(tmp_path: Path) -> None:
    """The lake takes times before 1970; only Kirim's history bounds stop there."""
    lake = ke.Lake(tmp_path, now=NOW.timestamp)
    assert lake.as_of("1900-01-01").as_of_ts == datetime(1900, 1, 1, tzinfo=UTC)
    with pytest.raises(ke.ConfigError, match=r"^as_of '99999999d' reaches back before the year 1"):
        lake.as_of("99999999d")
    with pytest.raises(ke.ConfigError, match=r"^since '99999999d' is before 1970: Kirim keeps"):
        parse_when("99999999d", now=NOW, name="since")
    # however many digits: 11 of them were 'not a time', as a typo is
    with pytest.raises(ke.ConfigError, match=r"^as_of '99999999999w' reaches back before the"):
        lake.as_of("99999999999w")
    # quoted cut short: the error stays one readable line
    cut = r"^as_of '9{56}\.\.\. reaches back before the year 1$"
    with pytest.raises(ke.ConfigError, match=cut):
        lake.as_of("9" * 5000 + "s")


def test_a_date_until_means_its_whole_day_as_text_or_as_a_date(tmp_path: Path) -> None:
    last = datetime(2026, 5, 1, 23, 59, 59, 999999, tzinfo=UTC)
    assert read_time(date(2026, 5, 1), end_of_day=True) == last
    assert read_time("2026-05-01", end_of_day=True) == last
    lake = ke.Lake(tmp_path, now=NOW.timestamp)
    lake.write_events([status("wamid.A", "sent", 3600, 3601)])  # 2026-05-23T11:00Z
    day = T0.date()
    assert lake.events(until=day).collect().height == 1
    assert lake.events(until=day.isoformat()).collect().height == 1


def test_every_span_unit_and_any_case() -> None:
    assert parse_when("2w", now=NOW) == NOW - timedelta(days=14)
    assert parse_when("45s", now=NOW) == NOW - timedelta(seconds=45)
    assert parse_when("12H", now=NOW) == NOW - timedelta(hours=12)
    assert parse_when("NOW", now=NOW) == NOW
    assert parse_when(" Now ", now=NOW) == NOW


def test_kirim_history_may_start_at_the_epoch_itself() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_when("1970-01-01T00:00:00Z", now=NOW, name="since") == epoch
    with pytest.raises(ke.ConfigError, match=r"^since '1969-12-31T23:59:59Z' is before 1970"):
        parse_when("1969-12-31T23:59:59Z", now=NOW, name="since")


def test_an_instant_no_utc_time_can_hold_is_out_of_range_not_a_non_time() -> None:
    before_utc = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(ke.ConfigError, match=r"^as_of datetime\.datetime\(1, 1, 1, .* is out of"):
        to_utc(before_utc, now=NOW, name="as_of")


def test_now_is_read_in_utc_whatever_zone_the_clock_gives() -> None:
    jakarta = NOW.astimezone(timezone(timedelta(hours=7)))
    got = to_utc("now", now=jakarta)
    assert (got, got.tzinfo) == (NOW, UTC)


@pytest.mark.parametrize("value", [Path("2026-05-01"), 20260501, 1779531402.5, None])
def test_only_datetimes_dates_and_text_are_read(value: object) -> None:
    """A path or a number is no time, whatever its text says."""
    assert read_time(value) is None  # type: ignore[arg-type]
