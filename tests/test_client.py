"""JobClient and Driver against a real store."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from jobstore.client import ForbidJob, JobCancelled, JobClient, JobContext, RetryJob
from jobstore.errors import RequestFailed, Timeout

from .conftest import Clocks, RunningStore, StoreFactory

HOUR = 3_600_000


def run_driver_in_thread(
    store: RunningStore, handler: Any, **kw: Any
) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    driver = store.driver()

    def work() -> None:
        with driver:
            driver.run(handler, wait=50, stop=stop, **kw)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, stop


def wait_for(client: JobClient, job: str, *statuses: str) -> dict[str, Any]:
    with client.watch(timeout=10) as watch:
        for record in watch:
            if record["job"] == job and record["status"] in statuses:
                return record
    raise AssertionError("watch ended")


def test_submit_status_and_cancel(store: RunningStore) -> None:
    with store.client() as app:
        record = app.submit({"n": 1})
        assert record["status"] == "submitted" and len(record["job"]) == 32
        assert app.status(record["job"]) == record
        assert app.cancel(record["job"])["status"] == "cancelled"


def test_errors_carry_status_and_an_actionable_message(store: RunningStore) -> None:
    with store.client() as app, pytest.raises(RequestFailed) as info:
        app.status("missing")
    assert info.value.status == 404 and "no job" in info.value.message


def test_a_call_to_no_store_times_out_with_advice(tmp_path: Any) -> None:
    with (
        JobClient(f"ipc://{tmp_path}/nobody", "ds", "c", timeout=0.2) as app,
        pytest.raises(Timeout) as info,
    ):
        app.status("j")
    assert "is the store running" in info.value.message


def test_jobs_iterates_every_page(store: RunningStore) -> None:
    with store.client() as app:
        ids = [app.submit(i, job=f"j{i:03}")["job"] for i in range(250)]
        assert [r["job"] for r in app.jobs()] == ids
        assert [r["job"] for r in app.jobs(since=200)] == ids[200:]


def test_watch_catches_up_then_follows_live_changes(store: RunningStore) -> None:
    with store.client() as app, store.driver() as driver:
        app.submit("early", job="early")
        watch = app.watch(timeout=10)
        assert next(watch)["job"] == "early"
        app.submit("late", job="late")
        assert next(watch)["job"] == "late"
        driver.take(2)
        assert [(r["job"], r["status"]) for r in (next(watch), next(watch))] == [
            ("early", "accepted"),
            ("late", "accepted"),
        ]


def test_watch_sees_every_final_status_in_order_of_seq(store: RunningStore) -> None:
    with store.client() as app, store.driver() as driver:
        watch = app.watch(timeout=10)
        for i in range(30):
            app.submit(i, job=f"j{i}")
        for job in driver.take(30):
            driver.complete(job["job"], job["request"] * 2)
        done: dict[str, Any] = {}
        last = 0
        for record in watch:
            assert record["seq"] > last
            last = record["seq"]
            if record["status"] == "complete":
                done[record["job"]] = record["response"]
            if len(done) == 30:
                break
        assert done == {f"j{i}": i * 2 for i in range(30)}


def test_watch_does_not_show_other_clients_jobs(store: RunningStore) -> None:
    with store.client("alice") as alice, store.client("bob") as bob:
        watch = alice.watch(timeout=10)
        bob.submit("bob's", job="b1")
        alice.submit("alice's", job="a1")
        assert next(watch)["job"] == "a1"


def test_watch_misses_nothing_across_a_store_restart(start_store: Any) -> None:
    first = start_store()
    endpoints = {
        "request_endpoint": first.endpoint,
        "observe_endpoint": first.server.endpoints["observe"],
        "notify_endpoint": first.notify_endpoint,
    }
    with first.client() as app:
        watch = app.watch(idle=0.1, timeout=10)
        app.submit(1, job="before")
        assert next(watch)["job"] == "before"
        first.stop()
        second = start_store(data_dir=first.data_dir, **endpoints)
        with second.client() as other:
            other.submit(2, job="after-1")
            other.submit(3, job="after-2")
        assert [next(watch)["job"], next(watch)["job"]] == ["after-1", "after-2"]


def test_driver_run_completes_jobs_with_the_handlers_result(store: RunningStore) -> None:
    thread, stop = run_driver_in_thread(store, lambda ctx: {"echo": ctx.request})
    try:
        with store.client() as app:
            job = app.submit({"x": 1})["job"]
            record = wait_for(app, job, "complete")
        assert record["response"] == {"echo": {"x": 1}} and record["attempts"] == 1
    finally:
        stop.set()
        thread.join(5)


def test_driver_run_fails_a_job_whose_handler_raises(store: RunningStore) -> None:
    def broken(ctx: JobContext) -> None:
        raise ValueError("sensor offline")

    thread, stop = run_driver_in_thread(store, broken)
    try:
        with store.client() as app:
            job = app.submit("x")["job"]
            record = wait_for(app, job, "failed")
        assert record["response"] == {"error": "ValueError: sensor offline"}
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.parametrize(("exc", "status"), [(ForbidJob, "forbidden"), (RetryJob, "retrying")])
def test_driver_run_reports_what_the_handler_signals(
    store: RunningStore, exc: type, status: str
) -> None:
    calls = []

    def handler(ctx: JobContext) -> None:
        calls.append(ctx.id)
        if len(calls) == 1:
            raise exc("not now")

    thread, stop = run_driver_in_thread(store, handler)
    try:
        with store.client() as app:
            job = app.submit("x")["job"]
            # A retried job is taken again at once and completes: its history shows the retry.
            record = wait_for(app, job, "forbidden", "complete")
        assert status in [entry["status"] for entry in record["history"]]
        if status == "forbidden":
            assert record["response"] == {"error": "ForbidJob: not now"}
    finally:
        stop.set()
        thread.join(5)


def test_watch_with_a_timeout_ends_when_nothing_changes(store: RunningStore) -> None:
    with store.client() as app, app.watch(timeout=0.3) as watch, pytest.raises(Timeout):
        next(watch)


def test_driver_run_renews_the_lease_and_passes_on_a_cancel(store: RunningStore) -> None:
    started = threading.Event()

    def slow(ctx: JobContext) -> str:
        started.set()
        ctx.progress({"done": 1, "total": 2})
        deadline = time.monotonic() + 10
        while not ctx.cancel_requested:
            assert time.monotonic() < deadline, "cancel never reached the handler"
            time.sleep(0.01)
        raise JobCancelled("stopped early")

    # A 300 ms lease would run out three times over during this job unless renewed.
    thread, stop = run_driver_in_thread(store, slow, lease=300)
    try:
        with store.client() as app:
            job = app.submit("x")["job"]
            assert started.wait(5)
            progress = wait_for(app, job, "accepted")
            while progress.get("progress") is None:
                progress = wait_for(app, job, "accepted")
            assert progress["progress"] == {"done": 1, "total": 2}
            time.sleep(1.0)  # longer than the lease: only renewal keeps it accepted
            assert app.status(job)["status"] == "accepted"
            app.cancel(job)
            record = wait_for(app, job, "cancelled")
        assert record["attempts"] == 1 and record["response"] == "JobCancelled: stopped early"
    finally:
        stop.set()
        thread.join(5)


def test_driver_lists_and_watches_every_client(store: RunningStore) -> None:
    with store.client("a") as a, store.client("b") as b, store.driver() as driver:
        watch = driver.watch(timeout=10)
        a.submit(1, job="ja")
        b.submit(2, job="jb")
        assert {next(watch)["job"], next(watch)["job"]} == {"ja", "jb"}
        assert sorted(r["job"] for r in driver.jobs()) == ["ja", "jb"]
        assert [r["job"] for r in driver.jobs(client="b")] == ["jb"]


def test_calls_to_a_store_that_never_answers_time_out_even_with_a_full_queue(tmp_path: Any) -> None:
    import zmq

    # A bound DEALER that never reads, and a client whose queue to it holds one message:
    # the second send would block for ever without a bound.
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.DEALER)
    silent.linger = 0
    silent.rcvhwm = 1
    silent.bind(f"ipc://{tmp_path}/silent")
    ctx.sndhwm = 1  # the default for sockets made from now on
    try:
        app = JobClient(f"ipc://{tmp_path}/silent", "ds", "c", timeout=0.05)
    finally:
        del ctx.sockopts[zmq.SNDHWM]
    with app:
        for _ in range(5):
            with pytest.raises(Timeout):
                app.submit("x" * 100_000)
    silent.close()


def test_a_second_cancel_cancels_a_job_handed_back_after_a_cancel_request(
    store: RunningStore,
) -> None:
    with store.client() as app, store.driver() as driver:
        job = app.submit("x")["job"]
        driver.take()
        asked = app.cancel(job)
        assert asked["status"] == "accepted" and asked["cancel_requested"] is True
        assert driver.retry(job)["status"] == "retrying"
        assert app.cancel(job)["status"] == "cancelled"
        assert driver.take() == []


def test_a_wall_clock_step_forward_expires_no_lease(store: RunningStore, clocks: Clocks) -> None:
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


def test_a_driver_whose_lease_ran_out_cannot_finish_the_job_another_driver_holds(
    store: RunningStore, clocks: Clocks
) -> None:
    with store.client() as app, store.driver() as stale, store.driver() as current:
        job = app.submit("x")["job"]
        stale.take(lease=60_000)
        clocks.mono += 60_000
        [again] = current.take(wait=5000)
        assert again["attempts"] == 2
        for report in (lambda: stale.progress(job, "half"), lambda: stale.complete(job, "stale")):
            with pytest.raises(RequestFailed) as refused:
                report()
            assert refused.value.status == 409 and "not 1" in refused.value.message
            assert refused.value.body["status"] == "accepted"
            assert refused.value.body["attempts"] == 2
        assert current.complete(job, "current")["response"] == "current"


def test_driver_run_logs_a_job_that_changed_under_it_and_runs_the_next(
    store: RunningStore, clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    started, release = threading.Event(), threading.Event()

    def handler(ctx: JobContext) -> str:
        if ctx.request == "first":
            started.set()
            assert release.wait(10), "the test never released the first job"
        return f"done {ctx.request}"

    ran: list[int | BaseException] = []

    def work() -> None:
        with store.driver() as driver:
            try:
                # Renewals every 20 s: none falls inside this test, so the lease runs out.
                ran.append(driver.run(handler, lease=60_000, wait=50, max_jobs=2))
            except BaseException as exc:
                ran.append(exc)

    with store.client() as app, store.driver() as other:
        first = app.submit("first")["job"]
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        assert started.wait(5)
        clocks.mono += 60_000  # the first driver's lease runs out while its handler works
        [taken] = other.take(wait=5000)
        assert taken["job"] == first and taken["attempts"] == 2
        second = app.submit("second")["job"]
        release.set()
        thread.join(10)
        assert not thread.is_alive() and ran == [2]
        assert app.status(second)["response"] == "done second"
        record = app.status(first)
        assert record["status"] == "accepted" and record["attempts"] == 2  # still the other's
    assert f"job {first} changed under the driver" in caplog.text


def test_a_job_handed_back_after_a_cancel_request_reaches_the_next_handler_with_it(
    store: RunningStore,
) -> None:
    seen: list[bool] = []

    def handler(ctx: JobContext) -> None:
        seen.append(ctx.cancel_requested)
        raise JobCancelled("as asked")

    with store.client() as app, store.driver() as first, store.driver() as second:
        job = app.submit("x")["job"]
        first.take()
        app.cancel(job)
        first.retry(job)
        assert second.run(handler, max_jobs=1, wait=1000) == 1
        assert seen == [True] and app.status(job)["status"] == "cancelled"


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
