"""JobClient and Driver against a real store: the checks both flavours share, written once.

Each test runs for the asyncio flavour here and for the sync one in the module
scripts/unasync.py generates from this; tests/test_aio.py and tests/test_client.py keep
what only one flavour has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobstore.aio import Driver, ForbidJob, JobClient, JobContext, RetryJob
from jobstore.errors import RequestFailed, Timeout

from ..conftest import Clocks, RunningStore, StoreFactory
from .flavour import run, running, to_thread


def client(store: RunningStore, name: str = "app1") -> JobClient:
    return JobClient(store.endpoint, "ds", name, notify_endpoint=store.notify_endpoint)


def driver(store: RunningStore) -> Driver:
    return Driver(store.endpoint, "ds", notify_endpoint=store.notify_endpoint)


async def wait_for(app: JobClient, job: str, *statuses: str) -> dict[str, Any]:
    async with app.watch(timeout=10) as watch:
        async for record in watch:
            if record["job"] == job and record["status"] in statuses:
                return record
    raise AssertionError("watch ended")


def test_submit_status_and_cancel(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            record = await app.submit({"n": 1})
            assert record["status"] == "submitted" and len(record["job"]) == 32
            assert await app.status(record["job"]) == record
            assert (await app.cancel(record["job"]))["status"] == "cancelled"

    run(main())


def test_errors_carry_status_and_an_actionable_message(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            with pytest.raises(RequestFailed) as info:
                await app.status("missing")
        assert info.value.status == 404 and "no job" in info.value.message

    run(main())


def test_a_call_to_no_store_times_out_with_advice(tmp_path: Path) -> None:
    async def main() -> None:
        async with JobClient(f"ipc://{tmp_path}/nobody", "ds", "c", timeout=0.2) as app:
            with pytest.raises(Timeout) as info:
                await app.status("j")
        assert "is the store running" in info.value.message

    run(main())


def test_jobs_iterates_every_page(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            ids = [(await app.submit(i, job=f"j{i:03}"))["job"] for i in range(250)]
            assert [r["job"] async for r in app.jobs()] == ids
            assert [r["job"] async for r in app.jobs(since=200)] == ids[200:]

    run(main())


def test_watch_catches_up_then_follows_live_changes(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            await app.submit("early", job="early")
            async with app.watch(timeout=10) as watch:
                assert (await anext(watch))["job"] == "early"
                await app.submit("late", job="late")
                assert (await anext(watch))["job"] == "late"
                await drv.take(2)
                changes = [await anext(watch), await anext(watch)]
        assert [(r["job"], r["status"]) for r in changes] == [
            ("early", "accepted"),
            ("late", "accepted"),
        ]

    run(main())


def test_watch_misses_nothing_across_a_store_restart(start_store: StoreFactory) -> None:
    first = start_store()
    endpoints = {
        "request_endpoint": first.endpoint,
        "observe_endpoint": first.server.endpoints["observe"],
        "notify_endpoint": first.notify_endpoint,
    }

    async def main() -> None:
        async with client(first) as app, app.watch(idle=0.1, timeout=10) as watch:
            await app.submit(1, job="before")
            assert (await anext(watch))["job"] == "before"
            await to_thread(first.stop)
            second = start_store(data_dir=first.data_dir, **endpoints)
            async with client(second) as other:
                await other.submit(2, job="after-1")
                await other.submit(3, job="after-2")
            assert [(await anext(watch))["job"], (await anext(watch))["job"]] == [
                "after-1",
                "after-2",
            ]

    run(main())


def test_watch_with_a_timeout_ends_when_nothing_changes(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app, app.watch(timeout=0.3) as watch:
            with pytest.raises(Timeout):
                await anext(watch)

    run(main())


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


def test_driver_lists_and_watches_every_client(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store, "a") as a, client(store, "b") as b, driver(store) as drv:
            async with drv.watch(timeout=10) as watch:
                await a.submit(1, job="ja")
                await b.submit(2, job="jb")
                assert {(await anext(watch))["job"], (await anext(watch))["job"]} == {"ja", "jb"}
            assert sorted([r["job"] async for r in drv.jobs()]) == ["ja", "jb"]
            assert [r["job"] async for r in drv.jobs(client="b")] == ["jb"]

    run(main())


def test_a_driver_whose_lease_ran_out_cannot_finish_the_job_another_driver_holds(
    store: RunningStore, clocks: Clocks
) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as stale, driver(store) as current:
            job = (await app.submit("x"))["job"]
            await stale.take(lease=60_000)
            clocks.mono += 60_000
            [again] = await current.take(wait=5000)
            assert again["attempts"] == 2
            for report in (stale.progress, stale.complete):
                with pytest.raises(RequestFailed) as refused:
                    await report(job, "stale")
                assert refused.value.status == 409 and "not 1" in refused.value.message
                assert refused.value.body["status"] == "accepted"
                assert refused.value.body["attempts"] == 2
            assert (await current.complete(job, "current"))["response"] == "current"

    run(main())
