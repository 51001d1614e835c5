"""Submit options, queue settings and the retry backoff, without a store."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstore.errors import BadRequest
from jobstore.store.scheduling import (
    MAX_TIME,
    Settings,
    Timing,
    backoff_delay,
    batch_jobs,
    report_delay,
    retry_not_before,
    same_timing,
    settings_from,
    submit_timing,
    update_settings,
)

NOW = 1_700_000_000_000


def test_a_submit_without_options_has_the_default_timing() -> None:
    assert submit_timing({}, NOW) == Timing(0, None, None)


def test_delay_counts_from_now_and_not_before_is_taken_as_given() -> None:
    assert submit_timing({"delay": 500, "priority": -3}, NOW) == Timing(-3, NOW + 500, None)
    assert submit_timing({"not_before": 5, "expires": 6}, NOW) == Timing(0, 5, 6)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"priority": 101}, "priority"),
        ({"priority": -101}, "priority"),
        ({"priority": 1.0}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": "1"}, "priority"),
        ({"delay": -1}, "delay"),
        ({"delay": MAX_TIME}, "delay"),
        ({"not_before": -1}, "not_before"),
        ({"not_before": MAX_TIME + 1}, "not_before"),
        ({"expires": NOW}, "expires"),
        ({"expires": NOW - 1}, "expires"),
        ({"not_before": 10, "expires": 10}, "expires"),
        ({"delay": 10, "expires": NOW + 10}, "expires"),
        ({"expires": 2**64}, "expires"),
    ],
)
def test_an_out_of_range_option_is_refused_naming_it(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest, match=rf"^{field} "):
        submit_timing(body, NOW)


def test_delay_and_not_before_together_are_refused_naming_both() -> None:
    with pytest.raises(BadRequest, match=r"^delay and not_before were both given"):
        submit_timing({"delay": 1, "not_before": NOW}, NOW)


def test_a_resubmit_with_the_options_omitted_matches_their_defaults() -> None:
    assert same_timing(Timing(), submit_timing({"priority": 0}, NOW), NOW - 5, NOW, started=False)
    assert not same_timing(Timing(), submit_timing({"priority": 1}, NOW), NOW, NOW, started=False)


def test_a_resubmitted_delay_counts_from_the_first_submit() -> None:
    first = submit_timing({"delay": 1000}, NOW)
    again = submit_timing({"delay": 1000}, NOW + 400)
    assert same_timing(first, again, NOW, NOW + 400, started=False)
    other = submit_timing({"delay": 999}, NOW + 400)
    assert not same_timing(first, other, NOW, NOW + 400, started=False)
    assert not same_timing(first, Timing(), NOW, NOW + 400, started=False)


def test_once_started_a_resubmit_compares_priority_and_expires_only() -> None:
    stored = Timing(4, NOW + 90_000, None)  # not_before set by a retry's delay
    assert same_timing(stored, Timing(4, None, None), NOW, NOW + 1, started=True)
    assert not same_timing(stored, Timing(4, None, NOW + 10), NOW, NOW + 1, started=True)


def test_settings_change_only_what_is_given() -> None:
    changed = update_settings(Settings(), {"paused": True, "backoff": 250})
    assert changed == Settings(paused=True, backoff=250)
    assert update_settings(changed, {}) == changed
    assert changed.wire(max_attempts=5, lease=30_000) == {
        "paused": True,
        "backoff": 250,
        "max_backoff": 300_000,
        "max_attempts": 5,
        "lease": 30_000,
    }


def test_settings_keep_what_differs_from_the_defaults_and_read_it_back() -> None:
    settings = Settings(max_attempts=9, lease=1000)
    assert settings.stored() == {"max_attempts": 9, "lease": 1000}
    assert settings_from(settings.stored()) == settings
    assert settings_from({"lease": 7, "from_a_newer_store": 1}) == Settings(lease=7)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"paused": 1}, "paused"),
        ({"paused": None}, "paused"),
        ({"backoff": -1}, "backoff"),
        ({"backoff": None}, "backoff"),
        ({"max_backoff": 2**41}, "max_backoff"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"lease": 0}, "lease"),
        ({"lease": "30s"}, "lease"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest, match=rf"^{field} "):
        update_settings(Settings(), body)


def test_an_unknown_setting_is_refused_naming_it_and_the_known_ones() -> None:
    with pytest.raises(BadRequest, match=r"unknown setting 'pause'.*paused, backoff"):
        update_settings(Settings(), {"paused": True, "pause": True})


def test_settings_must_be_a_map() -> None:
    with pytest.raises(BadRequest, match=r"^body must be a map"):
        update_settings(Settings(), [True])


def test_no_backoff_retries_at_once() -> None:
    assert backoff_delay(0, 300_000, 7, 1.2) == 0


@given(
    backoff=st.integers(1, 1 << 40),
    max_backoff=st.integers(0, 1 << 40),
    attempts=st.integers(0, 10_000),
    factor=st.floats(0.8, 1.2),
)
def test_backoff_doubles_per_attempt_up_to_the_cap_with_jitter(
    backoff: int, max_backoff: int, attempts: int, factor: float
) -> None:
    base = min(backoff * 2 ** (max(attempts, 1) - 1), max_backoff)
    delay = backoff_delay(backoff, max_backoff, attempts, factor)
    assert abs(delay - base * factor) <= 0.5
    assert round(base * 0.8) <= delay <= round(base * 1.2)


def test_a_reported_delay_wins_over_the_backoff() -> None:
    settings = Settings(backoff=1000)
    assert retry_not_before(NOW, 5, settings, attempts=3, factor=1.0) == NOW + 5
    assert retry_not_before(NOW, None, settings, attempts=3, factor=1.0) == NOW + 4000
    assert retry_not_before(NOW, 0, settings, attempts=3, factor=1.0) == NOW


def test_without_backoff_or_delay_a_job_is_retried_at_once() -> None:
    assert retry_not_before(NOW, None, Settings(), attempts=9, factor=1.2) is None


def test_a_report_delay_out_of_range_is_refused_naming_it() -> None:
    assert report_delay({}) is None
    with pytest.raises(BadRequest, match=r"^delay "):
        report_delay({"delay": -5})


@pytest.mark.parametrize("jobs", [None, [], {"a": 1}, [{}] * 1001])
def test_a_batch_holds_1_to_1000_jobs(jobs: Any) -> None:
    with pytest.raises(BadRequest, match=r"^jobs must be an array of 1 to 1000"):
        batch_jobs({"jobs": jobs})
    assert batch_jobs({"jobs": [{}] * 1000}) == [{}] * 1000
