"""How a test of the sync flavour runs its body, written by hand (see scripts/unasync.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from jobstore.client import Driver

T = TypeVar("T")


def run(result: T, limit: float = 30) -> T:
    """The body ran already, when it was called: its result, as the asyncio ``run`` gives it."""
    return result


def to_thread(func: Callable[[], T]) -> T:
    """A blocking call, made here: the sync test has no event loop to keep free."""
    return func()


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
