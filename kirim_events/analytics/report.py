"""The analytics report: every summary of a lake in one object, and its HTML page.

``build_report(lake)`` is what ``kirim-events report`` renders in the terminal;
``write_html(report, path)`` writes the charts as one offline page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from kirim_events.analytics import notebook

if TYPE_CHECKING:
    from kirim_events.analytics import AnalyticsMixin

__all__ = ["Report", "build_report", "write_html"]


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


def build_report(lake: AnalyticsMixin) -> Report:
    """Collect the funnel, rates, failure reasons, times, health and anomaly counts.

    Parameters
    ----------
    lake
        A :class:`kirim_events.Lake` (or its ``as_of`` view).
    """
    timelines = lake.message_timelines().collect()
    lifecycles = lake.conversation_lifecycles().collect()
    flags = ("out_of_order", "read_without_delivered", "failed_after_delivered", "never_sent")
    anomalies = {flag: int(timelines[flag].sum()) for flag in flags}
    anomalies["n_duplicates"] = int(timelines["n_duplicates"].fill_null(0).sum())
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
    )


def write_html(report: Report, path: str | Path, *, top: int = 10) -> Path:
    """Write the report's charts to a self-contained HTML file (opens offline); the failures
    chart shows the ``top`` most frequent reasons, like the terminal table."""
    charts = [
        notebook.funnel_chart(report.funnel),
        notebook.failures_chart(report.failures, top=top),
        notebook.times_chart(report.times),
        notebook.health_chart(report.health),
    ]
    when = f" as of {report.as_of.isoformat()}" if report.as_of else ""
    return notebook.save_html(charts, path, title=f"kirim-events report{when}")
