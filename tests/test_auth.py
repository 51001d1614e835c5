"""The macaroon policy: zestdb's caveat rules, libmacaroons v1 tokens, pymacaroons-compatible."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymacaroons import Macaroon, Verifier

from jobstore.errors import Unauthorized
from jobstore.store.auth import Authoriser, mint, required_caveats

SECRET = b"s3cr3t-for-tests-0123456789"
STORE = "job-store"
PATH = "/sensor-jobs/job/app1"
ALL = ("path = /sensor-jobs/job/app1", "method = GET", f"target = {STORE}")


def auth() -> Authoriser:
    return Authoriser(SECRET, STORE)


def refusal(token: str | bytes | None, *, client: str | None = None, observe: bool = False) -> str:
    """The message of the 401 that ``token`` gets for a GET of PATH."""
    with pytest.raises(Unauthorized) as caught:
        auth().check(token, method="GET", path=PATH, client=client, observe=observe)
    return caught.value.message


def pymacaroons_token(caveats: list[str], secret: bytes = SECRET) -> str:
    m = Macaroon(location="arbiter", identifier="app1", key=secret)
    for caveat in caveats:
        m.add_first_party_caveat(caveat)
    return str(m.serialize())


def test_required_caveats_are_key_space_equals_space_value() -> None:
    caveats = required_caveats(method="post", path="/d/job/c", target="s", client="c", observe=True)
    assert caveats == (
        "path = /d/job/c",
        "method = POST",
        "target = s",
        "client = c",
        "observe = data",
    )


def test_exact_caveats_grant_the_request() -> None:
    auth().check(mint(SECRET, ALL), method="GET", path=PATH)


def test_wildcard_path_and_target_grant_the_request() -> None:
    auth().check(mint(SECRET, ["path = /sensor-jobs/*", "target = *"]), method="GET", path=PATH)


def test_wildcard_prefix_may_equal_the_whole_caveat_as_the_contract_says() -> None:
    auth().check(mint(SECRET, ["path = /sensor-jobs/job/app1*"]), method="GET", path=PATH)


def test_wildcard_prefix_must_still_be_a_prefix() -> None:
    assert "does not match" in refusal(mint(SECRET, ["path = /sensor-jobs/job/app2*"]))


def test_token_without_caveats_grants_everything() -> None:
    auth().check(mint(SECRET, []), method="DELETE", path="/any/thing", client="x", observe=True)


def test_required_caveat_missing_from_token_is_fine() -> None:
    auth().check(mint(SECRET, ["method = GET"]), method="GET", path=PATH, client="app1")


def test_unknown_caveat_key_is_rejected() -> None:
    message = refusal(mint(SECRET, [*ALL, "time < 2030-01-01"]))
    assert '"time < 2030-01-01" is not one this store checks' in message


@pytest.mark.parametrize(
    ("caveat", "hint"),
    [
        ("path = /other/*", "covering path /sensor-jobs/job/app1"),
        ("method = POST", "covering method GET"),
        ("target = other-store", f"covering target {STORE}"),
    ],
)
def test_wrong_path_method_or_target_is_rejected_naming_the_caveat(caveat: str, hint: str) -> None:
    message = refusal(mint(SECRET, [caveat]))
    assert f'token caveat "{caveat}" does not match this request (path = {PATH}' in message
    assert hint in message


def test_client_caveat_matches_a_request_naming_that_client() -> None:
    auth().check(mint(SECRET, [*ALL, "client = app1"]), method="GET", path=PATH, client="app1")


def test_client_caveat_rejects_another_client() -> None:
    assert "covering client app2" in refusal(mint(SECRET, ["client = app1"]), client="app2")


def test_client_caveat_rejects_a_request_naming_no_client() -> None:
    assert "which has no client" in refusal(mint(SECRET, ["client = app1"]))


def test_observe_caveat_grants_an_observe_request() -> None:
    auth().check(mint(SECRET, [*ALL, "observe = data"]), method="GET", path=PATH, observe=True)


def test_observe_caveat_rejects_a_plain_request() -> None:
    assert "which has no observe" in refusal(mint(SECRET, [*ALL, "observe = data"]))


def test_token_minted_with_another_secret_is_rejected() -> None:
    assert "signature does not verify" in refusal(mint(b"other secret", ALL))


def test_tampered_caveat_is_rejected() -> None:
    raw = base64.urlsafe_b64decode(mint(SECRET, ["path = /other/x"]))
    forged = base64.urlsafe_b64encode(raw.replace(b"/other/x", b"/sensor-"))
    assert "signature does not verify" in refusal(forged.decode())


def test_third_party_caveat_is_rejected() -> None:
    m = Macaroon(location="arbiter", identifier="app1", key=SECRET)
    m.add_third_party_caveat("auth.example", "discharge key", "user = bob")
    assert "third-party caveat" in refusal(m.serialize())


def test_missing_token_is_rejected() -> None:
    for token in (None, "", b""):
        assert refusal(token).startswith("missing token")


@pytest.mark.parametrize("urlsafe", [True, False])
@pytest.mark.parametrize("padded", [True, False])
def test_all_four_base64_spellings_are_accepted(urlsafe: bool, padded: bool) -> None:
    # a token that needs padding and uses a URL-safe character, so all four spellings differ
    token = next(
        t for i in range(200) if "=" in (t := mint(SECRET, ALL, identifier=f"i{i}")) and "-" in t
    )
    if not urlsafe:
        token = token.replace("-", "+").replace("_", "/")
    if not padded:
        token = token.rstrip("=")
    auth().check(token, method="GET", path=PATH)
    auth().check(token.encode(), method="GET", path=PATH)


def test_arbiter_style_token_with_empty_location_and_identifier_is_accepted() -> None:
    auth().check(mint(SECRET, ALL, location="", identifier=""), method="GET", path=PATH)


def test_token_without_a_location_packet_is_accepted() -> None:
    raw = base64.urlsafe_b64decode(mint(SECRET, ALL))
    token = base64.urlsafe_b64encode(raw[int(raw[:4], 16) :]).decode()
    auth().check(token, method="GET", path=PATH)


def test_pymacaroons_tokens_pass_the_check() -> None:
    auth().check(pymacaroons_token([*ALL, "client = app1"]), method="GET", path=PATH, client="app1")


@given(st.lists(st.text(st.characters(codec="utf-8"), max_size=40), max_size=5))
def test_minted_tokens_verify_with_pymacaroons(caveats: list[str]) -> None:
    verifier = Verifier()
    verifier.satisfy_general(lambda caveat: True)
    assert verifier.verify(Macaroon.deserialize(mint(SECRET, caveats)), SECRET)


def test_disabled_authoriser_allows_anything() -> None:
    authoriser = Authoriser(None, STORE)
    assert not authoriser.enabled
    for token in (None, "garbage", mint(b"x", ["path = /nope"])):
        authoriser.check(token, method="POST", path="/x")


def _packet(key: bytes, value: bytes, skew: int) -> bytes:
    return b"%04x%s %s\n" % (max(0, 6 + len(key) + len(value) + skew), key, value)


_KEYS = st.sampled_from([b"location", b"identifier", b"cid", b"vid", b"cl", b"signature", b"x"])
_PACKETS = st.lists(st.builds(_packet, _KEYS, st.binary(max_size=40), st.integers(-2, 2)))
_GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.binary(max_size=300).map(base64.b64encode),
    _PACKETS.map(lambda packets: base64.urlsafe_b64encode(b"".join(packets))),
)


@given(_GARBAGE)
def test_garbage_tokens_raise_only_unauthorized(token: str | bytes) -> None:
    with pytest.raises(Unauthorized):
        auth().check(token, method="GET", path=PATH)


def _unsigned_positions(raw: bytes) -> set[int]:
    """The location packet and the length prefixes (whose hex digits may change case)."""
    positions, at = set(range(int(raw[:4], 16))), 0
    while at < len(raw):
        positions.update(range(at, at + 4))
        at += int(raw[at : at + 4], 16)
    return positions


@given(st.data())
def test_corrupted_tokens_fail_with_unauthorized_unless_no_signed_byte_changed(
    data: st.DataObject,
) -> None:
    raw = bytearray(base64.urlsafe_b64decode(mint(SECRET, ALL, identifier="x")))
    unsigned = _unsigned_positions(bytes(raw))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    try:
        auth().check(base64.b64encode(raw), method="GET", path=PATH)
    except Unauthorized:
        return
    assert at in unsigned


def test_messages_never_show_the_secret_or_the_signature() -> None:
    good = mint(SECRET, ALL)
    signature = base64.urlsafe_b64decode(good)[-33:-1]
    tokens: list[str | None] = [
        None,
        "!!",
        good[:-8],
        mint(b"other", ALL),
        mint(SECRET, ["path = /x"]),
        mint(SECRET, ["client = c", "odd"]),
    ]
    secret_forms = [SECRET.decode(), signature.hex(), base64.b64encode(signature).decode()[:20]]
    for token in tokens:
        for client, observe in ((None, False), ("a", False), (None, True)):
            message = refusal(token, client=client, observe=observe)
            assert not any(form in message for form in secret_forms), message


def test_a_token_longer_than_the_limit_is_refused_before_it_is_parsed() -> None:
    authoriser = Authoriser(SECRET, STORE, max_token=200)
    token = mint(SECRET, [*ALL, "observe = " + "x" * 200])
    with pytest.raises(Unauthorized, match="limit is 200") as caught:
        authoriser.check(token, method="GET", path=PATH)
    assert "fewer caveats" in caught.value.message and authoriser.verified == 0


def test_a_token_with_more_caveats_than_the_limit_is_refused() -> None:
    authoriser = Authoriser(SECRET, STORE, max_caveats=3)
    assert authoriser.check(mint(SECRET, ALL), method="GET", path=PATH) is None
    with pytest.raises(Unauthorized, match="more than 3 caveats"):
        authoriser.check(mint(SECRET, [*ALL, "path = /*"]), method="GET", path=PATH)


def test_a_forged_token_is_verified_once_then_refused_from_the_cache() -> None:
    authoriser = auth()
    forged = mint(b"not-the-secret", ALL)
    for _ in range(3):
        with pytest.raises(Unauthorized, match="signature does not verify"):
            authoriser.check(forged, method="GET", path=PATH)
    good = mint(SECRET, ALL)
    for _ in range(3):
        authoriser.check(good, method="GET", path=PATH)
    assert authoriser.verified == 2


def test_the_verdict_cache_is_bounded_in_entries_and_bytes() -> None:
    by_entries = Authoriser(SECRET, STORE, cache_entries=5)
    by_bytes = Authoriser(SECRET, STORE, cache_bytes=4000)
    tokens = [mint(SECRET, [*ALL[:2], f"target = {i}"]) for i in range(50)]
    for authoriser in (by_entries, by_bytes):
        for token in tokens:
            with pytest.raises(Unauthorized):
                authoriser.check(token, method="GET", path=PATH)
    assert len(by_entries._cache) == 5
    assert 0 < by_bytes.cached_bytes <= 4000 and len(by_bytes._cache) < 50
    # the most recent verdicts are the ones kept
    by_entries.verified = 0
    with pytest.raises(Unauthorized):
        by_entries.check(tokens[-1], method="GET", path=PATH)
    assert by_entries.verified == 0
