"""Scheduling through the client libraries over a real store: submit options, batches, a retry's
delay, requeue and the queue settings (pause and resume)."""

from __future__ import annotations

import pytest

from jobstore.errors import BadRequest, Conflict

from ..conftest import RunningStore
from .flavour import run
from .helpers import client, driver

HOUR = 3_600_000


def test_submit_options_order_the_takes_and_hold_jobs_back(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            await app.submit("low", job="low", priority=-5)
            held = await app.submit("held", job="held", delay=HOUR, expires=2**52)
            await app.submit("high", job="high", priority=9)
            assert (held["not_before"], held["expires"]) == (held["created"] + HOUR, 2**52)
            assert [job["job"] for job in await drv.take(5)] == ["high", "low"]
            with pytest.raises(BadRequest) as info:
                await app.submit("x", priority=1000)
            assert info.value.message.startswith("priority")

    run(main())


def test_a_batch_returns_one_result_per_item_in_order(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            results = await app.submit_batch(
                [{"request": 1, "job": "b1"}, {"request": 2, "priority": 101}, {"request": 3}]
            )
            assert [r["status"] for r in results] == ["submitted", 400, "submitted"]
            assert results[0]["job"] == "b1" and (await app.status("b1"))["request"] == 1

    run(main())


def test_retry_with_a_delay_then_requeue_after_failure(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            job = (await app.submit("x"))["job"]
            await drv.take()
            retried = await drv.retry(job, delay=HOUR)
            assert retried["not_before"] == retried["updated"] + HOUR
            assert await drv.take() == []
            await drv.fail(job, "gave up")
            requeued = await drv.requeue(job)
            assert (requeued["status"], requeued["requeued"]) == ("retrying", 1)
            assert [j["job"] for j in await drv.take()] == [job]
            with pytest.raises(Conflict):
                await drv.requeue(job)

    run(main())


def test_pause_and_resume_through_the_settings(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            assert (await drv.pause())["paused"] is True
            job = (await app.submit("x"))["job"]
            assert await drv.take() == []
            assert (await drv.settings(backoff=20))["backoff"] == 20
            assert (await drv.resume())["paused"] is False
            assert [j["job"] for j in await drv.take()] == [job]
            assert (await drv.settings())["backoff"] == 20

    run(main())
