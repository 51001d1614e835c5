"""How a test of the asyncio flavour runs its body, written by hand (see scripts/unasync.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from jobstore.aio import Driver

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], limit: float = 30) -> T:
    """Run a test's coroutine in a fresh event loop; fail it if it takes over ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(main, limit))


async def to_thread(func: Callable[[], T]) -> T:
    """Run a blocking call (stopping a store) without blocking the event loop."""
    return await asyncio.to_thread(func)


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
