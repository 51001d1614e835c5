"""What the generated client tests share: a client and a driver of a running store, and
waiting for a job to reach a status."""

from __future__ import annotations

from typing import Any

from jobstore.aio import Driver, JobClient

from ..conftest import RunningStore


def client(store: RunningStore, name: str = "app1", **kw: Any) -> JobClient:
    """A client of datasource ``ds`` of ``store``, named ``name``."""
    return JobClient(store.endpoint, "ds", name, notify_endpoint=store.notify_endpoint, **kw)


def driver(store: RunningStore, **kw: Any) -> Driver:
    """A driver of datasource ``ds`` of ``store``."""
    return Driver(store.endpoint, "ds", notify_endpoint=store.notify_endpoint, **kw)


async def wait_for(app: JobClient, job: str, *statuses: str) -> dict[str, Any]:
    """The record of ``job`` once a watch shows it in one of ``statuses``."""
    async with app.watch(timeout=10) as watch:
        async for record in watch:
            if record["job"] == job and record["status"] in statuses:
                return record
    raise AssertionError("watch ended")
