"""The asyncio concurrency glue, written by hand: stopping, waiting, and running a handler."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from ..outcomes import JobContext, Outcome, completed, raised

Event = asyncio.Event
# What stops Driver.run with a job in hand (asyncio.run cancels the main task on Ctrl-C) ...
Interrupted = asyncio.CancelledError
# ... and the word its log lines use for it.
INTERRUPTED = "cancelled"


async def wait_for_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; whether it is set."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
    return stop.is_set()


class Work:
    """A handler running on one job, in a task: an ``async def`` in the loop, a plain function
    in a thread (so it may block)."""

    def __init__(self, handler: Callable[[JobContext], Any], ctx: JobContext) -> None:
        self._task = asyncio.create_task(_outcome(handler, ctx), name=f"job-{ctx.id}")

    def done(self) -> bool:
        return self._task.done()

    async def wait(self, seconds: float) -> None:
        """Wait until the handler ends, at most ``seconds``."""
        await asyncio.wait({self._task}, timeout=seconds)

    def outcome(self) -> Outcome | None:
        """How the handler ended, or None while it runs (or if it was stopped)."""
        if self._task.done() and not self._task.cancelled():
            return self._task.result()
        return None

    def result(self) -> Outcome:
        """How the handler ended, once it has."""
        return self._task.result()

    def cancel(self) -> None:
        """The job is no longer this driver's to run: stop the handler."""
        self._task.cancel()


async def _outcome(handler: Callable[[JobContext], Any], ctx: JobContext) -> Outcome:
    try:
        if inspect.iscoroutinefunction(handler):
            response = await handler(ctx)
        else:
            response = await asyncio.to_thread(handler, ctx)
            # A callable object or a lambda may still hand back a coroutine to run here.
            if inspect.isawaitable(response):
                response = await response
    except Exception as exc:
        return raised(exc, ctx.id)
    return completed(response)
