"""Settings resolution order and the Secret type."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from kirim_events.client import KirimClient
from kirim_events.config import _ENV, Secret, Settings, as_secrets
from kirim_events.errors import ConfigError


def test_defaults() -> None:
    s = Settings.load({})
    assert s.data_dir == Path("data")
    assert s.api_url == "https://api.kirim.chat"
    assert s.api_key is None
    assert s.webhook_secrets == ()
    assert s.tolerance == 300


def test_environment_over_defaults_and_arguments_over_environment() -> None:
    env = {
        "KIRIM_DATA_DIR": "/tmp/lake",
        "KIRIM_API_URL": "http://127.0.0.1:9/",
        "KIRIM_KEY": "kdv_live_abc",
        "KIRIM_WEBHOOK_SECRET": "whsec_new, whsec_old",
        "KIRIM_TOLERANCE": "60",
    }
    s = Settings.load(env)
    assert s.data_dir == Path("/tmp/lake")
    assert s.api_url == "http://127.0.0.1:9"
    assert s.api_key == Secret("kdv_live_abc")
    assert [x.reveal() for x in s.webhook_secrets] == ["whsec_new", "whsec_old"]
    assert s.tolerance == 60
    s2 = Settings.load(env, data_dir="/elsewhere", tolerance=None)
    assert s2.data_dir == Path("/elsewhere")
    assert s2.tolerance == 60  # None means "not given", so the environment stays


def test_tolerance_can_be_switched_off_from_the_environment() -> None:
    assert Settings.load({"KIRIM_TOLERANCE": "off"}).tolerance is None


@pytest.mark.parametrize(
    ("env", "overrides", "says"),
    [
        ({"KIRIM_API_URL": "ftp://x"}, {}, "KIRIM_API_URL must be an http:// or https:// URL"),
        ({"KIRIM_TOLERANCE": "soon"}, {}, "KIRIM_TOLERANCE must be whole seconds, 'off' or 0"),
        ({"KIRIM_TOLERANCE": "-1"}, {}, "KIRIM_TOLERANCE must not be negative"),
        ({}, {"no_such_setting": 1}, "unknown setting 'no_such_setting'"),
        ({"KIRIM_LOG_FORMAT": "xml"}, {}, "KIRIM_LOG_FORMAT .* must be 'text' or 'json'"),
    ],
)
def test_bad_settings_raise_config_error(
    env: dict[str, str], overrides: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.load(env, **overrides)


def test_require_helpers_name_the_variable() -> None:
    s = Settings.load({})
    with pytest.raises(ConfigError, match="KIRIM_WEBHOOK_SECRET"):
        s.require_secrets()
    with pytest.raises(ConfigError, match="KIRIM_KEY"):
        s.require_api_key()


def test_secret_never_shows_its_value(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("whsec_supersecret")
    settings = Settings.load({"KIRIM_KEY": "kdv_live_hidden", "KIRIM_WEBHOOK_SECRET": "whsec_x"})
    shown = [repr(secret), str(secret), f"{secret}", f"{secret:>30}", repr(settings), str(settings)]
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s secret %s", settings, secret)
    shown.append(caplog.text)
    for text in shown:
        assert "supersecret" not in text
        assert "kdv_live_hidden" not in text
        assert "whsec_x" not in text
    assert secret.reveal() == "whsec_supersecret"


def test_secret_survives_pickling_and_compares_by_value() -> None:
    secret = Secret("whsec_a")
    assert pickle.loads(pickle.dumps(secret)) == secret
    assert secret != Secret("whsec_b")
    assert len({Secret("x"), Secret("x")}) == 1


def test_as_secrets_splits_and_drops_blanks() -> None:
    assert [s.reveal() for s in as_secrets("a, b,,")] == ["a", "b"]
    assert [s.reveal() for s in as_secrets([Secret("a"), "b,c"])] == ["a", "b", "c"]
    assert as_secrets(None) == ()


def test_an_api_key_is_trimmed_and_one_a_header_cannot_carry_is_refused() -> None:
    # A key read from a file or a Kubernetes secret often ends in a newline.
    assert Settings.load({"KIRIM_KEY": "kdv_live_abc\n"}).require_api_key() == Secret(
        "kdv_live_abc"
    )
    assert Settings.load({"KIRIM_KEY": "  \n"}).api_key is None
    for bad in ("kdv_live_a b", "kdv_live_a\nb", "kdv_live_é"):
        settings = Settings.load({"KIRIM_KEY": bad})
        with pytest.raises(ConfigError, match="KIRIM_KEY") as caught:
            settings.require_api_key()
        assert bad.strip() not in str(caught.value)
        with pytest.raises(ConfigError, match="which an HTTP header cannot carry: check KIRIM_KEY"):
            KirimClient("http://127.0.0.1:9", bad)


def test_a_key_is_looked_for_in_the_url_only_when_it_could_be_a_real_one() -> None:
    """A short key (a test's) is found inside many a host name: "kirim" is in
    ``http://kirim.example``, which is no key pasted into the URL."""
    short = {"KIRIM_KEY": "kirim", "KIRIM_API_URL": "http://kirim.example"}
    assert Settings.load(short).api_url.startswith("http://kirim.example")
    KirimClient("http://kirim.example", "kirim").close()
    key = "kdv_live_abcdef"
    with pytest.raises(ConfigError, match="holds the API key") as caught:
        Settings.load({"KIRIM_KEY": key, "KIRIM_API_URL": f"http://kirim.example/{key}"})
    assert key not in str(caught.value)
    with pytest.raises(ConfigError, match="holds the API key"):
        KirimClient(f"http://kirim.example/{key}", key)


def test_a_malformed_api_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="KIRIM_API_URL"):
        Settings.load({"KIRIM_API_URL": "http://[::1"})


@pytest.mark.parametrize("off", ["off", "none", "0", " OFF "])
def test_a_tolerance_of_off_or_zero_disables_the_freshness_check(off: str) -> None:
    assert Settings.load({"KIRIM_TOLERANCE": off}).tolerance is None


def test_blank_variables_count_as_unset() -> None:
    """KIRIM_TOLERANCE=${UNSET} in a compose file turned the replay check off, and a blank
    KIRIM_DATA_DIR meant the current folder; a blank one now means the default."""
    blank = {name: "  " for name in _ENV}
    assert Settings.load(blank) == Settings.load({})
    assert Settings.load({"KIRIM_TOLERANCE": ""}).tolerance == 300


def test_errors_name_the_variable_and_log_format_is_read_loosely() -> None:
    with pytest.raises(ConfigError, match="KIRIM_TOLERANCE"):
        Settings.load({"KIRIM_TOLERANCE": "soon"})
    with pytest.raises(ConfigError, match="KIRIM_LOG_FORMAT"):
        Settings.load({"KIRIM_LOG_FORMAT": "xml"})
    assert Settings.load({"KIRIM_LOG_FORMAT": " JSON"}).log_format == "json"


@pytest.mark.parametrize(
    "url", ["https://api.kirim.chat KEYKEY_123", "https://[KEYKEY_123", "https://api.kir!m.chat"]
)
def test_an_api_url_whose_host_is_no_host_is_refused_without_showing_it(url: str) -> None:
    # it was taken: info showed it whole, and backfill retried DNS for tens of seconds,
    # quoting it on every line
    with pytest.raises(ConfigError, match="host is no host name or IP address") as caught:
        Settings.load({"KIRIM_API_URL": url})
    assert "KEYKEY" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8765", "http://[::1]:8765", "https://bücher.example", "http://my_host"],
)
def test_api_urls_with_real_hosts_are_taken(url: str) -> None:
    assert Settings.load({"KIRIM_API_URL": url}).api_url == url


def test_an_api_url_with_a_password_or_no_host_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError, match="user name or password") as caught:
        Settings.load({"KIRIM_API_URL": "https://user:s3cr3tpass@api.example.com"})
    assert "s3cr3tpass" not in str(caught.value)
    with pytest.raises(ConfigError, match="with a host"):
        Settings.load({"KIRIM_API_URL": "https://"})
    # a query or fragment (where a token would go) is refused unshown; a password with a
    # "/" broke the URL's parse, whose message quoted a part of it
    for url, says in (
        ("https://api.kirim.chat/v1?api_token=hunter2", "must not carry a query or fragment"),
        ("https://api.kirim.chat#hunter2", "must not carry a query or fragment"),
        ("https://svc:hun/ter2@api.kirim.chat", "is not a valid URL: 'https://api.kirim.chat'"),
        ("https://svc:hunter2@api.kirim.chat:x", "is not a valid URL: 'https://api.kirim.chat'"),
    ):
        with pytest.raises(ConfigError, match=says) as caught:
            Settings.load({"KIRIM_API_URL": url})
        assert "hunter2" not in str(caught.value)
        assert "hun" not in str(caught.value).replace("https", "")
    with pytest.raises(ConfigError, match="KIRIM_TOLERANCE must be whole seconds") as caught:
        Settings.load({"KIRIM_TOLERANCE": "whsec_hunter2"})
    assert "hunter2" not in str(caught.value)
    # a key pasted into the URL's variable, or where its port goes, is not shown back
    for url, says in (
        ("kdv_live_hunter2", r"with a host, got '\(not shown\)'"),
        ("https://api.kirim.chat:kdv_live_hunter2", "is not a valid URL: 'https://api.kirim.chat'"),
    ):
        with pytest.raises(ConfigError, match=says) as caught:
            Settings.load({"KIRIM_API_URL": url})
        assert "hunter2" not in str(caught.value)
    # without a scheme httpx sees no user info, and the URL is named in the error
    for url in ("user:hunter2@api.kirim.chat", "hunter2@api.kirim.chat"):
        with pytest.raises(ConfigError, match="with a host") as caught:
            Settings.load({"KIRIM_API_URL": url})
        assert "hunter2" not in str(caught.value)
        assert "api.kirim.chat" in str(caught.value)


def test_secrets_are_kept_once_and_must_be_text() -> None:
    secrets = Settings.load({"KIRIM_WEBHOOK_SECRET": "whsec_a, whsec_a ,whsec_b"}).webhook_secrets
    assert [s.reveal() for s in secrets] == ["whsec_a", "whsec_b"]
    # what os.environ holds for the bytes b"whsec_\xff" (surrogateescape)
    with pytest.raises(ConfigError, match="KIRIM_WEBHOOK_SECRET") as caught:
        Settings.load({"KIRIM_WEBHOOK_SECRET": "whsec_good,whsec_\udcff"})
    assert "whsec_good" not in str(caught.value)


@pytest.mark.parametrize("given", ["s3://bucket/lake", Path("s3://bucket/lake")])
def test_a_data_folder_given_as_a_url_points_to_lake(given: object) -> None:
    with pytest.raises(ConfigError, match="--lake s3://"):
        Settings.load({}, data_dir=given)
    assert Settings.load({}, data_dir="C:/lake").data_dir == Path("C:/lake")  # not a URL


def test_a_data_folder_under_an_unknown_users_home_is_a_config_error() -> None:
    # Path.expanduser raised RuntimeError: a traceback instead of a one-line error
    with pytest.raises(ConfigError, match="does not know"):
        Settings.load({"KIRIM_DATA_DIR": "~no_such_user_kirim_test/data"})


def test_webhook_secrets_that_look_wrong_are_named_never_shown() -> None:
    """A wrong secret answers every delivery 401, which Kirim takes as final."""
    good = Settings.load({"KIRIM_WEBHOOK_SECRET": "whsec_new,whsec_old"})
    assert good.secret_warnings() == []
    odd = Settings.load(
        {"KIRIM_WEBHOOK_SECRET": "whsec_ok, kdv_live_hunter2,hunter3, 'whsec_hunter4'"}
    )
    notes = odd.secret_warnings()
    assert notes == [
        "secret 2 of 4 in KIRIM_WEBHOOK_SECRET is an API key (kdv_...), not a webhook"
        " secret (whsec_...)",
        "secret 3 of 4 in KIRIM_WEBHOOK_SECRET does not start with whsec_ as Kirim's"
        " webhook secrets do",
        "secret 4 of 4 in KIRIM_WEBHOOK_SECRET does not start with whsec_ as Kirim's"
        " webhook secrets do",
        "secret 4 of 4 in KIRIM_WEBHOOK_SECRET holds a blank or a quote: copied with its quotes?",
    ]
    assert not any("hunter" in note for note in notes)
