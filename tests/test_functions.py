"""The decisions of durable function calls: who gets a call, what a call to nobody and a response get."""

from __future__ import annotations

import pytest

from jobstore.protocol import zest
from jobstore.states import Status
from jobstore.store import functions as fn

JSON, TEXT = zest.FORMAT_JSON, zest.FORMAT_TEXT


def obs(ident: bytes, pattern: str, fmt: int = JSON, expires: int | None = None) -> fn.Observation:
    return fn.Observation(ident, pattern, fmt, "notification", expires)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/notification/request/*", "/notification/request/f/j", True),
        ("/notification/request/*", "/notification/request/", False),  # at least one more char
        ("/notification/request/f/*", "/notification/request/f/j", True),
        ("/notification/request/f/*", "/notification/request/g/j", False),
        ("/notification/request/f/j", "/notification/request/f/j", True),
        ("/notification/request/f/j", "/notification/request/f/jj", False),
        ("/*", "/notification/request/f/j", True),
    ],
)
def test_patterns_match_as_zestdb(pattern: str, path: str, expected: bool) -> None:
    assert fn.matches(pattern, path) is expected


def test_a_call_goes_to_every_matching_observation_of_its_format() -> None:
    store = fn.Observations(
        [
            obs(b"b", "/notification/request/*"),
            obs(b"a", "/notification/request/light/*"),
            obs(
                b"c", "/notification/request/*", TEXT
            ),  # format differs: zestdb's key is (path, cf)
            obs(b"d", "/notification/request/heat/*"),
        ]
    )
    assert [o.ident for o in store.for_call("light", "j1", JSON)] == [b"a", b"b"]
    assert [o.ident for o in store.for_call("light", "j1", TEXT)] == [b"c"]
    assert store.for_call("door", "j1", zest.FORMAT_BINARY) == []


def test_watch_ignores_the_format() -> None:
    store = fn.Observations([obs(b"a", "/notification/request/light/*", TEXT)])
    assert store.watch("light") and not store.watch("heat")


def test_expired_observations_are_found_and_removed() -> None:
    store = fn.Observations(
        [obs(b"a", "/*", expires=100), obs(b"b", "/*"), obs(b"c", "/*", expires=200)]
    )
    assert [o.ident for o in store.expired(150)] == [b"a"]
    assert store.remove(b"a") is not None and store.remove(b"a") is None
    assert b"a" not in store and len(store) == 2


def test_observation_survives_its_stored_form() -> None:
    original = obs(b"3d9c-uuid", "/notification/request/*", JSON, 1_700_000_000_000)
    assert fn.load_observation(b"3d9c-uuid", fn.dump_observation(original)) == original


@pytest.mark.parametrize(
    ("observed", "known", "verdict"),
    [
        (True, True, fn.CallVerdict.DELIVER),
        (True, False, fn.CallVerdict.DELIVER),
        (False, True, fn.CallVerdict.KEEP),
        (False, False, fn.CallVerdict.UNAVAILABLE),
    ],
)
def test_call_verdict(observed: bool, known: bool, verdict: fn.CallVerdict) -> None:
    assert fn.call_verdict(observed=observed, known=known) is verdict


@pytest.mark.parametrize("status", list(Status))
def test_first_response_wins_and_later_ones_change_nothing(status: Status) -> None:
    verdict = fn.response_verdict(status)
    if status.terminal:
        assert verdict is fn.ResponseVerdict.DUPLICATE
    elif status is Status.ACCEPTED:
        assert verdict is fn.ResponseVerdict.END
    else:  # handed back after its lease ran out: the late answer still ends it
        assert verdict is fn.ResponseVerdict.END_QUEUED


def test_status_zero_completes_and_anything_else_fails() -> None:
    assert fn.ending({"Status": 0, "Response": None}) is Status.COMPLETE
    assert fn.ending({"Status": 99, "Response": None}) is Status.FAILED
    assert fn.ending({"Status": 97, "Response": None}) is Status.FAILED


def test_only_notification_client_jobs_are_calls() -> None:
    assert fn.is_call("notification") and not fn.is_call("app-1")
