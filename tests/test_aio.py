"""jobstore.aio's JobClient and Driver against a real store, each test in its own event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobstore.aio import Driver, ForbidJob, JobCancelled, JobClient, JobContext, RetryJob
from jobstore.errors import ClientError, RequestFailed, Timeout
from jobstore.store.auth import Authoriser

from .conftest import Clocks, RunningStore, StoreFactory
from .test_databox import IDENTITY, PUBLIC_KEY, SECRET_KEY, TOKEN_SECRET, app_token, token

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], limit: float = 30) -> T:
    """Run a test's coroutine in a fresh event loop; fail it if it takes over ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(main, limit))


def client(store: RunningStore, name: str = "app1", **kw: Any) -> JobClient:
    return JobClient(store.endpoint, "ds", name, notify_endpoint=store.notify_endpoint, **kw)


def driver(store: RunningStore, **kw: Any) -> Driver:
    return Driver(store.endpoint, "ds", notify_endpoint=store.notify_endpoint, **kw)


async def wait_for(app: JobClient, job: str, *statuses: str) -> dict[str, Any]:
    async with app.watch(timeout=10) as watch:
        async for record in watch:
            if record["job"] == job and record["status"] in statuses:
                return record
    raise AssertionError("watch ended")


@asynccontextmanager
async def running(store: RunningStore, handler: Any, **kw: Any) -> AsyncIterator[None]:
    """Driver.run(handler) in a task for the duration of the block; its errors fail the test."""
    stop = asyncio.Event()
    async with driver(store) as drv:
        task = asyncio.create_task(drv.run(handler, wait=50, stop=stop, **kw))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


def test_submit_status_and_cancel(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            record = await app.submit({"n": 1})
            assert record["status"] == "submitted" and len(record["job"]) == 32
            assert await app.status(record["job"]) == record
            assert (await app.cancel(record["job"]))["status"] == "cancelled"

    run(main())


def test_many_coroutines_calling_at_once_each_get_their_own_reply(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            submitted = await asyncio.gather(
                *(app.submit({"n": i}, job=f"j{i}") for i in range(200))
            )
            read = await asyncio.gather(*(app.status(f"j{i}") for i in range(200)))
        assert [(r["job"], r["request"]) for r in submitted] == [
            (f"j{i}", {"n": i}) for i in range(200)
        ]
        assert read == submitted

    run(main())


def test_a_reply_held_back_does_not_hold_up_later_calls(store: RunningStore) -> None:
    async def main() -> None:
        async with driver(store) as drv:
            take = asyncio.create_task(drv.take(wait=1500))
            # Tasks start in order: the listing goes out after the take, on the same socket.
            listing = asyncio.create_task(drv.conn.call("GET", "/server/ds/job/"))
            assert (await asyncio.wait_for(listing, 5))["jobs"] == []
            assert not take.done()
            assert await asyncio.wait_for(take, 5) == []

    run(main())


def test_jobs_iterates_every_page(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            ids = [(await app.submit(i, job=f"j{i:03}"))["job"] for i in range(250)]
            assert [r["job"] async for r in app.jobs()] == ids
            assert [r["job"] async for r in app.jobs(since=200)] == ids[200:]

    run(main())


def test_page_returns_one_page_and_where_the_next_starts(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            seqs = [(await app.submit(i, job=f"j{i}"))["seq"] for i in range(3)]
            first, after = await app.page(limit=2)
            rest, end = await app.page(since=after or 0, limit=2)
        assert [r["job"] for r in first] == ["j0", "j1"] and after == seqs[1]
        assert [r["job"] for r in rest] == ["j2"] and end is None

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


def test_closing_a_client_fails_the_calls_still_waiting(store: RunningStore) -> None:
    async def main() -> None:
        drv = driver(store)
        take = asyncio.create_task(drv.take(wait=10_000))
        assert [r async for r in drv.jobs()] == []  # the take is in flight once this is answered
        await drv.close()
        with pytest.raises(ClientError) as info:
            await take
        assert "closed" in info.value.message

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


def test_an_awaited_watch_is_subscribed_and_iterates_with_async_for(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            watch = await app.watch(timeout=10)
            try:
                await app.submit(1, job="j1")
                async for record in watch:
                    assert record["job"] == "j1" and watch.last == record["seq"]
                    break
            finally:
                await watch.close()

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
            await asyncio.to_thread(first.stop)
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


def test_driver_run_completes_jobs_with_an_async_handlers_result(store: RunningStore) -> None:
    async def echo(ctx: JobContext) -> dict[str, Any]:
        return {"echo": ctx.request}

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(store, echo):
            job = (await app.submit({"x": 1}))["job"]
            return await wait_for(app, job, "complete")

    record = run(main())
    assert record["response"] == {"echo": {"x": 1}} and record["attempts"] == 1


def test_driver_run_runs_a_plain_function_handler_in_a_thread(store: RunningStore) -> None:
    threads: list[int] = []

    def double(ctx: JobContext) -> int:
        threads.append(threading.get_ident())
        return int(ctx.request) * 2

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(store, double):
            job = (await app.submit(21))["job"]
            return await wait_for(app, job, "complete")

    record = run(main())
    assert record["response"] == 42 and threads != [threading.get_ident()]


def test_driver_run_fails_a_job_whose_handler_raises(store: RunningStore) -> None:
    async def broken(ctx: JobContext) -> None:
        raise ValueError("sensor offline")

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(store, broken):
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
        async with client(store) as app, running(store, handler):
            job = (await app.submit("x"))["job"]
            # A retried job is taken again at once and completes: its history shows the retry.
            return await wait_for(app, job, "forbidden", "complete")

    record = run(main())
    assert status in [entry["status"] for entry in record["history"]]
    if status == "forbidden":
        assert record["response"] == {"error": "ForbidJob: not now"}


def test_driver_run_renews_the_lease_while_the_handler_runs(store: RunningStore) -> None:
    async def slow(ctx: JobContext) -> str:
        await asyncio.sleep(1.0)  # the work: over three 300 ms leases, outlived only by renewal
        return "done"

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(store, slow, lease=300):
            job = (await app.submit("x"))["job"]
            return await wait_for(app, job, "complete")

    record = run(main())
    assert record["attempts"] == 1 and record["response"] == "done"
    assert "retrying" not in [entry["status"] for entry in record["history"]]


def test_handler_progress_reaches_the_client(store: RunningStore) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def counting(ctx: JobContext) -> str:
            ctx.progress({"done": 1, "total": 2})
            await release.wait()
            return "finished"

        async with client(store) as app, running(store, counting):
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
        started = asyncio.Event()

        async def patient(ctx: JobContext) -> None:
            started.set()
            async with asyncio.timeout(10):
                while not ctx.cancel_requested:
                    await asyncio.sleep(0.01)
            raise JobCancelled("stopped early")

        # The cancel reaches the handler with a lease renewal: every 100 ms with this lease.
        async with client(store) as app, running(store, patient, lease=300):
            job = (await app.submit("x"))["job"]
            await asyncio.wait_for(started.wait(), 5)
            await app.cancel(job)
            return await wait_for(app, job, "cancelled")

    record = run(main())
    assert record["attempts"] == 1 and record["response"] == "JobCancelled: stopped early"


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


def test_driver_registers_its_datasource_in_the_catalogue(store: RunningStore) -> None:
    async def main() -> None:
        async with driver(store) as drv:
            await drv.register("Sensor jobs")
            catalogue = await drv.conn.call("GET", "/cat")
        assert [item["href"] for item in catalogue["items"]] == [f"{store.endpoint}/ds"]

    run(main())


def test_a_curve_client_with_a_token_runs_a_job_end_to_end(start_store: StoreFactory) -> None:
    secured = start_store(secret_key=SECRET_KEY, auth=Authoriser(TOKEN_SECRET, IDENTITY))
    kw: dict[str, Any] = {"server_key": PUBLIC_KEY, "notify_endpoint": secured.notify_endpoint}

    def driver_token(method: str, path: str) -> str:
        return token(f"method = {method}", f"path = {path}")

    async def main() -> None:
        async with (
            JobClient(secured.endpoint, "ds", "app1", app_token(), **kw) as app,
            Driver(secured.endpoint, "ds", driver_token, **kw) as drv,
            app.watch(timeout=10) as watch,
        ):
            job = (await app.submit({"q": 1}))["job"]
            assert (await anext(watch))["status"] == "submitted"
            [taken] = await drv.take()
            assert (await anext(watch))["status"] == "accepted"
            await drv.complete(taken["job"], {"a": 2})
            assert (await anext(watch))["response"] == {"a": 2}
            assert (await app.status(job))["status"] == "complete"

    run(main())


def test_driver_run_logs_a_job_that_changed_under_it_and_runs_the_next(
    store: RunningStore, clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def handler(ctx: JobContext) -> str:
            if ctx.request == "first":
                started.set()
                await release.wait()
            return f"done {ctx.request}"

        async with client(store) as app, driver(store) as runner, driver(store) as other:
            first = (await app.submit("first"))["job"]
            # Renewals every 20 s: none falls inside this test, so the lease runs out.
            task = asyncio.create_task(runner.run(handler, lease=60_000, wait=50, max_jobs=2))
            await asyncio.wait_for(started.wait(), 5)
            clocks.mono += 60_000  # the runner's lease runs out while its handler works
            [taken] = await other.take(wait=5000)
            assert taken["job"] == first and taken["attempts"] == 2
            second = (await app.submit("second"))["job"]
            release.set()
            assert await asyncio.wait_for(task, 10) == 2
            assert (await app.status(second))["response"] == "done second"
            record = await app.status(first)
            assert record["status"] == "accepted" and record["attempts"] == 2  # still the other's
        assert f"job {first} changed under the driver" in caplog.text

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
            with pytest.raises(RequestFailed) as refused:
                await stale.complete(job, "stale")
            assert refused.value.status == 409 and refused.value.body["attempts"] == 2
            assert (await current.complete(job, "current"))["response"] == "current"

    run(main())
