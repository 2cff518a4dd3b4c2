"""The analytics report: every summary of a lake in one object, and its HTML page.

``build_report(lake)`` collects the figures; ``headline`` / ``notes`` / ``tables`` put them
into words and rows, which ``kirim-events report`` prints in the terminal and
``write_html(report, path)`` writes, with the charts, as one offline page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from kirim_events.analytics import notebook
from kirim_events.lake.reader import reread

if TYPE_CHECKING:
    from kirim_events.lake import Lake

__all__ = [
    "Report",
    "Table",
    "build_report",
    "headline",
    "is_empty",
    "notes",
    "report_html",
    "tables",
    "write_html",
]


@dataclass(frozen=True)
class Report:
    """Summaries of one lake (as of ``as_of`` when set)."""

    as_of: datetime | None
    n_messages: int
    n_conversations: int
    n_open_conversations: int
    funnel: pl.DataFrame
    read_rate: float | None
    delivery_rate: float | None
    failures: pl.DataFrame
    times: pl.DataFrame
    health: pl.DataFrame
    anomalies: dict[str, int]
    span: tuple[datetime, datetime] | None = None
    """Event times of the lake's first and last events, whatever ``as_of``."""


def build_report(lake: Lake) -> Report:
    """Collect the funnel, rates, failure reasons, times, health and anomaly counts.

    Parameters
    ----------
    lake
        A :class:`kirim_events.Lake` (or its ``as_of`` view).

    Raises
    ------
    FileNotFoundError, OSError, duckdb.IOException, duckdb.InvalidInputException
        A compaction (in another process) deleted files the report had planned to read
        (:func:`~kirim_events.lake.reader.vanished_file`; on S3 an OSError when an object
        went between pyarrow's HEAD and GET), each of
        :data:`~kirim_events.lake.reader.READ_ATTEMPTS` times it planned them afresh
        (:func:`~kirim_events.lake.reader.reread`): nothing is lost; run it again.
    StorageError
        The lake's storage failed; on S3, a request denied or left unanswered, in one line
        naming the lake and what to check.
    """
    # the whole report planned again: its frames are planned as it goes, and one planned
    # before a compaction finished reads files the compaction deleted
    return reread(lambda: _build_report(lake), storage=lake.storage)


def _build_report(lake: Lake) -> Report:
    timelines = lake.message_timelines().collect()
    lifecycles = lake.conversation_lifecycles().collect()
    flags = ("out_of_order", "read_without_delivered", "failed_after_delivered", "never_sent")
    anomalies = {flag: int(timelines[flag].sum()) for flag in flags}
    anomalies["n_duplicates"] = int(timelines["n_duplicates"].fill_null(0).sum())
    anomalies["missing_opening"] = int(lifecycles["missing_opening"].sum())
    anomalies["missing_first_assignment"] = int(lifecycles["missing_first_assignment"].sum())
    anomalies["n_missing_assignments"] = int(lifecycles["n_missing_assignments"].sum())
    return Report(
        as_of=lake.as_of_ts,
        n_messages=timelines.height,
        n_conversations=lifecycles.height,
        n_open_conversations=int(lifecycles["is_open"].sum()),
        funnel=notebook.funnel(timelines),
        read_rate=notebook.read_rate(timelines),
        delivery_rate=notebook.delivery_rate(timelines),
        failures=notebook.failure_reasons(timelines),
        times=notebook.time_summary(timelines, lifecycles),
        health=lake.delivery_health().collect(),
        anomalies=anomalies,
        span=lake.span(),
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _duration(seconds: float | None) -> str:
    """Seconds as a reader thinks of them: 12.5 s, 4.2 min, 3.1 h."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_ANOMALY_LABELS = {
    "out_of_order": "messages with a status that arrived out of order",
    "read_without_delivered": "messages read, never seen delivered",
    "failed_after_delivered": "messages both failed and delivered",
    "never_sent": "messages with no sent status seen",
    "n_duplicates": "extra copies of status events received (beyond the first)",
    "missing_opening": "conversations whose opening was never seen",
    "missing_first_assignment": "conversations whose first assignment was never seen",
    "n_missing_assignments": "reassignments never seen",
}


@dataclass(frozen=True)
class Table:
    """One table of the report as text: what the terminal and the HTML page show."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    caption: str = ""


def _second(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S")


def _reasons(n: int) -> str:
    return "reason" if n == 1 else "reasons"


def _when(report: Report) -> str:
    return f" as of {_second(report.as_of)} UTC" if report.as_of else ""


def headline(report: Report) -> str:
    """``5 outbound messages, 2 conversations (1 open)``, and the instant of an as-of."""
    messages = "message" if report.n_messages == 1 else "messages"
    conversations = "conversation" if report.n_conversations == 1 else "conversations"
    return (
        f"{report.n_messages:,} outbound {messages}, {report.n_conversations:,} "
        f"{conversations} ({report.n_open_conversations:,} open){_when(report)}"
    )


def is_empty(report: Report) -> bool:
    """No message and no conversation to show: the tables would be zeros."""
    return report.n_messages == 0 and report.n_conversations == 0


def _refused(report: Report) -> str:
    """The webhook deliveries the collector refused (by ``as_of``), in words; "" for none."""
    said = []
    rejected = int(report.health["rejected"].sum())
    if rejected:
        said.append(
            f"{rejected:,} {'was' if rejected == 1 else 'were'} rejected (a signature that "
            "matched no secret in KIRIM_WEBHOOK_SECRET, or a body too large or too slow: the "
            "reason column of the deliveries table says which)"
        )
    quarantined = int(report.health["quarantined"].sum())
    if quarantined:
        said.append(
            f"{quarantined:,} {'was' if quarantined == 1 else 'were'} quarantined (signed, "
            "but not a body kirim-events could read: kept byte for byte in quarantine/)"
        )
    return " and ".join(said)


def notes(report: Report) -> list[str]:
    """When the lake's events happened; and why there is nothing to show, when so."""
    if report.span is None:
        refused = _refused(report)
        if refused:
            # "compact flushes what collect received" sent the analyst of a collector with a
            # wrong secret, which stored nothing but its refusals, to a command that cannot help
            return [f"(the lake holds no events: of the webhook deliveries received, {refused})"]
        return [
            "(the lake holds no events yet: `kirim-events compact` flushes what `collect` "
            "received, `kirim-events demo` makes an example lake)"
        ]
    first, last = report.span
    happened = f"the lake's events happened from {_second(first)} to {_second(last)} UTC"
    if not is_empty(report):
        said = [happened[0].upper() + happened[1:]]
        if report.n_messages == 0:
            said.append(
                f"(no message status events in the lake{_when(report)}: "
                "no delivery funnel or failures)"
            )
        return said
    if report.as_of is not None and report.as_of < first:
        return [f"(no events had happened by {_second(report.as_of)} UTC: {happened})"]
    # "no message ... events" was said over a lake of inbound messages (Meta's carry no
    # conversation id): what is missing is the statuses of sent messages, and conversations
    return [f"(no message status or conversation events in the lake{_when(report)}; {happened})"]


def tables(report: Report, *, top: int, more: str = "--top {top}") -> list[Table]:
    """The funnel, failure reasons (``top`` of them), times and anomaly counts; without
    messages no funnel and no failures (``notes`` says so), without a failure no failures.

    ``more`` names how to see the reasons past ``top`` (``{top}`` is filled in).
    """
    rates = (
        f"delivery rate {_percent(report.delivery_rate)}, read rate {_percent(report.read_rate)}"
    )
    funnel = Table(
        "Delivery funnel",
        ("stage", "messages", "share", "of previous"),
        [
            (
                r["stage"],
                f"{r['messages']:,}",
                _percent(r["share"]),
                _percent(r["share_of_previous"]),
            )
            for r in report.funnel.iter_rows(named=True)
        ],
        rates if report.failures.height else f"{rates}; no message has a failed status",
    )
    rest = report.failures.height - top
    failures = Table(
        "Top failures",
        ("reason", "code", "title", "messages", "share"),
        [
            (
                r["error_label"],
                r["error_code"] or "-",
                r["error_title"] or "-",
                f"{r['messages']:,}",
                _percent(r["share"]),
            )
            for r in report.failures.head(top).iter_rows(named=True)
        ],
        # the funnel's failed stage counts final statuses; this table, every failed message
        "every message with a failed status, also those delivered after it"
        + (f"; {rest} more {_reasons(rest)} past {more.format(top=top)}" if rest > 0 else ""),
    )
    times = Table(
        "Times",
        ("time", "of", "n", "median", "p90"),
        [
            (r["metric"], r["of"], f"{r['n']:,}", _duration(r["median"]), _duration(r["p90"]))
            for r in report.times.iter_rows(named=True)
        ],
    )
    flags = Table(
        "What the data could not show cleanly",
        ("anomaly", "count"),
        [(_ANOMALY_LABELS.get(k, k), f"{v:,}") for k, v in report.anomalies.items()],
    )
    if report.n_messages == 0:
        return [times, flags]
    return [funnel, failures, times, flags] if report.failures.height else [funnel, times, flags]


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    caption = f'<p class="caption">{escape(table.caption)}</p>' if table.caption else ""
    return (
        f"<h2>{escape(table.title)}</h2>\n<table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{caption}"
    )


_STYLE = (
    "<style>.kirim-report{font-family:sans-serif;max-width:60em}"
    ".kirim-report table{border-collapse:collapse}"
    ".kirim-report th,.kirim-report td{border-bottom:1px solid #ddd;padding:2px 10px;"
    "text-align:left}.kirim-report .caption{color:#555;font-size:90%}</style>"
)


def report_html(report: Report, *, top: int = 10) -> str:
    """The report's words and tables as an HTML fragment (every value escaped: error titles
    are webhook text)."""
    parts = [f"<h1>{escape(headline(report))}</h1>"]
    parts += [f"<p>{escape(line)}</p>" for line in notes(report)]
    if not is_empty(report):
        parts += [_html_table(t) for t in tables(report, top=top)]
    return _STYLE + '<div class="kirim-report">' + "\n".join(parts) + "</div>"


def write_html(report: Report, path: str | Path, *, top: int = 10) -> Path:
    """Write the report to a self-contained HTML file (opens offline): the terminal's figures
    as tables, then the charts; the failures chart shows the ``top`` most frequent reasons,
    like the table. A report with nothing to show has no charts; one without messages has
    no funnel chart, without failures no failures chart, and without an event received (by
    its ``as_of``) no chart of events received per day."""
    title = f"kirim-events report{_when(report)}"
    words = report_html(report, top=top)
    if is_empty(report):
        target = Path(path).expanduser()
        target.write_text(notebook.plain_page(title, words), encoding="utf-8")
        return target
    charts = []
    if report.n_messages:
        charts.append(notebook.funnel_chart(report.funnel))
    if report.failures.height:
        charts.append(notebook.failures_chart(report.failures, top=top))
    charts.append(notebook.times_chart(report.times))
    # as of an instant before the collector received anything (the demo's events, dated the
    # day before it ran), no day has events: the chart was an empty frame with one tick, 0
    if report.health["n_events"].is_not_null().any():
        charts.append(notebook.health_chart(report.health))
    return notebook.save_html(charts, path, title=title, preface=words)
