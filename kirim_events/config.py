"""Settings: explicit arguments, then KIRIM_* environment, then defaults; secrets stay hidden."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx

from kirim_events.errors import ConfigError

DEFAULT_API_URL = "https://api.kirim.chat"
DEFAULT_DATA_DIR = "./data"
DEFAULT_TOLERANCE = 300
_HIDDEN = "**********"


_HOST_NAME = re.compile(r"(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)(:\d{1,5})?")


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST_LABELS = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def valid_host(host: str) -> bool:
    """A DNS name (letters, digits, ``-``, ``_``, dots) or an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_LABELS.fullmatch(host) is not None
    return True


def api_base(url: str) -> str:
    """Kirim's API base URL as the client uses it: without a trailing ``/`` or ``/v1`` (the
    client adds ``/v1`` to each path).

    >>> api_base("https://api.kirim.chat/v1/")
    'https://api.kirim.chat'
    """
    return url.rstrip("/").removesuffix("/v1")


def shown_url(text: str) -> str:
    """``text`` as it may be shown in a message: without a user name or password (what comes
    before an ``@`` in the host part), a query or a fragment, any of which may hold a secret.

    >>> shown_url("https://user:pw@host.example/path?token=t#x")
    'https://host.example/path'
    >>> shown_url("s3://AKIA:sec/ret@bucket/prefix")
    's3://bucket/prefix'

    Text with no ``://`` shows only a host name found in it: it may be a key pasted into
    the wrong variable. Nor is a port shown that is no number (``https://host:kdv_live_``).

    >>> shown_url("user:pw@api.example/v1"), shown_url("kdv_live_abc")
    ('api.example', '(not shown)')
    >>> shown_url("https://api.example:kdv_live_abc/v1")
    'https://api.example/v1'
    """
    head, sep, rest = text.partition("://")
    if not sep:
        host = text.rpartition("@")[2].partition("/")[0]
        return host if _HOST_NAME.fullmatch(host) else "(not shown)"
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    authority, slash, path = rest.rpartition("@")[2].partition("/")  # a password may hold "/"
    host, colon, port = authority.rpartition(":")
    if colon and not port.isdigit() and not authority.endswith("]"):
        authority = host
    return f"{head}{sep}{authority}{slash}{path}"


class Secret:
    """A secret string whose ``repr`` and ``str`` never show the value.

    Use :meth:`reveal` at the one place that needs the plaintext (HMAC, Authorization header).

    >>> s = Secret("whsec_abc")
    >>> s
    Secret('**********')
    >>> s.reveal()
    'whsec_abc'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret takes a str")
        self._value = value

    def reveal(self) -> str:
        """Return the plaintext value."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_HIDDEN}')"

    def __str__(self) -> str:
        return _HIDDEN

    def __format__(self, spec: str) -> str:
        return _HIDDEN

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return hmac.compare_digest(self._value.encode(), other._value.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        # Pickling (multiprocessing) keeps the value; only display hides it.
        return (Secret, (self._value,))


SecretLike = str | Secret


def checked_api_key(value: Secret | str) -> Secret:
    """An API key as a Secret, without surrounding whitespace (a key read from a file often
    ends in a newline); ConfigError, which never shows the key, if a header cannot carry it."""
    raw = (value.reveal() if isinstance(value, Secret) else str(value)).strip()
    if not raw:
        raise ConfigError("no API key: set KIRIM_KEY")
    if not all(33 <= ord(ch) <= 126 for ch in raw):
        raise ConfigError(
            "the API key holds a space, a control or a non-ASCII character, which an HTTP"
            " header cannot carry: check KIRIM_KEY"
        )
    return Secret(raw)


def parse_api_url(url: str) -> httpx.URL:
    """``url`` (``KIRIM_API_URL``) parsed; ConfigError, never showing a credential, when it
    is no URL or carries a user name, a password, a query or a fragment.

    httpx sends a URL's user name and password as Basic auth *in place of* the Bearer key
    (every request is refused), appends each path to a base URL's query (every request goes
    to ``/`` with the path in the query), and logs the whole URL at INFO, password and query
    included."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:  # its message may quote a part of a password
        raise ConfigError(f"KIRIM_API_URL is not a valid URL: {shown_url(url)!r}") from None
    if parsed.userinfo:
        raise ConfigError(  # never shown: it may hold a password
            "KIRIM_API_URL must not carry a user name or password (the API key goes in KIRIM_KEY)"
        )
    if "?" in url or "#" in url:
        raise ConfigError(  # never shown: a token goes there
            "KIRIM_API_URL must not carry a query or fragment (the API key goes in KIRIM_KEY)"
        )
    return parsed


_KEY_IN_URL_MIN = 12


def refuse_key_in_url(url: str, key: Secret) -> None:
    """ConfigError, never showing either, when the API key was pasted into the URL: it would
    be sent in every request line and named in each message and log line. A key shorter
    than ``_KEY_IN_URL_MIN`` (no real Kirim key; a test's) is not looked for: "k" is in
    ``http://kirim.example``."""
    raw = key.reveal()
    if len(raw) >= _KEY_IN_URL_MIN and raw in url:
        raise ConfigError(
            "KIRIM_API_URL holds the API key: give it in KIRIM_KEY only, and the URL without it"
        )


_SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of every secret, no secret)


def as_secrets(value: SecretLike | Iterable[SecretLike] | None) -> tuple[Secret, ...]:
    """Normalise one secret, a comma-separated list, or an iterable into a tuple of Secrets.

    Blank entries and repeats are dropped, so ``"whsec_a, whsec_b,whsec_a"`` gives two
    secrets. ConfigError (never showing it) for a secret that is not Unicode text, and for
    one that is only the ``whsec_`` prefix: an empty variable in ``whsec_${NEW}``, a key
    anyone could sign with.
    """
    if value is None:
        return ()
    items: Iterable[SecretLike]
    items = [value] if isinstance(value, (str, Secret)) else value
    out: dict[str, Secret] = {}  # in order, each once (a repeat adds nothing but a v1=)
    for item in items:
        raw = item.reveal() if isinstance(item, Secret) else item
        if not isinstance(raw, str):
            raise ConfigError("secrets must be strings")
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            if part == _SECRET_PREFIX:  # as good as blank, but it would verify: refused
                raise ConfigError(
                    "a webhook secret is only the whsec_ prefix, with nothing after it (an"
                    " empty variable?): check KIRIM_WEBHOOK_SECRET"
                )
            try:
                part.encode("utf-8")
            except UnicodeEncodeError:  # bytes that were not UTF-8 in the environment
                raise ConfigError(
                    "a webhook secret is not Unicode text (bytes that are not UTF-8?): "
                    "check KIRIM_WEBHOOK_SECRET"
                ) from None
            out.setdefault(part, Secret(part))
    return tuple(out.values())


_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")
_ENV = {
    "KIRIM_DATA_DIR": "data_dir",
    "KIRIM_API_URL": "api_url",
    "KIRIM_KEY": "api_key",
    "KIRIM_WEBHOOK_SECRET": "webhook_secrets",
    "KIRIM_TOLERANCE": "tolerance",
    "KIRIM_LOG_FORMAT": "log_format",
}


@dataclass(frozen=True)
class Settings:
    """Resolved configuration shared by every command.

    Build it with :meth:`Settings.load`; fields hold already-validated values.
    """

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    api_url: str = DEFAULT_API_URL
    api_key: Secret | None = None
    webhook_secrets: tuple[Secret, ...] = field(default=())
    tolerance: int | None = DEFAULT_TOLERANCE
    log_format: str = "text"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Resolve settings: ``overrides`` (arguments, None = not given) > ``env`` > defaults.

        ``env`` is passed in (usually ``os.environ``) so that tests never touch the process.
        """
        env = env or {}
        values: dict[str, Any] = {}
        for name, key in _ENV.items():
            # blank counts as unset: KIRIM_TOLERANCE=${UNSET} in a compose file must not
            # turn the replay check off, nor KIRIM_DATA_DIR= mean the current folder
            if env.get(name, "").strip():
                values[key] = env[name]
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        resolved = replace(cls(), **_validate(values))
        if resolved.api_key:
            refuse_key_in_url(resolved.api_url, resolved.api_key)
        return resolved

    def require_secrets(self) -> tuple[Secret, ...]:
        """Return the webhook secrets, or raise ConfigError naming the variable to set."""
        if not self.webhook_secrets:
            raise ConfigError("no webhook secret: set KIRIM_WEBHOOK_SECRET (comma-separated)")
        return self.webhook_secrets

    def secret_warnings(self) -> list[str]:
        """What looks wrong in the webhook secrets, never quoting them: Kirim's start with
        ``whsec_`` and hold no blanks or quotes. A wrong secret answers every delivery 401,
        which Kirim takes as final, and after enough of them it disables the subscription."""
        notes = []
        for n, secret in enumerate(self.webhook_secrets, 1):
            value = secret.reveal()
            which = f"secret {n} of {len(self.webhook_secrets)} in KIRIM_WEBHOOK_SECRET"
            if value.startswith("kdv_"):
                notes.append(f"{which} is an API key (kdv_...), not a webhook secret (whsec_...)")
            elif not value.startswith("whsec_"):
                notes.append(f"{which} does not start with whsec_ as Kirim's webhook secrets do")
            if any(c.isspace() or c in "'\"" for c in value):
                notes.append(f"{which} holds a blank or a quote: copied with its quotes?")
        return notes

    def require_api_key(self) -> Secret:
        """Return the API key, or raise ConfigError naming the variable to set."""
        if not self.api_key:
            raise ConfigError("no API key: set KIRIM_KEY")
        return checked_api_key(self.api_key)


def _validate(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "data_dir" in out:
        if _URL_LIKE.match(str(out["data_dir"])):  # s3://b/p, or s3:/b/p once a Path
            raise ConfigError(
                f"the data folder is a local folder (the journal lives there), got "
                f"{shown_url(str(out['data_dir']))!r}: for a lake on S3 use --lake "
                "s3://bucket/prefix"
            )
        try:
            out["data_dir"] = Path(out["data_dir"]).expanduser()
        except RuntimeError:  # ~someone for a user this machine does not know
            raise ConfigError(
                f"the data folder {str(out['data_dir'])!r} starts with ~ for a user this "
                "machine does not know"
            ) from None
    if "api_url" in out:
        url = str(out["api_url"]).strip().rstrip("/")
        parsed = parse_api_url(url)
        if not url.lower().startswith(("http://", "https://")) or not parsed.host:
            raise ConfigError(
                "KIRIM_API_URL must be an http:// or https:// URL with a host, got "
                f"{shown_url(url)!r}"
            )
        if not valid_host(parsed.raw_host.decode("ascii", "replace")):
            raise ConfigError(  # not shown: a key pasted after the URL lands in the host
                "KIRIM_API_URL's host is no host name or IP address (a blank, a bracket or a"
                " character a host cannot hold)"
            )
        if parsed.port is not None and not 0 < parsed.port < 65536:
            # httpx takes any digits; 99999 was retried for tens of seconds, then "Connection
            # refused", which points at a server that is not running. Digits hold no key.
            raise ConfigError(f"KIRIM_API_URL's port {parsed.port} is no TCP port (1 to 65535)")
        out["api_url"] = url
    if "api_key" in out:  # checked where it is used (require_api_key, KirimClient)
        key = out["api_key"]
        raw = "" if key is None else key.reveal() if isinstance(key, Secret) else str(key)
        out["api_key"] = Secret(raw.strip()) if raw.strip() else None
    if "webhook_secrets" in out:
        out["webhook_secrets"] = as_secrets(out["webhook_secrets"])
    if "tolerance" in out:
        tol = out["tolerance"]
        if isinstance(tol, str):
            tol = None if tol.strip().lower() in {"none", "off"} else tol
        if tol is not None:
            try:
                tol = int(tol)
            except (TypeError, ValueError):
                raise ConfigError(  # not quoted: a secret pasted into the wrong variable
                    "KIRIM_TOLERANCE must be whole seconds, 'off' or 0"
                ) from None
            if tol < 0:
                raise ConfigError("KIRIM_TOLERANCE must not be negative")
            tol = tol or None  # 0 disables the check, as in Kirim's TypeScript SDK
        out["tolerance"] = tol
    if "log_format" in out:
        log_format = str(out["log_format"]).strip().lower()
        if log_format not in {"text", "json"}:
            raise ConfigError("KIRIM_LOG_FORMAT (--log-format) must be 'text' or 'json'")
        out["log_format"] = log_format
    return out
