"""jobstore.aio's JobClient and Driver against a real store, each test in its own event loop: what
only the asyncio flavour has (tests/_async/ holds what both flavours share)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from jobstore.aio import JobContext
from jobstore.errors import ClientError

from ._async.flavour import run, running
from ._async.helpers import client, driver, wait_for
from .conftest import RunningStore


# asyncio only: many calls in flight at once through one client.
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


# asyncio only: a second call goes out while the first still waits for its reply.
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


# asyncio only: a call can still wait when another coroutine closes the client.
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


# asyncio only: ``await app.watch()`` (test_client.py has the sync twin, a watch made bare).
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


# asyncio only: a plain function handler runs off the event loop; sync handlers all are plain.
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
