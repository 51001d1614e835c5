"""Driver.run outlives a restart of its store, for both flavours: a ``jobstore serve`` process
is stopped and started again on the same endpoints and data directory under a running driver
(tests/test_driver_outage.py has the CLI's ``work`` and the backoff)."""

from __future__ import annotations

import threading
from typing import Any

from jobstore.aio import Driver, JobContext

from ..outage import LIMIT, Noticed, Store, restart_under, told_once, wait_for
from .flavour import Background, Event, run, to_thread


def test_driver_run_carries_on_across_a_restart_of_the_store(
    served_store: Store, noticed: Noticed
) -> None:
    async def handler(ctx: JobContext) -> Any:
        return ctx.request

    async def main() -> None:
        stop = Event()
        async with Driver(served_store.endpoint, "ds", timeout=1) as driver:
            runs = Background(driver, handler, stop=stop)

            def finished(job: str) -> None:
                assert wait_for(served_store.endpoint, job, ("complete",))["response"]
                assert not runs.done(), "Driver.run ended"

            # The store is driven from a thread: the asyncio flavour's loop must keep running.
            await to_thread(lambda: restart_under(served_store, finished, noticed.event))
            stop.set()
            assert await runs.result(LIMIT) == 2

    run(main(), LIMIT * 4)
    told_once(noticed.lines)


def test_driver_run_reports_an_outcome_made_while_the_store_was_down(
    served_store: Store, noticed: Noticed
) -> None:
    store_down = threading.Event()  # set by the test's own thread, in either flavour

    async def handler(ctx: JobContext) -> Any:
        if ctx.request == "one":
            # Finish while the store is down: the report must wait for it to come back.
            assert await to_thread(lambda: store_down.wait(LIMIT))
        return ctx.request

    def outage(runs: Background) -> None:
        served_store.submit("one", "before")
        wait_for(served_store.endpoint, "before", ("accepted",))
        served_store.stop()
        store_down.set()
        # The store stays down until the report of "before" has gone unanswered.
        assert noticed.event.wait(LIMIT), "the driver never said the store does not answer"
        served_store.start()
        assert wait_for(served_store.endpoint, "before", ("complete",))["response"] == "one"
        served_store.submit("two", "after")
        assert wait_for(served_store.endpoint, "after", ("complete",))["response"] == "two"
        assert not runs.done(), "Driver.run ended"

    async def main() -> None:
        stop = Event()
        async with Driver(served_store.endpoint, "ds", timeout=1) as driver:
            runs = Background(driver, handler, stop=stop)
            await to_thread(lambda: outage(runs))
            stop.set()
            assert await runs.result(LIMIT) == 2

    run(main(), LIMIT * 4)
    told_once(noticed.lines)
