"""jobstore.aio's JobClient and Driver against a real store, each test in its own event loop: what
only the asyncio flavour has (tests/_async/test_client.py holds what both flavours share)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from jobstore.aio import Driver, JobCancelled, JobClient, JobContext
from jobstore.errors import ClientError
from jobstore.store.auth import Authoriser

from ._async.flavour import run, running
from .conftest import Clocks, RunningStore, StoreFactory
from .test_databox import IDENTITY, PUBLIC_KEY, SECRET_KEY, TOKEN_SECRET, app_token, token


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


def test_page_returns_one_page_and_where_the_next_starts(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            seqs = [(await app.submit(i, job=f"j{i}"))["seq"] for i in range(3)]
            first, after = await app.page(limit=2)
            rest, end = await app.page(since=after or 0, limit=2)
        assert [r["job"] for r in first] == ["j0", "j1"] and after == seqs[1]
        assert [r["job"] for r in rest] == ["j2"] and end is None

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


def test_driver_run_runs_a_plain_function_handler_in_a_thread(store: RunningStore) -> None:
    threads: list[int] = []

    def double(ctx: JobContext) -> int:
        threads.append(threading.get_ident())
        return int(ctx.request) * 2

    async def main() -> dict[str, Any]:
        async with client(store) as app, running(driver(store), double):
            job = (await app.submit(21))["job"]
            return await wait_for(app, job, "complete")

    record = run(main())
    assert record["response"] == 42 and threads != [threading.get_ident()]


def test_driver_run_renews_the_lease_while_the_handler_runs(store: RunningStore) -> None:
    async def slow(ctx: JobContext) -> str:
        await asyncio.sleep(1.0)  # the work: over three 300 ms leases, outlived only by renewal
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
        release = asyncio.Event()

        async def counting(ctx: JobContext) -> str:
            ctx.progress({"done": 1, "total": 2})
            await release.wait()
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
        started = asyncio.Event()

        async def patient(ctx: JobContext) -> None:
            started.set()
            async with asyncio.timeout(10):
                while not ctx.cancel_requested:
                    await asyncio.sleep(0.01)
            raise JobCancelled("stopped early")

        # The cancel reaches the handler with a lease renewal: every 100 ms with this lease.
        async with client(store) as app, running(driver(store), patient, lease=300):
            job = (await app.submit("x"))["job"]
            await asyncio.wait_for(started.wait(), 5)
            await app.cancel(job)
            return await wait_for(app, job, "cancelled")

    record = run(main())
    assert record["attempts"] == 1 and record["response"] == "JobCancelled: stopped early"


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
