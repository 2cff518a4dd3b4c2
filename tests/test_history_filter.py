"""HistoryFilter: which history rows a filter shows to be outside it (tolerant of gaps)."""

from __future__ import annotations

from typing import Any

from kirim_events.client import Delivery
from kirim_events.history_filter import FilterTally, HistoryFilter


def row(**fields: Any) -> Delivery:
    return Delivery.from_api({"id": "wbd_1", "object": "webhook_delivery", **fields})


def test_a_row_is_outside_only_when_it_shows_another_value() -> None:
    flt = HistoryFilter(status="dead", subscription_id="wbs_A")
    assert flt.check(row(status="dead", subscription_id="wbs_A")) == (None, [])
    assert flt.check(row(status="failed", subscription_id="wbs_A")) == ("status", [])
    assert flt.check(row(status="dead", subscription_id="wbs_B")) == ("subscription_id", [])
    # no status shown: not outside, kept and named as unchecked
    assert flt.check(row(subscription_id="wbs_A")) == (None, ["status"])


def test_event_types_match_under_the_lakes_names() -> None:
    flt = HistoryFilter(event_type="message.status")
    assert flt.check(row(event_type="message.status_updated")) == (None, [])
    assert flt.check(row(event_type="message.received")) == ("event_type", [])


def test_the_tally_counts_and_words_what_it_skipped_and_kept() -> None:
    flt = HistoryFilter(status="dead")
    tally = FilterTally()
    kept = [tally.keep(flt, r) for r in (row(status="dead"), row(status="ok"), row())]
    assert kept == [True, False, True]
    assert tally.notes(flt) == [
        "Kirim returned 1 row(s) outside --status dead (it may ignore that filter or know it"
        " by another name): skipped, not stored",
        "1 row(s) from Kirim carry no status, so nothing shows them outside --status dead:"
        " stored all the same",
    ]
    assert not FilterTally()
    assert HistoryFilter().check(row(status="x")) == (None, [])
