"""Leases: measured on the store clock, remembered per job, and tied to an attempt.

Without sockets, but for the last few: the same clocks under a served store and its clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobstore.store.operations import Limits

from .conftest import Clocks, RunningStore, StoreFactory
from .test_service import Harness

HOUR = 3_600_000


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "data")


def status(h: Harness, now: int | None = None) -> dict[str, Any]:
    outcome = h.call("GET", "/ds/job/c1/j1", now=now)
    assert outcome.reply is not None and outcome.reply.status == 200, outcome.reply
    record: dict[str, Any] = outcome.reply.body
    return record


def assert_times_never_go_back(record: dict[str, Any]) -> None:
    times = [entry["at"] for entry in record["history"]]
    assert record["created"] <= record["updated"]
    assert times == sorted(times) and times[-1] == record["updated"]


def test_a_wall_clock_step_forward_expires_no_lease(h: Harness) -> None:
    h.submit()
    h.take(lease=60_000)
    h.step_wall_clock(HOUR)
    record = status(h)
    assert record["status"] == "accepted" and record["attempts"] == 1
    # The lease runs out when 60 s have really passed, not before.
    assert status(h, now=h.now + 59_998)["status"] == "accepted"
    assert status(h, now=h.now + 1)["status"] == "retrying"


def test_a_wall_clock_step_forward_fails_no_job_at_its_attempt_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data", Limits(max_attempts=1))
    h.submit()
    h.take(lease=60_000)
    h.step_wall_clock(HOUR)
    assert status(h)["status"] == "accepted"
    assert h.report("j1", "complete", response="done")["status"] == "complete"


def test_a_wall_clock_step_back_keeps_no_lease_longer(h: Harness) -> None:
    h.submit()
    h.take(lease=1000)
    h.step_wall_clock(-HOUR)
    assert status(h, now=h.now + 999)["status"] == "accepted"
    record = status(h, now=h.now + 1)
    assert record["status"] == "retrying"
    assert_times_never_go_back(record)


def test_updated_never_goes_before_created_after_a_step_back(h: Harness) -> None:
    h.submit()
    h.step_wall_clock(-HOUR)
    [taken] = h.take()
    assert taken["updated"] == taken["created"]
    h.step_wall_clock(-HOUR)
    record = h.report("j1", "complete")
    assert record["updated"] == taken["updated"]
    assert_times_never_go_back(record)


def test_a_lease_keeps_the_time_it_had_left_across_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data")
    h.submit()  # store clock 0 (its first reading)
    h.take(lease=10_000)  # store clock 1: the lease runs to 10_001
    status(h, now=h.now + 4_000)  # store clock 4_001, committed with this request
    h.storage.close()
    # A day later on the wall clock, and a monotonic clock that restarted from another origin
    # (a reboot): the store resumes at 4_001, so the lease has 6_000 ms left.
    again = Harness(tmp_path / "data")
    again.now, again.stepped = h.now + 24 * HOUR, 123_456_789
    assert status(again)["status"] == "accepted"
    assert status(again, now=again.now + 5_999)["status"] == "accepted"
    assert status(again, now=again.now + 1)["status"] == "retrying"


def test_a_progress_report_without_a_lease_renews_by_the_lease_of_the_take(h: Harness) -> None:
    h.submit()
    h.take(lease=100_000)
    h.now += 90_000
    h.report("j1", "accepted", progress=1)
    # The store's default lease (30 s) would have run out by now; the take's 100 s has not.
    assert status(h, now=h.now + 99_999)["status"] == "accepted"
    assert status(h, now=h.now + 1)["status"] == "retrying"


def test_accept_sets_the_lease_reports_renew_by(h: Harness) -> None:
    h.submit()
    h.ok("POST", "/server/ds/job/accept", {"job": "j1", "lease": 50_000})
    h.report("j1", "accepted", progress=1)
    assert status(h, now=h.now + 49_999)["status"] == "accepted"


def test_a_renewal_with_its_own_lease_uses_it_once(h: Harness) -> None:
    h.submit()
    h.take(lease=100_000)
    h.report("j1", "accepted", lease=500)
    assert status(h, now=h.now + 498)["status"] == "accepted"
    h.report("j1", "accepted")  # without a lease: the take's again
    assert status(h, now=h.now + 99_999)["status"] == "accepted"
    assert status(h, now=h.now + 1)["status"] == "retrying"


def test_a_report_for_an_earlier_attempt_is_409_with_the_current_record(h: Harness) -> None:
    h.submit()
    h.take(lease=100)
    h.now += 100  # the first driver's lease runs out ...
    [again] = h.take()  # ... and a second driver holds the job now
    assert again["attempts"] == 2
    outcome = h.call(
        "POST", "/server/ds/job/status", {"job": "j1", "status": "complete", "attempt": 1}
    )
    reply = outcome.reply
    assert reply is not None and reply.status == 409 and outcome.changes == []
    error = reply.error or ""
    assert "is on attempt 2, not 1" in error and "take the next" in error
    assert reply.body["status"] == "accepted" and reply.body["attempts"] == 2
    done = h.report("j1", "complete", response="by the second", attempt=2)
    assert done["status"] == "complete" and done["response"] == "by the second"


def test_a_progress_report_for_an_earlier_attempt_renews_nothing(h: Harness) -> None:
    h.submit()
    h.take(lease=100)
    h.now += 100
    h.take(lease=100)
    h.error("POST", "/server/ds/job/status", {"job": "j1", "status": "accepted", "attempt": 1}, 409)
    assert status(h, now=h.now + 100)["status"] == "retrying"


@pytest.mark.parametrize("attempt", [-1, "1", 1.5, 2**64])
def test_an_attempt_that_is_not_a_count_is_400(h: Harness, attempt: Any) -> None:
    h.submit()
    h.take()
    body = {"job": "j1", "status": "complete", "attempt": attempt}
    assert "attempt must be an integer" in h.error("POST", "/server/ds/job/status", body, 400)


# A served store


def test_a_wall_clock_step_forward_expires_no_lease_of_a_served_store(
    store: RunningStore, clocks: Clocks
) -> None:
    with store.client() as app, store.driver() as driver:
        job = app.submit("x")["job"]
        driver.take(lease=60_000)
        clocks.wall += HOUR  # NTP sets the clock of a box with no RTC; no time has passed
        assert app.status(job)["status"] == "accepted"
        assert driver.complete(job, "done")["status"] == "complete"


def test_a_wall_clock_step_back_keeps_no_dead_drivers_lease(
    store: RunningStore, clocks: Clocks
) -> None:
    with store.client() as app, store.driver() as dead, store.driver() as alive:
        job = app.submit("x")["job"]
        dead.take(lease=60_000)
        clocks.wall -= HOUR  # the clock is set back an hour ...
        clocks.mono += 60_000  # ... and the lease's minute passes without a word from its driver
        [again] = alive.take(wait=5000)
        assert again["job"] == job and again["attempts"] == 2
        assert again["created"] <= again["updated"]


def test_a_lease_keeps_what_it_had_left_across_a_restart_a_day_later(
    start_store: StoreFactory, clocks: Clocks
) -> None:
    first = start_store()
    with first.client() as app, first.driver() as driver:
        job = app.submit("x")["job"]
        driver.take(lease=60_000)
    first.stop()
    clocks.wall += 24 * HOUR  # the box was off for a day (or its clock is set on boot)
    second = start_store(data_dir=first.data_dir)
    with second.client() as app, second.driver() as driver:
        assert app.status(job)["status"] == "accepted"
        clocks.mono += 60_000  # the lease's minute passes with the store up, and no renewal
        [again] = driver.take(wait=5000)
        assert again["job"] == job and again["attempts"] == 2
