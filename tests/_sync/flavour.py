"""How a test of the sync flavour runs its body, written by hand (see scripts/unasync.py).

The same names as tests/_async/flavour.py, for blocking code: a driver runs beside the
test's body in a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import Event
from time import sleep
from typing import Any, TypeVar

from zmq import Context

from jobstore.client import Driver

T = TypeVar("T")

__all__ = ["Background", "Context", "Event", "run", "running", "sleep", "to_thread", "wait_set"]


def run(result: T, limit: float = 30) -> T:
    """The body ran already, when it was called: its result, as the asyncio ``run`` gives it."""
    return result


def to_thread(func: Callable[[], T]) -> T:
    """A blocking call, made here: the sync test has no event loop to keep free."""
    return func()


def wait_set(event: Event, limit: float) -> None:
    """Wait for ``event``; fail the test when it is not set within ``limit`` seconds."""
    assert event.wait(limit), f"the event was not set within {limit} s"


@contextmanager
def running(driver: Driver, handler: Any, **kw: Any) -> Iterator[None]:
    """``driver.run(handler)`` in a thread for the duration of the block; its errors fail the test."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        with driver:  # the driver's sockets are used by this thread alone
            try:
                driver.run(handler, wait=50, stop=stop, **kw)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive(), "Driver.run did not stop within 5 s of being asked"
    if errors:
        raise errors[0]


class Background:
    """``driver.run(handler, **kw)`` in a thread from now on, for a run that ends by itself
    (``max_jobs``); the caller keeps the driver open, and off its own thread, until :meth:`result`."""

    def __init__(self, driver: Driver, handler: Any, **kw: Any) -> None:
        self._outcome: list[int | BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(driver, handler, kw), daemon=True)
        self._thread.start()

    def _run(self, driver: Driver, handler: Any, kw: dict[str, Any]) -> None:
        try:
            self._outcome.append(driver.run(handler, **kw))
        except BaseException as exc:
            self._outcome.append(exc)

    def done(self) -> bool:
        """True once the run has ended (read from any thread)."""
        return not self._thread.is_alive()

    def result(self, limit: float) -> int:
        """What the run returned (the jobs it ran); fail the test after ``limit`` seconds."""
        self._thread.join(limit)
        assert not self._thread.is_alive(), f"Driver.run did not return within {limit} s"
        [outcome] = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
