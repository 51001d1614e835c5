"""The sync JobClient and Driver against a real store: what is tested for this flavour only
(tests/_async/test_client.py holds what both flavours share, generated into tests/_sync/)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from jobstore.client import JobCancelled, JobClient, JobContext
from jobstore.errors import Timeout

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
