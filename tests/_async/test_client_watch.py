"""A client's and a driver's watch against a real store, for both flavours (see test_client.py)."""

from __future__ import annotations

from typing import Any

import pytest

from jobstore.errors import Timeout

from ..conftest import RunningStore, StoreFactory
from .flavour import run, to_thread
from .helpers import client, driver


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


def test_watch_sees_every_final_status_in_order_of_seq(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as drv, app.watch(timeout=10) as watch:
            for i in range(30):
                await app.submit(i, job=f"j{i}")
            for job in await drv.take(30):
                await drv.complete(job["job"], job["request"] * 2)
            done: dict[str, Any] = {}
            last = 0
            async for record in watch:
                assert record["seq"] > last
                last = record["seq"]
                if record["status"] == "complete":
                    done[record["job"]] = record["response"]
                if len(done) == 30:
                    break
        assert done == {f"j{i}": i * 2 for i in range(30)}

    run(main())


def test_watch_does_not_show_other_clients_jobs(store: RunningStore) -> None:
    async def main() -> None:
        async with (
            client(store, "alice") as alice,
            client(store, "bob") as bob,
            alice.watch(timeout=10) as watch,
        ):
            await bob.submit("bob's", job="b1")
            await alice.submit("alice's", job="a1")
            assert (await anext(watch))["job"] == "a1"

    run(main())
