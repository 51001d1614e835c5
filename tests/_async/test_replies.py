"""A reply's error status raises its status class on the client side, over a real store:
``except Conflict`` and ``except NotFound`` read as they do in the store."""

from __future__ import annotations

import pytest

from jobstore.errors import (
    ClientError,
    Conflict,
    Forbidden,
    NotFound,
    RequestFailed,
    StatusError,
    Unavailable,
)

from ..conftest import RunningStore
from .flavour import run
from .helpers import client, driver


def test_a_missing_job_raises_not_found_with_the_stores_message(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app:
            with pytest.raises(NotFound) as info:
                await app.status("missing")
        assert isinstance(info.value, RequestFailed) and isinstance(info.value, ClientError)
        assert info.value.status == 404 and "no job" in info.value.message

    run(main())


def test_a_report_the_state_forbids_raises_conflict_with_the_record(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store) as app, driver(store) as drv:
            job = (await app.submit("x"))["job"]
            with pytest.raises(Conflict) as info:
                await drv.complete(job, "never taken")
        assert isinstance(info.value, RequestFailed) and info.value.status == 409
        assert info.value.body["status"] == "submitted"
        assert not isinstance(info.value, (NotFound, Forbidden, Unavailable))

    run(main())


def test_a_job_id_of_another_client_raises_conflict(store: RunningStore) -> None:
    async def main() -> None:
        async with client(store, "alice") as alice, client(store, "bob") as bob:
            await alice.submit("a", job="shared")
            with pytest.raises(Conflict) as info:
                await bob.submit("b", job="shared")
        assert "belongs to another client" in info.value.message
        assert isinstance(info.value, StatusError) and isinstance(info.value, RequestFailed)

    run(main())
