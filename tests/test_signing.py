"""Signing: the documented test vector, rotation, one broken thing per test, a round trip."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from localzone import local_zone

from kirim_events import Secret, sign, verify
from kirim_events.errors import (
    ConfigError,
    SignatureError,
    SignatureExpired,
    SignatureMalformed,
    SignatureMismatch,
    SignatureMissing,
)
from kirim_events.journal import Journal
from kirim_events.receiver import Receiver
from kirim_events.signing import check_header, check_tolerance, parse_header

SECRET = "whsec_test_secret"
NEXT = "whsec_test_secret_next"
T = 1716480000
BODY = (
    b'{"id":"evt_01HYK2WG008XHFBG3A1Y7ZVA9R","type":"contact.updated",'
    b'"created_at":"2024-05-23T16:00:00Z","data":{}}'
)
V1 = "cd4f5720ad0487a5d6408c5beb85824134ae5e5629f0f9aef39ff8aaa9cb8a85"
V1_NEXT = "79859fadfba2820783b5bfe14e1cca8cb502d202f6f74327705ff517ab59483d"
V1_SPACED = "55d0bbf3d2d28175192740c9b4ad91514b82a65bc4b169bd8873a0ea83a15daf"
HEADER = f"t={T},v1={V1}"
NOW = T + 10
NO_MATCH_OF_ONE = "no v1 signature matches any of the 1 configured secret"


def test_vector_body_is_110_bytes() -> None:
    assert len(BODY) == 110


def test_vector_matches_plain_hmac() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert expected == V1


def test_sign_reproduces_the_documented_header() -> None:
    assert sign(BODY, SECRET, timestamp=T) == HEADER


def test_sign_with_two_secrets_gives_the_documented_rotation_header() -> None:
    assert sign(BODY, [SECRET, NEXT], timestamp=T) == f"t={T},v1={V1},v1={V1_NEXT}"


def test_verify_accepts_the_vector_and_returns_t() -> None:
    assert verify(BODY, HEADER, [SECRET], now=NOW) == T


def test_verify_accepts_secret_objects_and_datetime_now() -> None:
    now = datetime.fromtimestamp(NOW, UTC)
    assert verify(BODY, HEADER, Secret(SECRET), now=now) == T


def test_space_after_first_colon_gives_the_documented_negative_mac() -> None:
    spaced = BODY.replace(b'"id":', b'"id": ', 1)
    assert sign(spaced, SECRET, timestamp=T) == f"t={T},v1={V1_SPACED}"
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(spaced, HEADER, [SECRET], now=NOW)


@pytest.mark.parametrize(
    ("header_secrets", "configured"),
    [
        (hs, conf)
        for hs in ([SECRET], [NEXT], [SECRET, NEXT], [NEXT, SECRET])
        for conf in ([SECRET], [NEXT], [SECRET, NEXT], [NEXT, SECRET])
        if set(hs) & set(conf)
    ],
)
def test_rotation_accepts_any_overlap(header_secrets: list[str], configured: list[str]) -> None:
    header = sign(BODY, header_secrets, timestamp=T)
    assert verify(BODY, header, configured, now=NOW) == T


@pytest.mark.parametrize(
    ("header_secrets", "configured"),
    [([SECRET], [NEXT]), ([NEXT], [SECRET]), ([SECRET, NEXT], ["whsec_other"])],
)
def test_rotation_rejects_without_overlap(header_secrets: list[str], configured: list[str]) -> None:
    header = sign(BODY, header_secrets, timestamp=T)
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(BODY, header, configured, now=NOW)


def test_comma_separated_secret_string_is_a_list() -> None:
    header = sign(BODY, NEXT, timestamp=T)
    assert verify(BODY, header, f"{SECRET}, {NEXT}", now=NOW) == T


# ---- one broken thing per test


def test_changed_body_byte_fails() -> None:
    broken = bytearray(BODY)
    broken[-3] ^= 0x01
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(bytes(broken), HEADER, [SECRET], now=NOW)


def test_changed_timestamp_fails() -> None:
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(BODY, f"t={T + 1},v1={V1}", [SECRET], now=NOW)


def test_wrong_secret_fails() -> None:
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(BODY, HEADER, ["whsec_test_secreT"], now=NOW)


def test_changed_v1_hex_fails() -> None:
    broken = V1[:-1] + ("0" if V1[-1] != "0" else "1")
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(BODY, f"t={T},v1={broken}", [SECRET], now=NOW)


@pytest.mark.parametrize("v1", [V1.upper(), V1[:32] + V1[32:].upper()])
def test_upper_case_hex_is_the_same_mac(v1: str) -> None:
    # kirim-api.md §2.1 says lowercase hex, but an upper-cased digest is the same MAC: it
    # was refused with a 401, which Kirim takes as final (the event lost for good).
    assert verify(BODY, f"t={T},v1={v1}", [SECRET], now=NOW) == T


@pytest.mark.parametrize(
    "v1",
    [
        V1[:-1].upper() + ("0" if V1[-1] != "0" else "1"),  # another value, upper case
        V1.upper()[:-1],  # too short
        V1.upper() + "A",  # too long
        V1[:-1].upper() + "G",  # not hex
        V1[:-1] + "\u212a",  # the Kelvin sign, whose lower() is an ASCII "k"
        V1_SPACED.upper(),  # the documented negative MAC, upper-cased
    ],
)
def test_upper_case_hex_is_still_checked_as_hex(v1: str) -> None:
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(BODY, f"t={T},v1={v1}", [SECRET], now=NOW)


def test_missing_t_is_malformed() -> None:
    with pytest.raises(SignatureMalformed, match="signature header needs exactly one t= value"):
        verify(BODY, f"v1={V1}", [SECRET], now=NOW)


def test_non_integer_t_is_malformed() -> None:
    with pytest.raises(
        SignatureMalformed, match="signature timestamp t= is not a whole number of seconds"
    ):
        verify(BODY, f"t=17164800x0,v1={V1}", [SECRET], now=NOW)


def test_two_t_values_are_malformed() -> None:
    with pytest.raises(SignatureMalformed, match="signature header needs exactly one t= value"):
        verify(BODY, f"t={T},t={T},v1={V1}", [SECRET], now=NOW)


def test_no_v1_is_malformed() -> None:
    with pytest.raises(SignatureMalformed, match="signature header has no v1= value"):
        verify(BODY, f"t={T},v0={V1}", [SECRET], now=NOW)


@pytest.mark.parametrize("header", [f"t={T},v1=", f"t={T},v1= ", f"t={T},v1=,v1="])
def test_an_empty_v1_is_no_v1(header: str) -> None:
    # an empty value is no signature at all: the header is malformed, not a mismatch
    with pytest.raises(SignatureMalformed, match="signature header has no v1= value"):
        verify(BODY, header, [SECRET], now=NOW)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header: str | None) -> None:
    with pytest.raises(SignatureMissing, match="missing X-Kirim-Signature header"):
        verify(BODY, header, [SECRET], now=NOW)


def test_unknown_segments_are_ignored() -> None:
    header = f"t={T},v0=deadbeef,v1={V1},v2=future,no-equals-sign"
    assert verify(BODY, header, [SECRET], now=NOW) == T


def test_spaces_after_commas_are_trimmed() -> None:
    assert verify(BODY, f"t={T}, v1={V1}", [SECRET], now=NOW) == T
    assert verify(BODY, f" t = {T} ,  v1 = {V1} ", [SECRET], now=NOW) == T


def test_non_ascii_v1_is_a_mismatch_not_a_crash() -> None:
    with pytest.raises(SignatureMismatch, match=NO_MATCH_OF_ONE):
        verify(BODY, f"t={T},v1=é{V1[1:]}", [SECRET], now=NOW)


# ---- freshness


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_within_tolerance_passes(offset: int) -> None:
    assert verify(BODY, HEADER, [SECRET], now=T + offset) == T


@pytest.mark.parametrize("offset", [-301, 301, 86_400])
def test_outside_tolerance_is_expired(offset: int) -> None:
    side = "future" if offset < 0 else "past"  # now before the signature: it is ahead
    with pytest.raises(
        SignatureExpired, match=rf"{abs(offset)}\.0s in the {side}; tolerance is 300s"
    ):
        verify(BODY, HEADER, [SECRET], now=T + offset)


def test_tolerance_is_configurable() -> None:
    with pytest.raises(SignatureExpired, match=r"6\.0s in the past; tolerance is 5s"):
        verify(BODY, HEADER, [SECRET], tolerance=5, now=T + 6)
    assert verify(BODY, HEADER, [SECRET], tolerance=3600, now=T + 3000) == T


@pytest.mark.parametrize("off", [None, 0])  # 0 disables it in Kirim's TypeScript SDK
def test_tolerance_none_or_zero_skips_only_the_time_check(off: int | None) -> None:
    assert verify(BODY, HEADER, [SECRET], tolerance=off, now=T + 10 * 86_400) == T
    with pytest.raises(SignatureMismatch, match="no v1 signature matches"):
        verify(BODY + b" ", HEADER, [SECRET], tolerance=off, now=T + 10 * 86_400)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, True])
def test_a_tolerance_that_would_pass_or_refuse_everything_is_refused(
    bad: float, tmp_path: Path
) -> None:
    # NaN passed every signature time, a negative value refused every delivery
    with pytest.raises(ValueError, match="tolerance"):
        verify(BODY, HEADER, [SECRET], tolerance=bad, now=T + 10 * 86_400)  # type: ignore[arg-type]
    with Journal(tmp_path) as journal, pytest.raises(ValueError, match="tolerance"):
        Receiver(journal, [SECRET], tolerance=bad)  # type: ignore[arg-type]


def test_an_expiry_message_does_not_round_to_the_tolerance() -> None:
    with pytest.raises(SignatureExpired, match=r"300\.5s in the past; tolerance is 300s"):
        verify(BODY, HEADER, [SECRET], now=T + 300.5)


def test_no_configured_secret_is_a_mismatch() -> None:
    with pytest.raises(SignatureMismatch, match="no secret configured to verify against"):
        verify(BODY, HEADER, [], now=NOW)


def test_errors_share_one_base_and_never_show_the_secret() -> None:
    cases = [
        (None, NOW, "missing X-Kirim-Signature header"),
        ("t=x", NOW, "t= is not a whole number of seconds"),
        (HEADER, T + 1000, r"1000\.0s in the past"),
        (f"t={T},v1={'0' * 64}", NOW, "no v1 signature matches any of the 2 configured"),
    ]
    for header, now, says in cases:
        with pytest.raises(SignatureError, match=says) as info:
            verify(BODY, header, [SECRET, NEXT], now=now)
        assert SECRET not in str(info.value)
        assert "whsec_" not in repr(info.value)


def test_sign_needs_a_secret() -> None:
    with pytest.raises(ValueError, match=r"sign\(\) needs at least one secret"):
        sign(BODY, [], timestamp=T)


def test_parse_header_returns_all_v1_values() -> None:
    assert parse_header(f"t={T},v1=a,v1=b") == (T, ["a", "b"])


_secret_text = st.text(min_size=1, max_size=40).filter(lambda s: "," not in s and s.strip() != "")


@given(
    body=st.binary(max_size=2048),
    secrets=st.lists(_secret_text, min_size=1, max_size=3),
    t=st.integers(min_value=0, max_value=4_000_000_000),
    skew=st.integers(min_value=-300, max_value=300),
)
def test_round_trip(body: bytes, secrets: list[str], t: int, skew: int) -> None:
    header = sign(body, secrets, timestamp=t)
    for secret in secrets:
        assert verify(body, header, [secret], now=t + skew) == t
    with pytest.raises(SignatureMismatch, match="no v1 signature matches"):
        verify(body + b"x", header, secrets, now=t)


def test_signed_request_signs_bytes_too_deep_to_decode() -> None:
    """The test helper signs any bytes; a body nested past the decoder's depth is one."""
    from kirim_events import testing

    deep = b"[" * 200_000 + b"]" * 200_000
    req = testing.signed_request(deep, "whsec_x", timestamp=1_700_000_000)
    assert req.body == deep
    header = req.headers["X-Kirim-Signature"]
    assert verify(deep, header, "whsec_x", tolerance=None) == 1_700_000_000


@pytest.mark.parametrize(
    "value",
    [
        {"statuses": {"0": {"id": "wamid.X"}}},
        {"statuses": ["junk"]},
        {"messages": "junk"},
        "junk",
    ],
)
def test_signed_request_signs_any_meta_like_body(value: object) -> None:
    """The test helper guessed headers from ``statuses[0]`` and raised (KeyError,
    AttributeError) on a body a test means to send to quarantine."""
    from kirim_events import testing

    body = {"object": "whatsapp_business_account", "entry": [{"changes": [{"value": value}]}]}
    req = testing.signed_request(body, "whsec_x", timestamp=1_700_000_000)
    assert req.headers["X-Kirim-Source"] == "meta"
    assert "X-Kirim-Event-Id" not in req.headers
    header = req.headers["X-Kirim-Signature"]
    assert verify(req.body, header, "whsec_x", tolerance=None) == 1_700_000_000


def test_a_t_of_more_than_twelve_digits_is_malformed_not_expired() -> None:
    """Unix seconds have 10 digits for the next few centuries; 13 are no time at all."""
    header = f"t={'1' * 13},v1={V1}"
    with pytest.raises(SignatureMalformed, match="not a whole number of seconds"):
        verify(BODY, header, [SECRET], tolerance=None)
    assert parse_header(f"t={'1' * 12},v1=a") == (111_111_111_111, ["a"])


@pytest.mark.parametrize("stamp", ["²", "١٧١٦٤٨٠٠٠٠"])
def test_a_t_of_non_ascii_digits_is_malformed(stamp: str) -> None:
    """str.isdigit() takes "²" (which int() refuses) and Arabic-Indic digits (which int()
    reads as 1716480000): neither is the ASCII t that was signed."""
    with pytest.raises(SignatureMalformed, match="not a whole number of seconds"):
        parse_header(f"t={stamp},v1={V1}")


def test_a_v1_value_is_split_off_at_the_first_equals_sign() -> None:
    assert parse_header("t=1,v1=ab=cd") == (1, ["ab=cd"])


def test_no_secret_still_names_a_missing_or_malformed_header_first() -> None:
    with pytest.raises(SignatureMissing):
        verify(BODY, None, [], now=NOW)
    with pytest.raises(SignatureMalformed):
        verify(BODY, f"t=x,v1={V1}", [], now=NOW)


def test_now_may_be_an_aware_datetime_in_any_zone() -> None:
    jakarta = timezone(timedelta(hours=7))
    now = datetime.fromtimestamp(NOW, jakarta)
    assert verify(BODY, HEADER, [SECRET], now=now) == T
    with pytest.raises(SignatureExpired, match=r"1000\.0s in the past"):
        verify(BODY, HEADER, [SECRET], now=datetime.fromtimestamp(T + 1000, jakarta))


@pytest.mark.parametrize("zone", ["UTC", "Asia/Jakarta", "America/Sao_Paulo"])
def test_a_naive_now_is_refused_whatever_the_host_zone(zone: str) -> None:
    # datetime.utcnow() is naive: it was read in the host's zone, so the same call passed on
    # a UTC machine and called a fresh signature hours stale (or fresh hours late) elsewhere.
    naive_utc = datetime.fromtimestamp(NOW, UTC).replace(tzinfo=None)
    with local_zone(zone):
        with pytest.raises(ValueError, match="timezone-aware"):
            verify(BODY, HEADER, [SECRET], now=naive_utc)
        with pytest.raises(ValueError, match="timezone-aware"):
            check_header(HEADER, now=naive_utc)


def test_a_tolerance_of_zero_comes_back_as_none() -> None:
    """0 turns the check off, as None does: the caller sees that in one value."""
    assert check_tolerance(0) is None
    assert check_tolerance(None) is None
    assert check_tolerance(300) == 300


def test_a_part_without_an_equals_sign_is_ignored_even_when_named_t() -> None:
    assert parse_header(f"t={T},v1=a,t") == (T, ["a"])


@pytest.mark.parametrize("configured", ["whsec_", " whsec_ ", "whsec_test_secret,whsec_"])
def test_a_secret_that_is_only_the_prefix_is_refused_not_a_key_anyone_signs_with(
    configured: str,
) -> None:
    # KIRIM_WEBHOOK_SECRET=whsec_${NEW} with NEW unset: blank entries are dropped, but this
    # one verified every body signed with the public string "whsec_".
    mac = hmac.new(b"whsec_", f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    forged = f"t={T},v1={mac}"
    with pytest.raises(ConfigError, match="only the whsec_ prefix"):
        verify(BODY, forged, configured, now=T)


def test_a_receiver_or_settings_with_a_prefix_only_secret_is_refused(tmp_path: Path) -> None:
    from kirim_events.config import Settings

    with pytest.raises(ConfigError, match="check KIRIM_WEBHOOK_SECRET") as info:
        Settings.load({"KIRIM_WEBHOOK_SECRET": f"{SECRET},whsec_"})
    assert SECRET not in str(info.value)
    with Journal(tmp_path) as journal, pytest.raises(ConfigError, match="only the whsec_"):
        Receiver(journal, [SECRET, "whsec_"])
