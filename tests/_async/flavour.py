"""How a test of the asyncio flavour runs its body, written by hand (see scripts/unasync.py).

The sync twin (tests/_sync/flavour.py) has the same names: what a generated test waits
with (``Event``, ``sleep``, ``wait_set``), where a driver runs beside the test's body
(``running``, ``Background``) and the flavour's shared ZeroMQ ``Context``.
"""

from __future__ import annotations

import asyncio
from asyncio import Event, sleep
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from zmq.asyncio import Context

from jobstore.aio import Driver

T = TypeVar("T")

__all__ = ["Background", "Context", "Event", "run", "running", "sleep", "to_thread", "wait_set"]


def run(main: Coroutine[Any, Any, T], limit: float = 30) -> T:
    """Run a test's coroutine in a fresh event loop; fail it if it takes over ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(main, limit))


async def to_thread(func: Callable[[], T]) -> T:
    """Run a blocking call (stopping a store) without blocking the event loop."""
    return await asyncio.to_thread(func)


async def wait_set(event: Event, limit: float) -> None:
    """Wait for ``event``; fail the test when it is not set within ``limit`` seconds."""
    await asyncio.wait_for(event.wait(), limit)


@asynccontextmanager
async def running(driver: Driver, handler: Any, **kw: Any) -> AsyncIterator[None]:
    """``driver.run(handler)`` in a task for the duration of the block; its errors fail the test."""
    stop = asyncio.Event()
    async with driver:
        task = asyncio.create_task(driver.run(handler, wait=50, stop=stop, **kw))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


class Background:
    """``driver.run(handler, **kw)`` in a task from now on, for a run that ends by itself
    (``max_jobs``); the caller keeps the driver open until :meth:`result`."""

    def __init__(self, driver: Driver, handler: Any, **kw: Any) -> None:
        self._task = asyncio.create_task(driver.run(handler, **kw))

    def done(self) -> bool:
        """True once the run has ended (read from any thread)."""
        return self._task.done()

    async def result(self, limit: float) -> int:
        """What the run returned (the jobs it ran); fail the test after ``limit`` seconds."""
        return await asyncio.wait_for(self._task, limit)
