"""A ``jobstore serve`` process to restart under a driver, and what the outage tests share
(tests/test_driver_outage.py and, for both flavours, tests/_async/test_driver_outage.py)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstore.client import JobClient
from jobstore.errors import Timeout

from .test_serve_process import Served

LIMIT = 60.0  # seconds any one thing may take on a loaded machine before the test gives up


def jobstore_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("JOBSTORE_", "DATABOX_"))}


def wait_for(
    endpoint: str, job: str, statuses: tuple[str, ...], client: str = "app1"
) -> dict[str, Any]:
    """The job's record once its status is one of ``statuses``; fail after LIMIT seconds."""
    deadline = time.monotonic() + LIMIT
    record: dict[str, Any] | None = None
    with JobClient(endpoint, "ds", client, timeout=1) as app:
        while True:
            try:
                record = app.status(job)
            except Timeout:
                record = None  # the store is restarting
            if record is not None and record["status"] in statuses:
                return record
            assert time.monotonic() < deadline, f"job {job} never became {statuses}: {record}"
            time.sleep(0.05)


class Store:
    """A ``jobstore serve`` process that can be stopped and started again in place."""

    def __init__(self, tmp_path: Path) -> None:
        self.data, self.sockets = tmp_path / "data", tmp_path / "sockets"
        self.started: list[Served] = []
        self.start()

    @property
    def endpoint(self) -> str:
        return self.started[-1].endpoints["request"]

    def start(self) -> None:
        served = Served(self.data, self.sockets)
        self.started.append(served)
        served.wait_until_serving()

    def stop(self) -> None:
        self.started[-1].stop()

    def submit(self, request: Any, job: str) -> None:
        with JobClient(self.endpoint, "ds", "app1") as app:
            app.submit(request, job=job)


@pytest.fixture
def served_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path)
    yield store
    for served in store.started:
        served.kill()


def restart_under(store: Store, finished: Callable[[str], None], noticed: threading.Event) -> None:
    """A job before and one after a restart of the store are both run by the same driver; the
    store stays down until the driver has noticed (a quick restart could go unseen)."""
    store.submit("one", "before")
    finished("before")
    store.stop()
    assert noticed.wait(LIMIT), "the driver never said the store does not answer"
    store.start()
    store.submit("two", "after")
    finished("after")


class Noticed(logging.Handler):
    """Sets ``event`` when a jobstore log line says the store does not answer."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if "the store does not answer" in record.getMessage():
            self.event.set()


@pytest.fixture
def noticed() -> Iterator[Noticed]:
    handler = Noticed()
    logger = logging.getLogger("jobstore")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def told_once(lines: list[str]) -> None:
    """One line when the outage started, one when it ended."""
    text = "\n".join(lines)
    assert text.count("the store does not answer") == 1, text
    assert text.count("the store answers again") == 1, text
