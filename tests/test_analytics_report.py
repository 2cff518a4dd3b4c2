"""Notebook summaries, offline HTML charts and ``kirim-events report``."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from racing import compacted_meanwhile
from test_analytics_support import T0, at, conversation, dedup, status
from typer.testing import CliRunner

import kirim_events as ke
import kirim_events.cli._app as cli_app
from kirim_events.analytics import notebook
from kirim_events.analytics.report import build_report, write_html
from kirim_events.analytics.timelines import message_timelines
from kirim_events.cli import app
from kirim_events.events import EventRecord

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as their rows whatever terminal runs the tests: rich reads COLUMNS
    at each print. (Setting the console's width instead left it, once undone, fixed at the
    width of the terminal the tests ran in, and a later test's COLUMNS=80 was ignored.)"""
    monkeypatch.setenv("COLUMNS", "120")


def _records() -> list[EventRecord]:
    return [
        status("wamid.A", "sent", 0, 1),
        status("wamid.A", "delivered", 4, 5),
        status("wamid.A", "read", 64, 65),
        status("wamid.B", "sent", 0, 1),
        status("wamid.B", "delivered", 10, 11),
        status("wamid.C", "sent", 0, 1),
        status("wamid.C", "failed", 2, 3, error=(131047, "Re-engagement message")),
        status("wamid.D", "failed", 0, 1, error=(131026, "Message undeliverable")),
        status("wamid.E", "failed", 0, 1, error=(131047, "Re-engagement message")),
        conversation("evt_m1", "message.received", "cnv_1", 0, 1),  # the openings
        conversation("evt_m2", "message.received", "cnv_2", 30, 31),
        conversation("evt_1", "assigned", "cnv_1", 0, 1, user="usr_a"),
        conversation("evt_2", "closed", "cnv_1", 600, 601, closed_by="usr_a"),
        conversation("evt_3", "assigned", "cnv_2", 30, 31, user="usr_b"),
    ]


def _timelines() -> pl.DataFrame:
    events, copies = dedup(_records())
    return message_timelines(events, copies=copies).collect()


def test_funnel_and_rates() -> None:
    t = _timelines()
    funnel = notebook.funnel(t)
    assert funnel["stage"].to_list() == ["messages", "sent", "delivered", "read", "failed"]
    assert funnel["messages"].to_list() == [5, 3, 2, 1, 3]
    assert funnel["share_of_previous"].to_list() == [None, 3 / 5, 2 / 3, 1 / 2, None]
    assert notebook.read_rate(t) == 0.5
    assert notebook.delivery_rate(t) == pytest.approx(2 / 3)
    assert notebook.read_rate(t.head(0)) is None


def test_failure_reasons_use_kirim_labels_and_other() -> None:
    reasons = notebook.failure_reasons(_timelines())
    assert reasons.select("error_label", "error_code", "messages").rows() == [
        ("outside_24h_window", "131047", 2),
        ("other", "131026", 1),
    ]
    assert reasons["share"].to_list() == [2 / 3, 1 / 3]
    assert reasons["error_title"][0] == "Re-engagement message"


def test_a_failure_without_a_code_is_not_an_unknown_code() -> None:
    records = [*_records(), status("wamid.F", "failed", 0, 1)]  # Meta sent no errors[]
    events, copies = dedup(records)
    reasons = notebook.failure_reasons(message_timelines(events, copies=copies))
    assert ("no_error_code", None, 1) in reasons.select(
        "error_label", "error_code", "messages"
    ).rows()


def test_summaries_take_a_lake_a_view_or_a_frame_alike(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events(_records())
    expected = notebook.funnel(lake.message_timelines())
    view = lake.sql("select * from message_timelines")
    for given in (lake, view, lake.message_timelines().collect()):
        assert notebook.funnel(given).equals(expected)
    assert notebook.read_rate(lake) == notebook.read_rate(view) == 0.5
    times = notebook.time_summary(lake, lake)  # a Lake gives each summary the frame it reads
    assert times["n"].to_list() == [2, 1, 2, 1]
    with pytest.raises(TypeError, match="expected a Polars DataFrame or LazyFrame"):
        notebook.funnel([1, 2])


def test_a_summary_given_other_rows_names_the_rows_it_reads() -> None:
    """``funnel(lifecycles)`` and ``time_summary(lifecycles, timelines)`` (swapped) raised
    Polars' bare ``"reached_sent" not found``; a pandas frame was refused as "got DataFrame"."""
    events, copies = dedup(_records())
    from kirim_events.analytics.conversations import conversation_lifecycles

    lifecycles = conversation_lifecycles(events, copies=copies)
    timelines = _timelines()
    calls = {
        "funnel": lambda: notebook.funnel(lifecycles),
        "read_rate": lambda: notebook.read_rate(lifecycles),
        "delivery_rate": lambda: notebook.delivery_rate(events),
        "failure_reasons": lambda: notebook.failure_reasons(lifecycles),
        "time_summary": lambda: notebook.time_summary(lifecycles, timelines),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{name} reads message_timelines rows \(columns"):
            call()
    with pytest.raises(ValueError, match=r"reads conversation_lifecycles rows .* got a frame "):
        notebook.time_summary(timelines, timelines)
    with pytest.raises(TypeError, match=r"got pandas\.\S*DataFrame; pl\.from_pandas"):
        notebook.funnel(timelines.to_pandas())


def test_time_summary_median_and_p90() -> None:
    events, copies = dedup(_records())
    from kirim_events.analytics.conversations import conversation_lifecycles

    summary = notebook.time_summary(
        _timelines(), conversation_lifecycles(events, copies=copies)
    ).to_dicts()
    by_metric = {row["metric"]: row for row in summary}
    deliver = by_metric["time_to_deliver"]
    assert (deliver["n"], deliver["median"], deliver["p90"]) == (2, 7.0, 4.0 + 0.9 * 6.0)
    assert (by_metric["time_to_read"]["n"], by_metric["time_to_read"]["median"]) == (1, 64.0)
    close = by_metric["time_to_close"]
    assert (close["of"], close["n"], close["median"]) == ("conversations", 1, 600.0)
    # per cycle: a reopened conversation's cycles count apart, and are called cycles (they
    # were labelled "conversations")
    from kirim_events.analytics.conversations import conversation_cycles

    cycles = notebook.time_summary(_timelines(), conversation_cycles(events, copies=copies))
    assert cycles.filter(pl.col("metric") == "time_to_close")["of"].to_list() == ["cycles"]
    assert cycles.filter(pl.col("metric") == "time_to_read")["of"].to_list() == ["messages"]


def test_failures_chart_top_is_one_or_more() -> None:
    """``top=-1`` charted every reason but the least frequent (Polars' ``head(-1)``), and
    ``top=0`` an empty chart, both silently."""
    reasons = notebook.failure_reasons(_timelines())
    assert notebook.failures_chart(reasons, top=1).data.height == 1
    for top in (0, -1, 2.5):
        with pytest.raises(ValueError, match="top must be a whole number, 1 or more"):
            notebook.failures_chart(reasons, top=top)  # type: ignore[arg-type]


def test_html_goes_to_the_home_folder_for_a_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``save_html(chart, "~/report.html")`` failed with FileNotFoundError on a folder named
    ``~``: Polars and pandas writers (and ``ke.Lake``) read ``~`` as the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    chart = notebook.funnel_chart(notebook.funnel(_timelines()))
    assert notebook.save_html(chart, "~/r.html") == tmp_path / "r.html"
    assert "Delivery funnel" in (tmp_path / "r.html").read_text(encoding="utf-8")
    (tmp_path / "lake").mkdir()
    empty = build_report(ke.Lake(tmp_path / "lake"))  # a page with no chart: written apart
    assert write_html(empty, "~/empty.html") == tmp_path / "empty.html"
    assert (tmp_path / "empty.html").is_file()


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    t = _timelines()
    charts = [
        notebook.funnel_chart(notebook.funnel(t)),
        notebook.failures_chart(notebook.failure_reasons(t)),
    ]
    page = notebook.save_html(charts, tmp_path / "r.html").read_text(encoding="utf-8")
    # No script or stylesheet is fetched from anywhere: the Vega bundle is inlined.
    assert re.findall(r"<script[^>]*\bsrc=", page) == []
    assert re.findall(r"<link[^>]*\bhref=", page) == []
    assert "vega-embed.js bundle" in page
    assert "outside_24h_window" in page  # the data travels with the page
    assert "<title>kirim-events report</title>" in page


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self._inside = tag == "script"
        if self._inside:
            self.bodies.append("")

    def handle_endtag(self, tag: str) -> None:
        self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.bodies[-1] += data


def test_html_report_data_cannot_end_its_script(tmp_path: Path) -> None:
    """An error title is webhook text: a ``</script>`` in it must stay data."""
    evil = "</script><script>document.title='pwned'</script><!-- \u2028 & x"
    records = [status("wamid.X", "failed", 0, 1, error=(131047, evil))]
    events, copies = dedup(records)
    t = message_timelines(events, copies=copies).collect()
    page = notebook.save_html(
        [notebook.failures_chart(notebook.failure_reasons(t))], tmp_path / "r.html"
    ).read_text(encoding="utf-8")
    parser = _Scripts()
    parser.feed(page)
    assert not [b for b in parser.bodies if "pwned" in b and "const spec" not in b]
    spec = next(b for b in parser.bodies if "const spec" in b)
    literal = spec.split("const spec = ", 1)[1].split(";\n", 1)[0]
    assert evil in json.dumps(json.loads(literal), ensure_ascii=False)  # the data is intact


class _Outline(HTMLParser):
    """Where a page's report sits: whether a ``kirim-report`` div opens as an element of
    the page (not as text of a script), and the text of each script."""

    def __init__(self) -> None:
        super().__init__()
        self.report_div = 0
        self.scripts: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._inside = tag == "script"
        if self._inside:
            self.scripts.append("")
        self.report_div += tag == "div" and ("class", "kirim-report") in attrs

    def handle_endtag(self, tag: str) -> None:
        self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.scripts[-1] += data


def test_html_report_tables_are_in_the_page_not_in_its_javascript(tmp_path: Path) -> None:
    """The tables went in at the first ``<body>`` of the page, which is text inside the
    inlined vega-embed bundle (a JavaScript template literal, ``<html><head>${t}</head>
    <body>``): a browser showed the charts alone, and a backtick in an error title ended
    the literal, so no chart was drawn either."""
    title = "`${document.title='pwned'}` <b>"
    lake = ke.Lake(tmp_path)
    lake.write_events([*_records(), status("wamid.X", "failed", 0, 1, error=(999, title))])
    page = write_html(build_report(lake), tmp_path / "r.html").read_text(encoding="utf-8")
    outline = _Outline()
    outline.feed(page)
    assert outline.report_div == 1
    # the spec's data holds the title (as JSON); no other script holds any of the report
    spec = [s for s in outline.scripts if "const spec" in s]
    others = [s for s in outline.scripts if "const spec" not in s]
    assert len(spec) == 1
    assert "kirim-report" not in spec[0]
    assert [s for s in others if "kirim-report" in s or "pwned" in s] == []
    body = page.split("</head>\n<body>", 1)[1]
    assert body.lstrip().startswith("<style>.kirim-report")  # above the charts
    assert "<td>`${document.title=&#x27;pwned&#x27;}` &lt;b&gt;</td>" in body
    assert "vega-visualization" in body


def test_offline_notebook_charts_are_drawn_locally() -> None:
    import altair as alt

    before = alt.renderers.active
    try:
        assert notebook.enable_offline_charts() == "svg"
        bundle = notebook.funnel_chart(notebook.funnel(_timelines()))._repr_mimebundle_()
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        assert "<svg" in bundle["image/svg+xml"]
        assert "text/html" not in bundle  # nothing that would fetch JavaScript
    finally:
        alt.renderers.enable(before)


def test_report_command_summarises_and_writes_html(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path / "data")
    lake.write_events(_records())
    html = tmp_path / "report.html"
    secrets = {"KIRIM_WEBHOOK_SECRET": "whsec_report_a,whsec_report_b", "KIRIM_KEY": "kdv_live_r"}
    args = ["report", "--data", str(tmp_path / "data"), "--html", str(html)]
    result = runner.invoke(app, args, env=secrets)
    assert result.exit_code == 0, result.output
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    shown = html.read_text(encoding="utf-8") + result.output
    assert [s for s in ("whsec_report_a", "whsec_report_b", "kdv_live_r") if s in shown] == []
    # the figures printed, from the records' known history
    out = result.output
    assert out.startswith("5 outbound messages, 2 conversations (1 open)\n")
    rows = table_rows(out)
    funnel = ["messages 5 100.0% -", "sent 3 60.0% 60.0%", "delivered 2 40.0% 66.7%",
              "read 1 20.0% 50.0%", "failed 3 60.0% -"]  # fmt: skip
    assert [r for r in rows if r in funnel] == funnel
    assert "delivery rate 66.7%, read rate 50.0%" in out
    assert "outside_24h_window 131047 Re-engagement message 2 66.7%" in rows
    assert "other 131026 Message undeliverable 1 33.3%" in rows
    assert "time_to_deliver messages 2 7.0 s 9.4 s" in rows
    assert "time_to_close conversations 1 10.0 min 10.0 min" in rows
    assert "messages with no sent status seen 2" in rows


def test_report_shows_webhook_text_without_obeying_it(tmp_path: Path) -> None:
    title = "Blocked\x1b]0;PWNED\x1b\\\x1b[2J\x1b[31mrewritten"
    lake = ke.Lake(tmp_path / "data")
    lake.write_events([status("wamid.X", "failed", 0, 1, error=(131047, title))])
    result = runner.invoke(app, ["report", "--data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output  # no escape sequence reaches the terminal
    assert "Blocked\\x1b]0;PWNED" in result.output  # the title is shown, escaped


def test_errors_and_notes_show_quoted_text_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    cli_app.print_error("the API said: \x1b[2Jgone\nsecond line")
    cli_app.print_note("\u202eexe.txt")
    out, err = capsys.readouterr()
    assert "\x1b" not in err
    assert "\\x1b[2Jgone" in err
    assert len(err.splitlines()) == 1  # quoted text cannot add a line of its own
    assert "gone\\nsecond line" in err
    assert "\u202e" not in out
    assert "\\u202eexe.txt" in out


def table_rows(output: str) -> list[str]:
    """The body rows of the rich tables in ``output``, cells joined by single spaces."""
    return [
        " ".join(cell.strip() for cell in line.strip().strip("│").split("│"))
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


def test_report_top_limits_the_table_and_the_chart(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path / "data")
    lake.write_events(_records())
    html = tmp_path / "report.html"
    args = ["report", "--data", str(tmp_path / "data"), "--html", str(html), "--top", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    page = html.read_text(encoding="utf-8")
    # 131047 fails two messages, 131026 one: only the first is listed and charted
    assert "outside_24h_window" in result.output
    assert "131026" not in result.output
    assert "; 1 more reason past --top 1" in " ".join(result.output.split())  # said, not hidden
    full = runner.invoke(app, ["report", "--data", str(tmp_path / "data")])
    assert "past --top" not in full.output
    assert "outside_24h_window (131047)" in page
    assert "131026" not in page


def test_report_as_of(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events(_records())
    early = build_report(lake.as_of(at(1)))
    assert early.n_messages == 5
    assert early.funnel["messages"].to_list()[2] == 0  # nothing delivered yet at +1 s
    assert early.n_open_conversations == 1
    result = runner.invoke(app, ["report", "--data", str(tmp_path), "--as-of", at(1).isoformat()])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"5 outbound messages, 1 conversation (1 open) as of {at(1):%Y-%m-%d %H:%M:%S} UTC\n"
    )
    # written as the next line writes the events' times: it showed
    # 2026-12-02T03:14:56.512161+00:00 for --as-of 12h, beside "... 12:32:33 UTC"
    span = runner.invoke(app, ["report", "--data", str(tmp_path), "--as-of", "12h"])
    assert re.search(r" as of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\n", span.output), span.output
    rows = table_rows(result.output)
    assert "delivered 0 0.0% 0.0%" in rows
    assert "failed 2 40.0% -" in rows
    assert "delivery rate 0.0%, read rate -" in result.output


def test_report_on_an_empty_lake_says_why_instead_of_tables_of_zeros(tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    result = runner.invoke(app, ["report", "--data", str(tmp_path), "--html", str(html)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert out.startswith("0 outbound messages, 0 conversations (0 open) (the lake holds no")
    assert "`kirim-events compact` flushes what `collect` received" in out
    assert table_rows(result.output) == []  # no funnel of zeros
    page = html.read_text(encoding="utf-8")
    assert "the lake holds no events yet" in page
    assert "<table" not in page


def test_report_as_of_reads_times_as_the_lake_does_before_1970_too(tmp_path: Path) -> None:
    """docs/analytics.md: the CLI's --as-of reads what ``lake.as_of`` reads. It was read as
    a bound of Kirim's history, refusing a time before 1970 with "Kirim keeps no history"."""
    ke.Lake(tmp_path).write_events(_records())
    result = runner.invoke(app, ["report", "--data", str(tmp_path), "--as-of", "1960-01-01"])
    assert result.exit_code == 0, result.output
    assert "no events had happened by 1960-01-01 00:00:00 UTC" in " ".join(result.output.split())


def test_report_as_of_before_the_first_event_says_when_the_events_happened(
    tmp_path: Path,
) -> None:
    ke.Lake(tmp_path).write_events(_records())
    result = runner.invoke(app, ["report", "--data", str(tmp_path), "--as-of", "2020-01-01"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    first, last = T0.strftime("%Y-%m-%d %H:%M:%S"), at(600).strftime("%Y-%m-%d %H:%M:%S")
    assert (
        "(no events had happened by 2020-01-01 00:00:00 UTC: the lake's events happened "
        f"from {first} to {last} UTC)" in out
    )
    assert table_rows(result.output) == []
    full = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert f"The lake's events happened from {first}" in full.output


def test_html_report_holds_the_terminal_figures(tmp_path: Path) -> None:
    """The page had only the charts: no rates, no failure titles, no anomaly counts."""
    lake = ke.Lake(tmp_path)
    lake.write_events(_records())
    report = build_report(lake)
    page = write_html(report, tmp_path / "r.html").read_text(encoding="utf-8")
    words = page.split('<div class="kirim-report">', 1)[1].split("</div>", 1)[0]
    assert "<h1>5 outbound messages, 2 conversations (1 open)</h1>" in words
    assert "delivery rate 66.7%, read rate 50.0%" in words
    assert "<td>outside_24h_window</td><td>131047</td><td>Re-engagement message</td>" in words
    assert "<td>messages with no sent status seen</td><td>2</td>" in words
    assert "vega-embed.js bundle" in page  # and the charts below


def test_html_report_escapes_webhook_text_in_its_tables(tmp_path: Path) -> None:
    evil = "<img src=x onerror=alert(1)>"
    lake = ke.Lake(tmp_path)
    lake.write_events([status("wamid.X", "failed", 0, 1, error=(131047, evil))])
    page = write_html(build_report(lake), tmp_path / "r.html").read_text(encoding="utf-8")
    words = page.split('<div class="kirim-report">', 1)[1].split("</div>", 1)[0]
    assert evil not in words
    assert "&lt;img src=x onerror=alert(1)&gt;" in words


def test_report_refuses_a_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no lake at" in result.output


def test_every_chart_takes_a_lake_a_lazyframe_or_a_frame(tmp_path: Path) -> None:
    lake = ke.Lake(tmp_path)
    lake.write_events(_records())
    t = _timelines()
    charts = {
        "funnel": (notebook.funnel_chart, notebook.funnel(t)),
        "failures": (notebook.failures_chart, notebook.failure_reasons(t)),
        "times": (notebook.times_chart, notebook.time_summary(lake, lake)),
        "health": (notebook.health_chart, lake.delivery_health().collect()),
    }
    for name, (chart, frame) in charts.items():
        expected = chart(frame).to_dict()["datasets"]
        for given in (lake, frame.lazy()):
            assert chart(given).to_dict()["datasets"] == expected, name
        with pytest.raises(TypeError, match="expected a Polars DataFrame"):
            chart(42)  # type: ignore[arg-type]


def test_save_html_refuses_no_charts(tmp_path: Path) -> None:
    with pytest.raises(ke.ConfigError, match="no charts"):
        notebook.save_html([], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_html_goes_to_the_home_folder_for_a_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--html=~/r.html`` (a shell leaves that ``~`` alone) was refused with "needs a file
    name in an existing folder": the check looked for a folder named ``~``, though --data,
    --lake and write_html all read it as the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    ke.Lake(tmp_path / "data").write_events(_records())
    result = runner.invoke(app, ["report", "--data", "~/data", "--html=~/r.html"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert result.output.rstrip().endswith(f"report written to {tmp_path / 'r.html'}")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_report_html_into_a_folder_it_cannot_write_fails_before_the_report(
    tmp_path: Path,
) -> None:
    # It printed the whole report, then "error: [Errno 1] Operation not permitted", naming
    # no option. (/proc/self: a folder where no file can be made, even by root.)
    lake = ke.Lake(tmp_path / "data")
    lake.write_events(_records())
    html = Path("/proc/self/report.html")
    result = runner.invoke(app, ["report", "--data", str(tmp_path / "data"), "--html", str(html)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --html {html}: cannot write there")
    assert "outbound messages" not in result.output


def test_a_chart_given_the_rows_it_summarises_summarises_them(tmp_path: Path) -> None:
    """``funnel_chart(timelines)`` built a chart that failed only when shown ("Unable to
    determine data type for the field 'stage'"); a frame of neither kind is refused now."""
    t = _timelines()
    pairs = {
        notebook.funnel_chart: notebook.funnel(t),
        notebook.failures_chart: notebook.failure_reasons(t),
        notebook.times_chart: notebook.time_summary(t),
    }
    for chart, summary in pairs.items():
        expected = chart(summary).to_dict()["datasets"]
        assert chart(t).to_dict()["datasets"] == expected
        assert chart(t.lazy()).to_dict()["datasets"] == expected
    wrong = pl.DataFrame({"conversation_id": ["c"], "opened_at": [None]})
    for chart in (*pairs, notebook.health_chart):
        with pytest.raises(ValueError, match=r"got one with columns conversation_id, opened_at"):
            chart(wrong)
    with pytest.raises(ValueError, match="health_chart draws a frame with columns day"):
        notebook.health_chart(t)
    with pytest.raises(ValueError, match=r"metric, of, median, p90, message timelines \("):
        notebook.times_chart(wrong)


def test_save_html_takes_one_chart_or_a_concatenation(tmp_path: Path) -> None:
    """``save_html(chart)`` raised ``KeyError: 0``."""
    t = _timelines()
    funnel, failures = notebook.funnel_chart(t), notebook.failures_chart(t)
    for given in (funnel, funnel & failures, [funnel | failures]):
        page = notebook.save_html(given, tmp_path / "r.html").read_text(encoding="utf-8")
        assert "Delivery funnel" in page
    assert "outside_24h_window" in page  # the concatenation's second chart is there
    with pytest.raises(TypeError, match="save_html takes Altair charts, got DataFrame"):
        notebook.save_html([funnel, t], tmp_path / "r.html")  # type: ignore[list-item]


def test_report_says_when_events_wait_in_the_journal(tmp_path: Path) -> None:
    """The report reads the lake only; events that collect received but no flush moved yet
    were left out without a word."""
    from kirim_events import testing
    from kirim_events.events import parse_delivery
    from kirim_events.journal import Journal

    ke.Lake(tmp_path).write_events(_records())
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert "not yet in the lake" not in result.output  # no journal: nothing said
    body = testing.encode(testing.meta_status("delivered"))
    with Journal(tmp_path) as journal:
        assert journal.append(parse_delivery(body, {})) == [True]
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"note: the journal of {tmp_path} holds 1 received event not yet in the lake" in out
    assert f"kirim-events compact --data {tmp_path} moves them there" in out
    with Journal(tmp_path) as journal:
        journal.flush(ke.Lake(tmp_path))
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert "not yet in the lake" not in result.output
    # a journal that flushes into another lake: its events are not this lake's to wait for
    other = tmp_path / "other"
    ke.Lake(other).write_events(_records())
    with Journal(tmp_path) as journal:
        assert journal.append(parse_delivery(testing.encode(testing.meta_status("read")), {}))
    args = ["report", "--data", str(tmp_path), "--lake", str(other)]
    assert "not yet in the lake" not in runner.invoke(app, args).output
    with Journal(tmp_path) as journal:
        journal.flush(ke.Lake(other))  # now it flushes there: the command names that lake
        assert journal.append(parse_delivery(testing.encode(testing.meta_status("sent")), {}))
    out = " ".join(runner.invoke(app, args).output.split())
    assert f"compact --data {tmp_path} --lake {other} moves them there" in out


def test_a_summary_of_a_frame_kept_across_a_compaction_says_to_take_a_new_one(
    tmp_path: Path,
) -> None:
    """A frame (or relation) from the lake reads the files there when it was made; given to a
    summary after a compaction replaced them, it failed with Polars' bare "No such file or
    directory (os error 2)" (DuckDB's "No files found that match the pattern")."""
    lake = ke.Lake(tmp_path)
    records = _records()
    lake.write_events(records[:2])
    lake.write_events(records[2:])
    frame = lake.message_timelines()
    view = lake.sql("select * from message_timelines")
    expected = notebook.funnel(frame)
    lake.compact()
    for kept in (frame, view):
        with pytest.raises(ke.LakeError, match="take a new one") as caught:
            notebook.funnel(kept)
        assert "compaction" in str(caught.value)
    assert notebook.funnel(lake.message_timelines()).equals(expected)  # the way out


def _small_files_lake(home: Path) -> list[EventRecord]:
    """The records of :func:`_records` in a lake, one small file each (as a collector's
    flushes leave them between compactions); returned."""
    records = _records()
    lake = ke.Lake(home)
    for record in records:
        lake.write_events([record])
    return records


def test_a_summary_given_a_lake_reads_again_when_a_compaction_deletes_what_it_planned(
    tmp_path: Path,
) -> None:
    """A Lake can be asked for a new frame: a compaction (another process's) that deletes
    the files a summary planned, before it reads them, is not the user's problem."""
    records = _small_files_lake(tmp_path)
    expected = notebook.funnel(ke.Lake(tmp_path))
    assert expected["messages"].to_list() == [5, 3, 2, 1, 3]
    raced, ran = compacted_meanwhile("message_timelines", {1, 2}, records[0])
    assert notebook.funnel(raced(tmp_path)).equals(expected)
    assert len(ran) == 2  # its first two plans were deleted under it; the third was read
    raced, ran = compacted_meanwhile("message_timelines", {1}, records[0])
    assert notebook.read_rate(raced(tmp_path).as_of(at(3600))) == 0.5  # a view as well
    assert len(ran) == 1


def test_a_summary_given_a_lake_says_so_when_every_read_it_planned_was_deleted(
    tmp_path: Path,
) -> None:
    records = _small_files_lake(tmp_path)
    raced, ran = compacted_meanwhile("message_timelines", range(1, 100), records[0])
    with pytest.raises(ke.LakeError, match=r"each of the 3 times .*run it again$") as caught:
        notebook.funnel(raced(tmp_path))
    assert "take a new" not in str(caught.value)  # it did take new ones
    assert len(ran) == 3  # three reads planned and run, no more
    assert notebook.funnel(ke.Lake(tmp_path))["messages"].to_list() == [5, 3, 2, 1, 3]


def test_report_reads_again_when_a_compaction_deletes_the_files_it_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kirim-events report`` while a scheduled ``compact`` finishes: the files the report
    planned are deleted under it. It plans again and reads, rather than failing with "run
    it again": the same report as one that met no compaction."""
    import kirim_events.cli.report as report_cli

    records = _small_files_lake(tmp_path)
    raced, ran = compacted_meanwhile("message_timelines", {1, 2}, records[0])
    monkeypatch.setattr(report_cli, "Lake", raced)  # the Lake the command opens
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(ran) == 2
    assert result.output.startswith("5 outbound messages, 2 conversations (1 open)\n")
    assert "outside_24h_window 131047 Re-engagement message 2 66.7%" in table_rows(result.output)
    monkeypatch.undo()
    alone = runner.invoke(app, ["report", "--data", str(tmp_path)])  # no compaction meanwhile
    assert alone.exit_code == 0, alone.output
    assert result.output == alone.output


def test_report_says_to_run_it_again_when_every_read_it_planned_was_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compactions finishing under each of its reads (three): one line, not a traceback."""
    import kirim_events.cli.report as report_cli

    records = _small_files_lake(tmp_path)
    raced, ran = compacted_meanwhile("message_timelines", range(1, 100), records[0])
    monkeypatch.setattr(report_cli, "Lake", raced)
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert len(ran) == 3
    assert " ".join(result.output.split()) == (
        "error: a file this read planned was deleted by a compaction that finished meanwhile"
        " (nothing is lost); run it again"
    )


@pytest.mark.parametrize("columns", ["40", "60", "80", "200"])
def test_report_cuts_no_cell_on_a_narrow_or_wide_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    """At 60 columns the times table showed ``conversatio…`` and at 40 the failure codes
    ``1310…``: a cell cut with an ellipsis loses what it says. Cells may wrap, never end cut.
    Folding every column then split names where there was room for them whole: at 80
    columns ``template_param_count_mi`` / ``smatch``."""
    monkeypatch.setenv("COLUMNS", columns)
    long_title = "Number of parameters does not match the expected number of params"
    records = [*_records(), status("wamid.G", "failed", 0, 1, error=(132000, long_title))]
    ke.Lake(tmp_path).write_events(records)
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    # the tables fit (a line of text is left whole for the terminal to wrap: soft_wrap)
    drawn = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]
    assert drawn
    assert max(len(line) for line in drawn) <= int(columns)
    if int(columns) >= 60:  # room for the codes whole: none is split over two lines
        for code in ("131047", "131026", "132000"):
            assert re.search(rf"│ ?{code} ?│", result.output), code
    if int(columns) >= 80:  # room for the reason names whole: none is split mid-word
        for reason in ("outside_24h_window", "other", "template_param_count_mismatch"):
            assert re.search(rf"│ {reason} +│", result.output), reason


def test_report_without_messages_shows_no_funnel_of_zeros(tmp_path: Path) -> None:
    """A lake of conversation events only printed a delivery funnel of zeros and dashes and
    an empty failures table (and charted them), where it says why elsewhere."""
    records = [r for r in _records() if r.type != "message.status"]
    ke.Lake(tmp_path / "data").write_events(records)
    html = tmp_path / "r.html"
    result = runner.invoke(app, ["report", "--data", str(tmp_path / "data"), "--html", str(html)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert out.startswith("0 outbound messages, 2 conversations (1 open)")
    assert "(no message status events in the lake: no delivery funnel or failures)" in out
    assert "Delivery funnel" not in out
    assert "Top failures" not in out
    assert "time_to_close conversations 1 10.0 min 10.0 min" in table_rows(result.output)
    page = html.read_text(encoding="utf-8")
    assert "no delivery funnel or failures" in page
    assert "Delivery funnel" not in page  # no table, no chart
    assert "Failure reasons" not in page
    assert "Median and p90 times" in page


def test_report_on_inbound_messages_alone_does_not_say_the_lake_holds_no_messages(
    tmp_path: Path,
) -> None:
    """Inbound messages in Meta's shape carry no conversation id: a lake of them has no
    outbound message and no conversation, and the report said "no message or conversation
    events in the lake" over the inbound messages it holds."""
    from kirim_events.events import parse_delivery
    from kirim_events.testing import encode, meta_message

    received = [
        record
        for n in range(3)
        for record in parse_delivery(
            encode(meta_message(timestamp=int(at(n).timestamp()), wamid=f"wamid.IN{n}")),
            {"X-Kirim-Event": "message.received"},
            received_at=at(n + 1),
        )
    ]
    assert {r.type for r in received} == {"message.received"}
    ke.Lake(tmp_path).write_events(received)
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert out.startswith("0 outbound messages, 0 conversations (0 open)")
    assert "no message or conversation events" not in out
    assert "(no message status or conversation events in the lake; the lake's events" in out


def test_report_with_no_failure_says_so(tmp_path: Path) -> None:
    records = [r for r in _records() if r.status != "failed"]
    ke.Lake(tmp_path).write_events(records)
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "Top failures" not in out  # not a table with no rows
    assert "no message has a failed status" in out


@pytest.mark.parametrize("missing", ["altair", "vl_convert"])
def test_report_html_without_the_chart_libraries_fails_before_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """Without the [notebook] extra, --html printed the whole report, then the error."""
    ke.Lake(tmp_path / "data").write_events(_records())
    monkeypatch.setitem(__import__("sys").modules, missing, None)  # import raises ImportError
    html = tmp_path / "r.html"
    result = runner.invoke(app, ["report", "--data", str(tmp_path / "data"), "--html", str(html)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --html needs the charts' libraries")
    assert "pip install 'kirim-events[notebook]'" in result.output
    assert "outbound messages" not in result.output
    assert not html.exists()


def test_report_piped_to_a_reader_that_stops_early_still_writes_the_html(
    tmp_path: Path,
) -> None:
    """``kirim-events report --html r.html | head`` exited 1 with no file: the page was
    written after the tables, and the closed pipe stopped the command while printing them."""
    import os
    import subprocess
    import sys

    ke.Lake(tmp_path / "data").write_events(_records())
    html = tmp_path / "r.html"
    argv = [sys.executable, "-m", "kirim_events", "report", "--data", str(tmp_path / "data")]
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.Popen([*argv, "--html", str(html)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line is printed
    proc.wait(timeout=120)
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_html_report_charts_render_offline(tmp_path: Path) -> None:
    """The page's charts draw from what the page holds: its spec names no data URL, and
    Vega-Lite (vl-convert's bundled copy, no network) renders it with every chart's title."""
    import vl_convert

    lake = ke.Lake(tmp_path)
    lake.write_events(_records())
    page = write_html(build_report(lake), tmp_path / "r.html").read_text(encoding="utf-8")
    literal = page.split("const spec = ", 1)[1].split(";\n", 1)[0]
    assert '"url"' not in literal
    svg = vl_convert.vegalite_to_svg(json.loads(literal))
    for title in ("Delivery funnel", "Failure reasons", "Median and p90 times"):
        assert title in svg
    assert "Events received per day" in svg


def _axis_texts(svg: str, axis: str) -> list[str]:
    """The texts of the axis whose description starts with ``axis`` (``X-axis titled
    'messages'``), in a chart drawn to SVG: its tick labels, then its title."""
    group = svg.split(f'aria-label="{axis}', 1)[1].split("aria-label=", 1)[0]
    return re.findall(r"<text[^>]*>([^<]*)</text>", group)


def _young_lake(tmp_path: Path) -> ke.Lake:
    """A lake early on: one message sent (received a day late), one failed, one
    conversation assigned (no time to deliver, read or close yet): 2 events on its busier
    day of receipt."""
    lake = ke.Lake(tmp_path)
    lake.write_events(
        [
            status("wamid.A", "sent", 0, 86_400),
            status("wamid.B", "failed", 0, 1, error=(131047, "Re-engagement message")),
            conversation("evt_1", "assigned", "cnv_1", 0, 1, user="usr_a"),
        ]
    )
    return lake


def test_charts_of_a_few_messages_count_whole_messages(tmp_path: Path) -> None:
    """Over 1 or 2 messages (or events) the count axes had ticks at 0.0, 0.5, 1.0 (1.5,
    2.0): Vega's tickMinStep=1 still halves a domain that small."""
    import vl_convert

    lake = _young_lake(tmp_path)
    axes = {
        notebook.funnel_chart: "X-axis titled 'messages'",
        notebook.failures_chart: "X-axis titled 'messages'",
        notebook.health_chart: "Y-axis titled 'events'",
    }
    for chart, axis in axes.items():
        svg = vl_convert.vegalite_to_svg(chart(lake).to_dict())
        *ticks, _title = _axis_texts(svg, axis)
        most = 1 if chart is notebook.failures_chart else 2
        assert ticks == [str(n) for n in range(most + 1)], chart.__name__
    many = pl.DataFrame({"stage": ["messages"], "messages": [12], "share": [1.0]})
    svg = vl_convert.vegalite_to_svg(notebook.funnel_chart(many).to_dict())
    *ticks, _title = _axis_texts(svg, "X-axis titled 'messages'")
    assert ticks[0] == "0"
    assert all(t.isdigit() for t in ticks)  # Vega's own ticks, whole


def test_times_chart_without_a_time_yet_lays_out_its_rows(tmp_path: Path) -> None:
    """With no time known (nothing delivered, read, closed, and no assignment timed), the
    chart was a strip: the four metric names piled on one line, the axis labels on one
    point. Each metric has its own row, and the axis its ticks."""
    import vl_convert

    lake = _young_lake(tmp_path)
    summary = notebook.time_summary(lake, lake)
    assert summary["median"].null_count() == summary.height  # nothing to draw
    svg = vl_convert.vegalite_to_svg(notebook.times_chart(summary).to_dict())
    rows = re.findall(
        r'translate\(-?[\d.]+,(-?[\d.]+)\)"[^>]*>(time_to_\w+)</text>',
        svg.split('aria-label="Y-axis', 1)[1],
    )
    assert [name for _, name in rows] == [m for m, _ in notebook.TIME_METRICS]
    assert len({y for y, _ in rows}) == 4  # one row each
    *ticks, _title = _axis_texts(svg, "X-axis titled 'time (symlog scale)'")
    assert ticks == ["1 s", "10 s", "1 min", "10 min", "1 h", "10 h", "1 d", "10 d"]
    assert re.findall(r">(median|p90)</text>", svg) == ["median", "p90"]  # the legend's
    # times of 1 s to 5 s: the axis ends at the next tick (it ended at 5 s, its only tick
    # 1 s, the bars running off it)
    short = summary.with_columns(median=pl.lit(1.0), p90=pl.lit(5.0))
    svg = vl_convert.vegalite_to_svg(notebook.times_chart(short).to_dict())
    *ticks, _title = _axis_texts(svg, "X-axis titled 'time (symlog scale)'")
    assert ticks == ["1 s", "10 s"]


def test_html_report_as_of_before_any_receipt_has_no_chart_of_receipts(tmp_path: Path) -> None:
    """As of an instant when the events had happened but none had been received (the
    demo's lake, whose events are dated the day before it ran), the page drew "Events
    received per day" as an empty frame with one tick, 0."""
    lake = ke.Lake(tmp_path)
    lake.write_events(_records())  # each received a second after it happened
    before = build_report(lake.as_of(at(0.5)))  # the first events happened, none came
    assert before.n_messages == 5
    page = write_html(before, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Delivery funnel" in page
    assert "Events received per day" not in page
    later = write_html(build_report(lake), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Events received per day" in later


def test_report_of_a_lake_of_refused_deliveries_says_so(tmp_path: Path) -> None:
    """A collector whose secret is not Kirim's stores only its refusals; the report said
    "the lake holds no events yet: kirim-events compact flushes what collect received", a
    command that cannot help. It names the rejected (and quarantined) deliveries now."""
    import asyncio
    import time

    import httpx

    from kirim_events import testing
    from kirim_events.journal import Journal
    from kirim_events.receiver import Receiver

    now = time.time()
    unreadable = b"not json"
    requests = [
        testing.signed_request(testing.kirim_event(), "whsec_kirims", timestamp=int(now)),
        testing.signed_request(testing.kirim_event(), "whsec_kirims", timestamp=int(now)),
        testing.signed_request(unreadable, "whsec_ours", timestamp=int(now)),
    ]

    async def deliver(receiver: Receiver) -> list[int]:
        transport = httpx.ASGITransport(app=receiver)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as c:
            return [
                (await c.post("/webhooks/kirim", content=r.body, headers=r.headers)).status_code
                for r in requests
            ]

    with Journal(tmp_path) as journal:
        codes = asyncio.run(deliver(Receiver(journal, ["whsec_ours"], now=lambda: now)))
        journal.flush(ke.Lake(tmp_path))
    assert codes == [401, 401, 200]
    result = runner.invoke(app, ["report", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "of the webhook deliveries received, 2 were rejected (a signature that" in said
    assert "KIRIM_WEBHOOK_SECRET" in said
    assert "and 1 was quarantined (signed, but not a body" in said
    assert "compact" not in said


def test_report_figures_equal_plain_polars_over_an_emulated_lake(tmp_path: Path) -> None:
    """The printed funnel, rates, failure counts and delivery times, recomputed from the
    lake's raw status events with plain Polars (not the helpers the report uses)."""
    from datetime import UTC, datetime

    from kirim_events.emulator import Emulator
    from kirim_events.events import parse_delivery
    from kirim_events.journal import Journal

    emu = Emulator(seed=2)
    emu.subscribe("https://example.test/webhooks/kirim")
    with Journal(tmp_path) as journal:
        for d in emu.iter_deliveries(1500):
            received = datetime.fromtimestamp(d.sent_at, UTC)
            journal.append(parse_delivery(d.body, d.headers, received_at=received))
        journal.flush(ke.Lake(tmp_path))
    result = runner.invoke(app, ["report", "--data", str(tmp_path), "--top", "1000"])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)

    known = ["sent", "delivered", "read", "failed"]
    events = ke.Lake(tmp_path).events(type="message.status").collect()
    statuses = events.filter(pl.col("message_id").is_not_null() & pl.col("status").is_in(known))
    first = {s: pl.col("occurred_at").filter(pl.col("status") == s).min() for s in known}
    per = statuses.group_by("message_id").agg(**{s: t for s, t in first.items()})
    seen = {s: pl.col(s).is_not_null() for s in known}
    counts = per.select(
        messages=pl.len(),
        sent=(seen["sent"] | seen["delivered"] | seen["read"]).sum(),
        delivered=(seen["delivered"] | seen["read"]).sum(),
        read=seen["read"].sum(),
        failed=(seen["failed"] & ~seen["delivered"] & ~seen["read"]).sum(),
    ).row(0, named=True)
    assert counts["failed"] > 0  # a lake worth checking
    assert counts["read"] > 0
    for stage, n in counts.items():
        assert any(r.startswith(f"{stage} {n:,} ") for r in rows), (stage, n)
    rates = (counts["delivered"] / counts["sent"], counts["read"] / counts["delivered"])
    assert f"delivery rate {rates[0]:.1%}, read rate {rates[1]:.1%}" in result.output

    earliest = statuses.filter(pl.col("status") == "failed").sort("occurred_at", "received_at")
    codes = earliest.group_by("message_id").agg(pl.col("error_code").first())
    assert codes.height > 1
    for code, n in codes.drop_nulls().group_by("error_code").len().iter_rows():
        assert any(re.search(rf" {code} .* {n} \S+%$", r) for r in rows), (code, n)

    seconds = per.select(
        (pl.col("delivered") - pl.col("sent")).dt.total_microseconds() / 1e6
    ).to_series()
    deliver = next(r for r in rows if r.startswith("time_to_deliver "))
    assert deliver.split()[2] == f"{seconds.drop_nulls().len():,}"
