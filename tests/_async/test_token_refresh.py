"""A client holding ArbiterTokens outlives a restart of its Databox store, for both flavours.

The arbiter gives a store a new token secret each time it starts, so every macaroon cached
for it before is refused (401): the client drops the refused one, asks the arbiter for a fresh
one and sends the request once more. Plain tokens and token functions behave as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from jobstore.aio import JobClient
from jobstore.databox.arbiter import fetch_store_secret, request_token
from jobstore.databox.startup import ArbiterTokens
from jobstore.devtools.fake_arbiter import FakeArbiter
from jobstore.errors import Unauthorized
from jobstore.store.auth import Authoriser

from ..conftest import RunningStore, StoreFactory
from .flavour import run, to_thread
from .helpers import client

STORE, STORE_KEY = "jobstore-test", "c3RvcmUtYXJiaXRlci10b2tlbg=="
APP, APP_KEY = "app1", "YXBwLWFyYml0ZXItdG9rZW4="


@pytest.fixture
def arbiter() -> Iterator[FakeArbiter]:
    """A plain (no CURVE) fake arbiter that grants the app GET and POST on datasource ds."""
    with FakeArbiter("tcp://127.0.0.1:*", secret_key=None) as fake:
        fake.register_store(STORE, STORE_KEY)
        fake.register_container(APP, APP_KEY, "app")
        for method in ("GET", "POST"):
            fake.grant(APP, STORE, "/ds/*", method)
        yield fake


def serve(start_store: StoreFactory, arbiter: FakeArbiter, **endpoints: Any) -> RunningStore:
    """A store with a token secret fetched from the arbiter now, as a Databox store's start
    fetches one."""
    secret = fetch_store_secret(arbiter.bound or "", None, STORE_KEY, STORE)
    return start_store(auth=Authoriser(secret, STORE), **endpoints)


async def restart(store: RunningStore, start_store: StoreFactory, arbiter: FakeArbiter) -> None:
    """Stop ``store`` and start it again on its endpoints and data, with a new secret."""
    await to_thread(store.stop)
    config = store.config
    serve(
        start_store,
        arbiter,
        request_endpoint=config.request_endpoint,
        observe_endpoint=config.observe_endpoint,
        notify_endpoint=config.notify_endpoint,
    )


def app_tokens(arbiter: FakeArbiter) -> ArbiterTokens:
    return ArbiterTokens(arbiter.bound, None, APP_KEY, target=STORE, path="/ds/*", identity=APP)


def test_arbiter_tokens_are_fetched_again_when_the_restarted_store_refuses_them(
    start_store: StoreFactory, arbiter: FakeArbiter
) -> None:
    store = serve(start_store, arbiter)

    async def main() -> None:
        async with client(store, token=app_tokens(arbiter)) as app:
            job = (await app.submit(1))["job"]
            await restart(store, start_store, arbiter)
            assert (await app.status(job))["status"] == "submitted"
            assert (await app.submit(2))["status"] == "submitted"

    run(main())


def test_a_second_refusal_of_a_fresh_arbiter_token_is_raised(
    start_store: StoreFactory, arbiter: FakeArbiter
) -> None:
    store = serve(start_store, arbiter)
    asked: list[str] = []

    class Counted(ArbiterTokens):
        def __call__(self, method: str, path: str) -> str:
            asked.append(method)
            return super().__call__(method, path)

    tokens = Counted(arbiter.bound, None, APP_KEY, target=STORE, path="/ds/*", identity=APP)

    async def main() -> None:
        # The token is for datasource ds only: another one is refused however fresh it is.
        async with JobClient(store.endpoint, "other", APP, tokens) as app:
            with pytest.raises(Unauthorized):
                await app.page()
        assert asked == ["GET", "GET"]

    run(main())


def test_a_plain_token_and_a_token_function_still_get_the_401_after_a_restart(
    start_store: StoreFactory, arbiter: FakeArbiter
) -> None:
    store = serve(start_store, arbiter)
    plain = request_token(
        arbiter.bound or "", None, APP_KEY, target=STORE, path="/ds/*", method="GET", identity=APP
    )
    asked: list[str] = []

    def function(method: str, path: str) -> str:
        asked.append(method)
        return plain

    async def main() -> None:
        async with client(store, token=plain) as app, client(store, token=function) as by_call:
            await app.page()
            await by_call.page()
            await restart(store, start_store, arbiter)
            for each in (app, by_call):
                with pytest.raises(Unauthorized):
                    await each.page()
        assert asked == ["GET", "GET"]  # once per request: nothing sent again

    run(main())
