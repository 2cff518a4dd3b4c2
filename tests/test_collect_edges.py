"""collect()'s option checks (a case found by mutation testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kirim_events as ke
from kirim_events.collect import collect


def test_zero_connections_is_refused_before_anything_is_opened(tmp_path: Path) -> None:
    # (an unusable host: were the check missing, the run would fail there, not serve)
    with pytest.raises(ke.ConfigError, match="max connections must be at least 1, got 0"):
        collect(tmp_path, host="256.0.0.1", port=0, secrets="whsec_x", max_connections=0)
    assert not (tmp_path / "_journal").exists()
