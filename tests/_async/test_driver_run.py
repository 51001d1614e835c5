"""Driver.run against a real store, for both flavours (see test_client.py): what it reports for
each way a handler ends, lease renewal, progress and cancels while a handler works, and a job
that changed under it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobstore.aio import ForbidJob, JobCancelled, JobContext, RetryJob
from jobstore.errors import SetupError

from ..conftest import Clocks, RunningStore
from .flavour import Background, Event, run, running, sleep, wait_set
from .helpers import client, driver, wait_for


def test_driver_run_completes_jobs_with_the_handlers_result(store: RunningStore) -> None:
    async def echo(ctx: JobContext) -> dict[str, Any]:
        return {"echo": ctx.request}

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(driver(store), echo):
            job = (await app.submit({"x": 1}))["job"]
            return await wait_for(app, job, "complete")

    record = run(main())
    assert record["response"] == {"echo": {"x": 1}} and record["attempts"] == 1


def test_driver_run_fails_a_job_whose_handler_raises(store: RunningStore) -> None:
    async def broken(ctx: JobContext) -> None:
        raise ValueError("sensor offline")

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(driver(store), broken):
            job = (await app.submit("x"))["job"]
            return await wait_for(app, job, "failed")

    assert run(main())["response"] == {"error": "ValueError: sensor offline"}


@pytest.mark.parametrize(("exc", "status"), [(ForbidJob, "forbidden"), (RetryJob, "retrying")])
def test_driver_run_reports_what_the_handler_signals(
    store: RunningStore, exc: type[Exception], status: str
) -> None:
    calls: list[str] = []

    async def handler(ctx: JobContext) -> None:
        calls.append(ctx.id)
        if len(calls) == 1:
            raise exc("not now")

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(driver(store), handler):
            job = (await app.submit("x"))["job"]
            # A retried job is taken again at once and completes: its history shows the retry.
            return await wait_for(app, job, "forbidden", "complete")

    record = run(main())
    assert status in [entry["status"] for entry in record["history"]]
    if status == "forbidden":
        assert record["response"] == {"error": "ForbidJob: not now"}


def test_driver_run_renews_the_lease_while_the_handler_runs(store: RunningStore) -> None:
    async def slow(ctx: JobContext) -> str:
        await sleep(1.0)  # the work: over three 300 ms leases, outlived only by renewal
        return "done"

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(driver(store), slow, lease=300):
            job = (await app.submit("x"))["job"]
            return await wait_for(app, job, "complete")

    record = run(main())
    assert record["attempts"] == 1 and record["response"] == "done"
    assert "retrying" not in [entry["status"] for entry in record["history"]]


def test_handler_progress_reaches_the_client(store: RunningStore) -> None:
    async def main() -> None:
        release = Event()

        async def counting(ctx: JobContext) -> str:
            ctx.progress({"done": 1, "total": 2})
            await wait_set(release, 10)
            return "finished"

        async with client(store) as app, running(driver(store), counting):
            job = (await app.submit("x"))["job"]
            async with app.watch(timeout=10) as watch:
                async for record in watch:
                    if record["job"] == job and record.get("progress") is not None:
                        break
                assert record["progress"] == {"done": 1, "total": 2}
                release.set()
                async for record in watch:
                    if record["job"] == job and record["status"] == "complete":
                        break
            assert record["response"] == "finished"

    run(main())


def test_driver_run_passes_on_a_cancel(store: RunningStore) -> None:
    async def main() -> dict[str, Any]:
        started = Event()

        async def patient(ctx: JobContext) -> None:
            started.set()
            deadline = time.monotonic() + 10
            while not ctx.cancel_requested:
                assert time.monotonic() < deadline, "cancel never reached the handler"
                await sleep(0.01)
            raise JobCancelled("stopped early")

        # The cancel reaches the handler with a lease renewal: every 100 ms with this lease.
        async with client(store) as app, running(driver(store), patient, lease=300):
            job = (await app.submit("x"))["job"]
            await wait_set(started, 5)
            await app.cancel(job)
            return await wait_for(app, job, "cancelled")

    record = run(main())
    assert record["attempts"] == 1 and record["response"] == "JobCancelled: stopped early"


def test_a_job_handed_back_after_a_cancel_request_reaches_the_next_handler_with_it(
    store: RunningStore,
) -> None:
    seen: list[bool] = []

    async def handler(ctx: JobContext) -> None:
        seen.append(ctx.cancel_requested)
        raise JobCancelled("as asked")

    async def main() -> None:
        async with client(store) as app, driver(store) as first, driver(store) as second:
            job = (await app.submit("x"))["job"]
            await first.take()
            await app.cancel(job)
            await first.retry(job)
            assert await second.run(handler, max_jobs=1, wait=1000) == 1
            assert seen == [True] and (await app.status(job))["status"] == "cancelled"

    run(main())


def test_driver_run_logs_a_job_that_changed_under_it_and_runs_the_next(
    store: RunningStore, clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        started, release = Event(), Event()

        async def handler(ctx: JobContext) -> str:
            if ctx.request == "first":
                started.set()
                await wait_set(release, 10)
            return f"done {ctx.request}"

        async with client(store) as app, driver(store) as runner, driver(store) as other:
            first = (await app.submit("first"))["job"]
            # Renewals every 20 s: none falls inside this test, so the lease runs out.
            runs = Background(runner, handler, lease=60_000, wait=50, max_jobs=2)
            await wait_set(started, 5)
            clocks.mono += 60_000  # the runner's lease runs out while its handler works
            [taken] = await other.take(wait=5000)
            assert taken["job"] == first and taken["attempts"] == 2
            second = (await app.submit("second"))["job"]
            release.set()
            assert await runs.result(10) == 2
            assert (await app.status(second))["response"] == "done second"
            record = await app.status(first)
            assert record["status"] == "accepted" and record["attempts"] == 2  # still the other's
        assert f"job {first} changed under the driver" in caplog.text

    run(main())


def test_driver_run_hands_back_the_job_and_raises_a_setup_error(store: RunningStore) -> None:
    async def handler(ctx: JobContext) -> Any:
        raise SetupError("the model file is missing")

    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            await app.submit(1, job="a")
            await app.submit(2, job="b")
            with pytest.raises(SetupError, match="the model file is missing"):
                await drv.run(handler, wait=0, max_jobs=2)
            assert (await app.status("a"))["status"] == "retrying"
            assert (await app.status("b"))["status"] == "submitted"

    run(main())
