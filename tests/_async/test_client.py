"""JobClient and Driver calls against a real store: the checks both flavours share, written once.

Each test runs for the asyncio flavour here and for the sync one in the module
scripts/unasync.py generates from this (test_driver_run.py and test_client_watch.py beside it
hold the driver's run and the watch); tests/test_aio.py and tests/test_client.py keep what only
one flavour has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

from jobstore.aio import Driver, JobClient
from jobstore.errors import RequestFailed, Timeout
from jobstore.store.auth import Authoriser
from jobstore.store.operations import Limits

from ..conftest import Clocks, RunningStore, StoreFactory
from ..test_databox import IDENTITY, PUBLIC_KEY, SECRET_KEY, TOKEN_SECRET, app_token, token
from .flavour import Context, run
from .helpers import client, driver


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


def test_jobs_and_page_follow_next_past_pages_cut_short_by_the_byte_cap(
    start_store: StoreFactory,
) -> None:
    store = start_store(Limits(page_bytes=10_000))

    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            ids = [(await app.submit("x" * 3000, job=f"j{i:02}"))["job"] for i in range(20)]
            page, after = await app.page(limit=1000)
            assert 0 < len(page) < len(ids) and after == page[-1]["seq"]
            assert [r["job"] async for r in app.jobs()] == ids
            assert [r["job"] async for r in drv.jobs(limit=1000)] == ids

    run(main())


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


def test_page_returns_one_page_and_where_the_next_starts(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            seqs = [(await app.submit(i, job=f"j{i}"))["seq"] for i in range(3)]
            first, after = await app.page(limit=2)
            rest, end = await app.page(since=after or 0, limit=2)
        assert [r["job"] for r in first] == ["j0", "j1"] and after == seqs[1]
        assert [r["job"] for r in rest] == ["j2"] and end is None

    run(main())


def test_calls_to_a_store_that_never_answers_time_out_even_with_a_full_queue(
    tmp_path: Path,
) -> None:
    # A bound DEALER that never reads, and a client whose queue to it holds one message:
    # the second send would block for ever without a bound.
    ctx = Context.instance()
    silent = ctx.socket(zmq.DEALER)
    silent.linger = 0
    silent.rcvhwm = 1
    silent.bind(f"ipc://{tmp_path}/silent")
    ctx.sndhwm = 1  # the default for sockets made from now on

    async def main() -> None:
        try:
            app = JobClient(f"ipc://{tmp_path}/silent", "ds", "c", timeout=0.05)
        finally:
            del ctx.sockopts[zmq.SNDHWM]
        async with app:
            for _ in range(5):
                with pytest.raises(Timeout):
                    await app.submit("x" * 100_000)

    try:
        run(main())
    finally:
        silent.close()


def test_a_second_cancel_cancels_a_job_handed_back_after_a_cancel_request(
    store: RunningStore,
) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            job = (await app.submit("x"))["job"]
            await drv.take()
            asked = await app.cancel(job)
            assert asked["status"] == "accepted" and asked["cancel_requested"] is True
            assert (await drv.retry(job))["status"] == "retrying"
            assert (await app.cancel(job))["status"] == "cancelled"
            assert await drv.take() == []

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
