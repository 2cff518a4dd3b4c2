"""Notebook helpers: delivery funnel, read rate, failure reasons, time percentiles, charts.

The summaries take the frames of :mod:`~kirim_events.analytics.timelines` and
:mod:`~kirim_events.analytics.conversations` (DataFrame or LazyFrame) and return small Polars
DataFrames. The charts are Altair (the ``[notebook]`` extra, imported only when a chart is
asked for); :func:`save_html` writes a self-contained page with the Vega JavaScript inlined
(through ``vl-convert-python``), so the report opens offline, with no CDN; in a notebook,
:func:`enable_offline_charts` switches Altair to locally drawn SVG for the same reason.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import duckdb
import polars as pl

from kirim_events.analytics._common import lazy, type_named
from kirim_events.errors import ConfigError, LakeError
from kirim_events.lake.reader import READ_ATTEMPTS, VANISHED_ERRORS, reread, vanished_file

if TYPE_CHECKING:
    import altair

    from kirim_events.lake import Lake

__all__ = [
    "TIME_METRICS",
    "delivery_rate",
    "enable_offline_charts",
    "failure_reasons",
    "failures_chart",
    "funnel",
    "funnel_chart",
    "health_chart",
    "read_rate",
    "save_html",
    "time_summary",
    "times_chart",
]

# A frame of helper rows, a DuckDB relation of them, or a Lake to ask for them (see _df)
Frame: TypeAlias = "pl.DataFrame | pl.LazyFrame | duckdb.DuckDBPyRelation | Lake"

TIME_METRICS = (
    ("time_to_deliver", "messages"),
    ("time_to_read", "messages"),
    ("time_to_first_assignment", "conversations"),
    ("time_to_close", "conversations"),
)


def _df(frame: Frame, helper: str = "message_timelines") -> pl.DataFrame:
    """``frame`` as a DataFrame: a LazyFrame is collected, a DuckDB relation (such as
    ``lake.sql("select * from message_timelines")``) converted as the core functions convert
    it (:func:`~kirim_events.analytics._common.lazy`), and a Lake asked for ``helper`` (the
    frame the summary reads).

    A frame or relation reads the files there when it was made, and a compaction since then
    may have deleted them: a LakeError then, saying to take a new one (this one cannot be
    planned again). A Lake is asked for a new frame instead, and read again
    (:func:`~kirim_events.lake.reader.reread`); a LakeError only when a compaction deleted
    the files of each of those."""
    if isinstance(frame, pl.LazyFrame | pl.DataFrame | duckdb.DuckDBPyRelation):
        try:
            return lazy(frame).collect()
        except VANISHED_ERRORS as exc:
            if not vanished_file(exc):
                raise
            raise LakeError(
                f"a file this frame reads is gone ({_first_line(exc)}): a frame or "
                "relation from a Lake reads the files there when it was made, and a "
                "compaction since then replaced them (nothing is lost); take a new one, "
                f"e.g. lake.{helper}(), and run again"
            ) from exc
    ask = getattr(frame, helper, None)
    if callable(ask):  # a Lake, or a Lake as of an instant
        try:
            return reread(lambda: lazy(ask()).collect(), storage=getattr(frame, "storage", None))
        except VANISHED_ERRORS as exc:
            if not vanished_file(exc):
                raise
            raise LakeError(
                f"a file this read planned is gone ({_first_line(exc)}): compactions "
                f"finishing meanwhile replaced the files it planned, each of the "
                f"{READ_ATTEMPTS} times it took a new lake.{helper}() (nothing is lost); "
                "run it again"
            ) from exc
    raise TypeError(
        f"expected a Polars DataFrame or LazyFrame, a DuckDB relation or a Lake "
        f"(of {helper} rows), got {type_named(frame)}"
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _WrongColumns(ValueError):
    """A summary was given a frame that is not the helper rows it reads."""


def _columns_shown(rows: pl.DataFrame) -> str:
    return ", ".join(rows.columns[:8]) + (", ..." if rows.width > 8 else "")


def _rows(
    frame: Frame, what: str, columns: tuple[str, ...], helper: str = "message_timelines"
) -> pl.DataFrame:
    """``frame`` as a DataFrame (:func:`_df`) holding ``columns``; else a ValueError naming
    the helper whose rows ``what`` reads (``funnel(lifecycles)`` raised Polars' bare
    ``"reached_sent" not found``)."""
    rows = _df(frame, helper)
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise _WrongColumns(
            f"{what} reads {helper} rows (columns {', '.join(columns)}); got a frame with "
            f"columns {_columns_shown(rows)}"
        )
    return rows


def _summary(
    frame: Frame,
    columns: tuple[str, ...],
    what: str,
    of_lake: Callable[[Lake], pl.DataFrame],
    of_rows: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """What a chart draws: ``frame`` itself when it has the summary's ``columns``; else, of
    a Lake, ``of_lake``; of the helper rows a summary is made of, ``of_rows``
    (``funnel_chart(timelines)`` built a chart that failed only when shown)."""
    if not isinstance(frame, (pl.DataFrame, pl.LazyFrame, duckdb.DuckDBPyRelation)):
        return of_lake(frame)
    rows = _df(frame)
    if set(columns) <= set(rows.columns):
        return rows
    try:
        if of_rows is not None:
            return of_rows(rows)
    except (_WrongColumns, pl.exceptions.ColumnNotFoundError):
        pass
    shown = _columns_shown(rows)
    source = "" if of_rows is None else ", message timelines (summarised first)"
    raise ValueError(
        f"{what} draws a frame with columns {', '.join(columns)}{source} or a Lake; "
        f"got one with columns {shown}"
    )


def funnel(timelines: Frame) -> pl.DataFrame:
    """Messages reaching each stage: all, sent, delivered, read; and failed.

    A stage counts as reached when a higher one was (``read`` without ``delivered`` still
    counts as delivered). ``failed`` counts messages whose final status is failed.

    Returns
    -------
    polars.DataFrame
        ``stage``, ``messages``, ``share`` (of all messages), ``share_of_previous``
        (of the stage before; null for ``messages`` and ``failed``).

    Examples
    --------
    >>> import polars as pl
    >>> t = pl.DataFrame({"status": ["read", "sent"], "reached_sent": [True, True],
    ...                   "reached_delivered": [True, False]})
    >>> funnel(t)["messages"].to_list()
    [2, 2, 1, 1, 0]
    """
    t = _rows(timelines, "funnel", ("status", "reached_sent", "reached_delivered"))
    total = t.height
    counts = [
        ("messages", total),
        ("sent", int(t["reached_sent"].sum())),
        ("delivered", int(t["reached_delivered"].sum())),
        ("read", int((t["status"] == "read").sum())),
        ("failed", int((t["status"] == "failed").sum())),
    ]
    rows = []
    for i, (stage, n) in enumerate(counts):
        previous = counts[i - 1][1] if 0 < i < 4 else None
        rows.append(
            {
                "stage": stage,
                "messages": n,
                "share": n / total if total else None,
                "share_of_previous": n / previous if previous else None,
            }
        )
    schema = {
        "stage": pl.String,
        "messages": pl.Int64,
        "share": pl.Float64,
        "share_of_previous": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def read_rate(timelines: Frame) -> float | None:
    """Read messages / delivered messages (None when nothing was delivered)."""
    t = _rows(timelines, "read_rate", ("status", "reached_delivered"))
    delivered = int(t["reached_delivered"].sum())
    return int((t["status"] == "read").sum()) / delivered if delivered else None


def delivery_rate(timelines: Frame) -> float | None:
    """Delivered messages / sent messages (None when nothing was sent)."""
    t = _rows(timelines, "delivery_rate", ("reached_sent", "reached_delivered"))
    sent = int(t["reached_sent"].sum())
    return int(t["reached_delivered"].sum()) / sent if sent else None


def failure_reasons(timelines: Frame) -> pl.DataFrame:
    """Messages that failed, by error: Kirim's label (§6.1; ``other`` for an unknown code,
    ``no_error_code`` when the failure carried none) and code.

    Every message with a failed status event counts, including the few later delivered
    (``failed_after_delivered``), so the total can exceed the funnel's ``failed`` stage,
    which counts final statuses.

    Returns
    -------
    polars.DataFrame
        ``error_label``, ``error_code``, ``error_title`` (the most common one),
        ``messages``, ``share`` (of failed messages); most frequent first.
    """
    reads = ("failed_at", "error_label", "error_code", "error_title")
    failed = _rows(timelines, "failure_reasons", reads).filter(pl.col("failed_at").is_not_null())
    total = failed.height
    return (
        failed.with_columns(pl.col("error_label").fill_null("no_error_code"))
        .group_by("error_label", "error_code")
        .agg(
            pl.col("error_title").drop_nulls().mode().sort().first(),
            pl.len().cast(pl.Int64).alias("messages"),
        )
        .with_columns(share=pl.col("messages") / total if total else pl.lit(None, pl.Float64))
        .sort(["messages", "error_label", "error_code"], descending=[True, False, False])
    )


def time_summary(timelines: Frame, lifecycles: Frame | None = None) -> pl.DataFrame:
    """Median and 90th percentile (linear interpolation) of each time, in seconds.

    ``lifecycles`` may be ``conversation_cycles`` rows instead: each open -> close cycle
    then counts apart, and ``of`` says ``cycles``.

    Returns
    -------
    polars.DataFrame
        ``metric``, ``of`` (messages, conversations or cycles), ``n`` (rows with a value),
        ``median``, ``p90``, ``mean``.
    """

    def reads(of: str) -> tuple[str, ...]:
        return tuple(metric for metric, kind in TIME_METRICS if kind == of)

    frames = {"messages": _rows(timelines, "time_summary", reads("messages"))}
    if lifecycles is not None:
        frames["conversations"] = _rows(
            lifecycles, "time_summary", reads("conversations"), "conversation_lifecycles"
        )
    # cycles (conversation_cycles rows) were labelled "conversations", the numbers theirs
    per_cycle = "conversations" in frames and "cycle" in frames["conversations"].columns
    shown = {"conversations": "cycles"} if per_cycle else {}
    rows: list[dict[str, Any]] = []
    for metric, of in TIME_METRICS:
        if of not in frames:
            continue
        values = frames[of][metric].drop_nulls()
        rows.append(
            {
                "metric": metric,
                "of": shown.get(of, of),
                "n": values.len(),
                "median": values.quantile(0.5, "linear"),
                "p90": values.quantile(0.9, "linear"),
                "mean": values.mean(),
            }
        )
    schema = {
        "metric": pl.String,
        "of": pl.String,
        "n": pl.Int64,
        "median": pl.Float64,
        "p90": pl.Float64,
        "mean": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


# --------------------------------------------------------------------------- charts


def _alt() -> Any:
    try:
        import altair as alt
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigError("charts need Altair: pip install 'kirim-events[notebook]'") from None
    return alt


def require_chart_libraries() -> None:
    """Raise ConfigError unless Altair and ``vl-convert-python`` (which inlines the charts'
    JavaScript into a page) can be imported: what :func:`save_html` needs."""
    missing = []
    for module, package in (("altair", "altair"), ("vl_convert", "vl-convert-python")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ConfigError(
            f"needs the charts' libraries ({', '.join(missing)} missing): "
            "pip install 'kirim-events[notebook]'"
        )


def _count_axis(alt: Any, most: object) -> Any:
    """An axis of whole counts (messages, events) whose largest value is ``most``.

    Vega's ``tickMinStep=1`` keeps the ticks whole from 3 up, but over a domain of 1 it
    still asks for two steps (0, 0.5, 1) and over 2 for four: a young lake's charts showed
    half messages. There the ticks are given, one per whole number."""
    top = most if isinstance(most, int | float) else 0
    if top < 3:
        return alt.Axis(tickMinStep=1, values=list(range(int(top) + 1)), format="d")
    return alt.Axis(tickMinStep=1)


def funnel_chart(funnel_frame: Frame) -> altair.Chart:
    """Horizontal bars: messages per funnel stage (from :func:`funnel`, or of a Lake)."""
    alt = _alt()
    data = _summary(funnel_frame, ("stage", "messages", "share"), "funnel_chart", funnel, funnel)
    chart: altair.Chart = (
        alt.Chart(data, title="Delivery funnel")
        .mark_bar()
        .encode(
            x=alt.X("messages:Q", title="messages", axis=_count_axis(alt, data["messages"].max())),
            y=alt.Y("stage:N", sort=None, title=None),
            tooltip=["stage", "messages", alt.Tooltip("share:Q", format=".1%")],
        )
    )
    return chart


def failures_chart(reasons: Frame, *, top: int = 10) -> altair.Chart:
    """Bars: failed messages per error label (from :func:`failure_reasons`, or of a Lake):
    the ``top`` most frequent (1 or more)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        # Polars' head(-1) is every row but the last: top=-1 dropped one reason unseen
        raise ValueError(f"failures_chart: top must be a whole number, 1 or more, got {top!r}")
    alt = _alt()
    data = (
        _summary(
            reasons,
            ("error_label", "error_code", "error_title", "messages"),
            "failures_chart",
            failure_reasons,
            failure_reasons,
        )
        .head(top)
        .with_columns(
            reason=pl.col("error_label") + " (" + pl.col("error_code").fill_null("?") + ")"
        )
    )
    chart: altair.Chart = (
        alt.Chart(data, title="Failure reasons")
        .mark_bar()
        .encode(
            x=alt.X("messages:Q", axis=_count_axis(alt, data["messages"].max())),
            # labelLimit 0: the whole "label (code)", not cut before the code
            y=alt.Y("reason:N", sort="-x", title=None, axis=alt.Axis(labelLimit=0)),
            tooltip=["error_label", "error_code", "error_title", "messages"],
        )
    )
    return chart


_TIME_TICKS = (1, 10, 60, 600, 3600, 36_000, 86_400, 864_000)
_TIME_LABEL = (
    "datum.value >= 86400 ? (datum.value / 86400) + ' d'"
    " : datum.value >= 3600 ? (datum.value / 3600) + ' h'"
    " : datum.value >= 60 ? (datum.value / 60) + ' min' : datum.value + ' s'"
)


def times_chart(summary: Frame) -> altair.Chart:
    """Median and p90 of each time metric, in seconds (from :func:`time_summary`, or of a
    Lake: its messages' and conversations' times)."""
    alt = _alt()
    columns = ("metric", "of", "median", "p90")
    data = _summary(
        summary, columns, "times_chart", lambda lake: time_summary(lake, lake), time_summary
    ).unpivot(
        index=["metric", "of"], on=["median", "p90"], variable_name="stat", value_name="seconds"
    )
    # The stats and the time axis are given: Vega-Lite leaves the rows without a value out
    # of the scales, so a young lake's chart (no message delivered, no conversation closed)
    # drew a strip with its metric names piled up on one line. The axis ends at the first
    # tick past the longest time (times of 5 s had one tick, 1 s, and bars running off it)
    stats = alt.Scale(domain=["median", "p90"])
    longest = cast("float | None", data["seconds"].max())
    end = (
        _TIME_TICKS[-1] if longest is None else next((t for t in _TIME_TICKS if t >= longest), None)
    )
    seconds = alt.Scale(type="symlog") if end is None else alt.Scale(type="symlog", domain=[0, end])
    chart: altair.Chart = (
        alt.Chart(data, title="Median and p90 times")
        .mark_bar()
        .encode(
            # a tick at each step a reader thinks in (1 s, 10 s, 1 min, 10 min, 1 h, 10 h, 1 d,
            # 10 d)
            x=alt.X(
                "seconds:Q",
                scale=seconds,
                title="time (symlog scale)",
                axis=alt.Axis(values=list(_TIME_TICKS), labelExpr=_TIME_LABEL),
            ),
            # messages' times, then conversations', as in the summary
            y=alt.Y("metric:N", title=None, sort=[m for m, _ in TIME_METRICS]),
            yOffset=alt.YOffset("stat:N", scale=stats),
            color=alt.Color("stat:N", scale=stats),
            tooltip=["metric", "stat", alt.Tooltip("seconds:Q", format=".1f")],
        )
    )
    return chart


def health_chart(health: Frame) -> altair.Chart:
    """Stacked bars: events first received per day, by event type (from ``delivery_health``).

    Webhook deliveries (all copies) and the retry rate are in the tooltip when receipts exist.
    """
    alt = _alt()
    columns = ("day", "event_type", "n_events", "deliveries", "retry_rate")
    data = (
        _summary(health, columns, "health_chart", lambda lake: _df(lake, "delivery_health"))
        .filter(pl.col("n_events").is_not_null())
        .select(pl.col("day").cast(pl.String), "event_type", "n_events", "deliveries", "retry_rate")
    )
    per_day = data.group_by("day").agg(pl.col("n_events").sum())["n_events"]
    chart: altair.Chart = (
        alt.Chart(data, title="Events received per day")
        .mark_bar()
        .encode(
            x=alt.X("day:O", title="day (UTC, received)"),
            # stacked: the tallest bar is a day's events of every type
            y=alt.Y("n_events:Q", title="events", axis=_count_axis(alt, per_day.max())),
            color="event_type:N",
            tooltip=[
                "day",
                "event_type",
                "n_events",
                "deliveries",
                alt.Tooltip("retry_rate:Q", format=".1%"),
            ],
        )
    )
    return chart


def enable_offline_charts() -> str:
    """Render Altair charts in notebooks as inline SVG (drawn locally by vl-convert).

    Altair's default ``html`` renderer loads Vega from a CDN, so charts stay blank without
    network; ``svg`` needs none (charts are static: no tooltips). Returns the renderer name.
    """
    alt = _alt()
    alt.renderers.enable("svg")
    return "svg"


class _ScriptSafeJSON(json.JSONEncoder):
    """JSON that can sit inside an HTML ``<script>``: ``<``, ``>`` and ``&`` escaped (as
    ``\\u003c`` ...), so a ``</script>`` or ``<!--`` in the data (an error title from a
    webhook) cannot end the script and run its own; the decoded values are the same."""

    def encode(self, o: Any) -> str:
        text = super().encode(o)
        for char in "<>&\u2028\u2029":
            text = text.replace(char, f"\\u{ord(char):04x}")
        return text


def save_html(
    charts: altair.TopLevelMixin | Sequence[altair.TopLevelMixin],
    path: str | Path,
    *,
    title: str = "kirim-events report",
    preface: str = "",
) -> Path:
    """Write the charts, stacked, to one self-contained HTML file (no network needed).

    ``charts``: one chart (a concatenation such as ``a & b`` included) or a list of them.
    ``preface``: HTML put above the charts, as it is (escape what it quotes). ``path`` may
    start with ``~`` (the home folder). Returns the path written.

    Raises
    ------
    ConfigError
        Altair or ``vl-convert-python`` (which supplies the inlined JavaScript) is missing.
    """
    alt = _alt()
    # one chart (save_html(chart) raised KeyError: 0), or several
    one = isinstance(charts, alt.TopLevelMixin)
    items: list[Any] = [charts] if one else list(cast("Sequence[Any]", charts))
    if not items:
        raise ConfigError("no charts to write: save_html needs at least one")
    wrong = [type(c).__name__ for c in items if not isinstance(c, alt.TopLevelMixin)]
    if wrong:
        raise TypeError(f"save_html takes Altair charts, got {', '.join(wrong)}")
    page = alt.vconcat(*items, title=title).resolve_scale(color="independent")
    try:
        html = page.to_html(inline=True, json_kwds={"cls": _ScriptSafeJSON})
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"cannot inline the chart JavaScript ({exc}); install vl-convert-python"
        ) from None
    if "<title>" not in html:  # a browser tab and a bookmark name the report
        html = html.replace("<head>", f"<head>\n<title>{escape(title)}</title>", 1)
    if preface:
        # after the page's own <body>, the last one: the inlined vega-embed bundle in <head>
        # holds "<head>${t}</head><body>" in a JavaScript template literal, where the first
        # replace put the preface (shown by no browser; a backtick in it broke the charts).
        # Nothing after the real one can hold "<body>": the spec's "<" are escaped
        head, body, rest = html.rpartition("<body>")
        html = f"{head}{body}\n{preface}{rest}" if body else html
    target = Path(path).expanduser()  # "~/report.html", as Polars and pandas writers take it
    target.write_text(html, encoding="utf-8")
    return target


def plain_page(title: str, body: str) -> str:
    """A whole HTML page around ``body`` (as it is), for a report with no chart."""
    return (
        f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}'
        f"</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
