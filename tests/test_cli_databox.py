"""The command line against a store whose tokens come from the (fake) arbiter."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from jobstore.cli import main
from jobstore.databox.arbiter import fetch_store_secret, request_token
from jobstore.devtools.fake_arbiter import EXAMPLE_PUBLIC_KEY, FakeArbiter
from jobstore.errors import Unauthorized
from jobstore.store.auth import Authoriser

STORE, STORE_TOKEN = "jobstore-sensor", "c3RvcmU="
DRIVER, DRIVER_TOKEN = "driver1", "ZHJpdmVy"
APP, APP_TOKEN = "app1", "YXBw"


@pytest.fixture
def arbiter() -> Iterator[FakeArbiter]:
    with FakeArbiter("tcp://127.0.0.1:*") as fake:
        fake.register_container(DRIVER, DRIVER_TOKEN)
        fake.register_container(APP, APP_TOKEN)
        fake.grant(DRIVER, STORE, "/*", "GET")
        fake.grant(DRIVER, STORE, "/*", "POST")
        fake.grant(APP, STORE, "/ds/*", "GET")
        fake.grant(APP, STORE, "/ds/*", "POST")
        fake.register_store(STORE, STORE_TOKEN)
        # As the store does at start: the arbiter mints tokens for it only after this.
        fetch_store_secret(fake.bound or "", fake.public_key, STORE_TOKEN, STORE)
        yield fake


def arbiter_flags(arbiter: FakeArbiter, name: str, token: str) -> list[str]:
    assert arbiter.bound is not None and arbiter.public_key is not None
    return [
        *("--arbiter", arbiter.bound, "--arbiter-key", arbiter.public_key),
        *("--arbiter-token", token, "--as", name, "--target", STORE),
    ]


@pytest.mark.parametrize("who", ["driver", "app"])
def test_watch_gets_its_tokens_from_the_arbiter(
    arbiter: FakeArbiter, start_store: Any, capsys: pytest.CaptureFixture[str], who: str
) -> None:
    secret = arbiter.secret_of(STORE)
    assert secret is not None
    store = start_store(auth=Authoriser(secret, STORE))
    with store.client(APP) as app:
        app.conn.token = request_token(
            arbiter.bound or "",
            arbiter.public_key,
            APP_TOKEN,
            target=STORE,
            path="/ds/*",
            method="POST",
            identity=APP,
        )
        app.submit({"n": 1}, job="j1")
    flags = ["--endpoint", store.endpoint, "--notify-endpoint", store.notify_endpoint]
    if who == "driver":
        flags += arbiter_flags(arbiter, DRIVER, DRIVER_TOKEN)
    else:
        flags += ["--client", APP, *arbiter_flags(arbiter, APP, APP_TOKEN)]
    # --seconds bounds the run; what is checked is what the view saw, not when.
    assert main(["watch", "ds", "--json", "--seconds", "0.5", "--interval", "0.2", *flags]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["counts"] == {"submitted": 1} and last["problem"] is None


def test_a_missing_grant_does_not_blame_the_arbiter_token(arbiter: FakeArbiter) -> None:
    with pytest.raises(Unauthorized) as refused:
        request_token(
            arbiter.bound or "",
            arbiter.public_key,
            APP_TOKEN,
            target=STORE,
            path="/other/*",
            method="GET",
            identity=APP,
        )
    assert "has no grant" in refused.value.message
    assert "ARBITER_TOKEN" not in refused.value.message
    assert "container manager must grant" in refused.value.message


def test_a_wrong_arbiter_token_is_blamed(arbiter: FakeArbiter) -> None:
    with pytest.raises(Unauthorized, match="check ARBITER_TOKEN"):
        request_token(
            arbiter.bound or "",
            arbiter.public_key,
            "wrong",
            target=STORE,
            path="/ds/*",
            method="GET",
            identity=APP,
        )


def test_the_fake_arbiter_does_not_log_a_store_secret(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    import os
    import signal
    import threading

    from jobstore.databox.arbiter import fetch_store_secret

    endpoint = f"ipc://{tmp_path}/arbiter"
    secrets: list[bytes] = []

    def fetch_then_stop() -> None:
        try:
            secrets.append(fetch_store_secret(endpoint, EXAMPLE_PUBLIC_KEY, STORE_TOKEN, STORE))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    outer = signal.signal(signal.SIGTERM, lambda *_: None)
    thread = threading.Thread(target=fetch_then_stop)
    caplog.set_level(logging.DEBUG)
    thread.start()
    try:
        argv = ["fake-arbiter", "--endpoint", endpoint, "--store", f"{STORE}={STORE_TOKEN}"]
        assert main(argv) == 0
    finally:
        thread.join(15)
        signal.signal(signal.SIGTERM, outer)
    assert secrets and secrets[0]
    assert f"store {STORE} registered" in caplog.text
    assert secrets[0].decode() not in caplog.text
