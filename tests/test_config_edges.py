"""Settings and URL helpers: edge cases found by mutation testing."""

from __future__ import annotations

import pytest

from kirim_events.config import (
    Secret,
    Settings,
    api_base,
    checked_api_key,
    refuse_key_in_url,
    shown_url,
    valid_host,
)
from kirim_events.errors import ConfigError


def test_api_base_drops_a_trailing_slash_after_v1() -> None:
    assert api_base("https://api.kirim.chat/v1/") == "https://api.kirim.chat"
    assert api_base("https://api.kirim.chat//") == "https://api.kirim.chat"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://host.example/path#token", "https://host.example/path"),
        ("https://host.example/path?a=1#token", "https://host.example/path"),
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("http://[::1]/v1", "http://[::1]/v1"),  # a bracketed address is no host:port
    ],
)
def test_shown_url_keeps_the_address_and_drops_what_may_be_secret(text: str, shown: str) -> None:
    assert shown_url(text) == shown


def test_an_api_key_given_directly_is_trimmed() -> None:
    assert checked_api_key(" kdv_live_abc\n").reveal() == "kdv_live_abc"
    assert checked_api_key(Secret("kdv_live_abc\r\n")).reveal() == "kdv_live_abc"


def test_a_key_of_the_shortest_length_looked_for_is_found_in_the_url() -> None:
    key = Secret("kdv_live_123")  # 12 characters
    with pytest.raises(ConfigError, match="KIRIM_API_URL holds the API key"):
        refuse_key_in_url("https://api.example/kdv_live_123", key)
    refuse_key_in_url("https://api.example/kdv_live_12", Secret("kdv_live_12"))  # 11: not


def test_the_scheme_of_the_api_url_may_be_in_capitals() -> None:
    assert Settings.load(api_url="HTTPS://api.kirim.chat/").api_url == "HTTPS://api.kirim.chat"


def test_a_blank_api_key_argument_is_no_key() -> None:
    assert Settings.load(api_key="   ").api_key is None


def test_a_host_name_may_end_in_the_root_dot() -> None:
    assert valid_host("api.kirim.chat.")
    assert Settings.load(api_url="https://api.kirim.chat./v1").api_url.endswith("chat./v1")


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_an_api_url_whose_port_is_no_tcp_port_is_refused_at_once(port: int) -> None:
    # httpx takes any digits as the port: 99999 was retried for tens of seconds and then
    # reported as "Connection refused", as if the server were down
    with pytest.raises(ConfigError, match=f"KIRIM_API_URL's port {port} is no TCP port"):
        Settings.load({"KIRIM_API_URL": f"http://127.0.0.1:{port}/v1"})


@pytest.mark.parametrize("port", [1, 8765, 65535])
def test_an_api_url_with_a_tcp_port_is_taken(port: int) -> None:
    url = f"http://127.0.0.1:{port}"
    assert Settings.load({"KIRIM_API_URL": url}).api_url == url
