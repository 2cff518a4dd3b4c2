"""``kirim-events info``: show the resolved configuration (secrets hidden)."""

from __future__ import annotations

from rich.table import Table

from kirim_events.cli._app import DataOption, command, console, settings, stops_saying
from kirim_events.config import Settings, api_base, shown_url


@command("info")
def info(data: DataOption = None) -> None:
    """Show the resolved settings; secrets are shown only as counts, never as values."""
    with stops_saying("nothing was changed: info only shows the settings"):
        _show(settings(data_dir=data))


def _show(s: Settings) -> None:
    table = Table("setting", "value", title="kirim-events settings")
    table.add_row("data dir (KIRIM_DATA_DIR)", str(s.data_dir))
    table.add_row("API URL (KIRIM_API_URL)", shown_url(api_base(s.api_url)))
    table.add_row("API key (KIRIM_KEY)", "set" if s.api_key else "not set")
    table.add_row("webhook secrets (KIRIM_WEBHOOK_SECRET)", f"{len(s.webhook_secrets)} configured")
    tolerance = "off" if s.tolerance is None else f"{s.tolerance} s"
    table.add_row("signature tolerance (KIRIM_TOLERANCE)", tolerance)
    table.add_row("log format (KIRIM_LOG_FORMAT)", s.log_format)
    console.print(table)
