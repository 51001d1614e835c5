"""The fake arbiter over real sockets: store secrets, token minting, the /cm routes, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from pymacaroons import Macaroon

from jobstore.cli.admin import add_fake_arbiter
from jobstore.databox.arbiter import fetch_store_secret, request_token
from jobstore.devtools.fake_arbiter import EXAMPLE_PUBLIC_KEY, FakeArbiter
from jobstore.errors import ArbiterError, Unauthorized, Unavailable
from jobstore.protocol import zest
from jobstore.store.auth import Authoriser

STORE, STORE_TOKEN = "jobs-store", "c3RvcmUtdG9rZW4="  # databox arbiter tokens are base64 text
APP, APP_TOKEN = "app1", "YXBwLXRva2Vu"
GET_SECRET = zest.encode_request("GET", "/store/secret", token=STORE_TOKEN, host=STORE)


@pytest.fixture
def arbiter() -> Iterator[FakeArbiter]:
    with FakeArbiter("tcp://127.0.0.1:*") as fake:
        yield fake


@pytest.fixture
def secret(arbiter: FakeArbiter) -> bytes:
    return started(arbiter)


def started(arbiter: FakeArbiter) -> bytes:
    """The store and the app are registered and the store has fetched its token secret."""
    arbiter.register_container(APP, APP_TOKEN)
    arbiter.register_store(STORE, STORE_TOKEN)
    assert arbiter.bound is not None
    return fetch_store_secret(arbiter.bound, EXAMPLE_PUBLIC_KEY, STORE_TOKEN, STORE, timeout=5)


def token(arbiter: FakeArbiter, path: str, method: str = "GET", **kw: Any) -> str:
    assert arbiter.bound is not None
    kw.setdefault("target", STORE)
    return request_token(
        arbiter.bound, arbiter.public_key, APP_TOKEN, path=path, method=method, identity=APP, **kw
    )


def ask(ctx: zmq.Context[Any], arbiter: FakeArbiter, *frames: bytes) -> zest.ZestReply:
    """Send raw frames on a CURVE REQ socket and decode the reply."""
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.curve_serverkey = EXAMPLE_PUBLIC_KEY.encode()
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(arbiter.bound or "")
    sock.send_multipart(list(frames))
    assert sock.poll(5000), "no reply from the fake arbiter within 5 s"
    return zest.decode_reply(sock.recv())


def post(path: str, body: Any, token: str = "secret", host: str = "cm") -> bytes:
    """A POST frame with a JSON body, from the container manager unless told."""
    return zest.encode_request("POST", path, token=token, host=host, body=json.dumps(body).encode())


def grant_body(name: str, path: str = "/ds/*") -> dict[str, Any]:
    return {"name": name, "route": {"target": STORE, "path": path, "method": "GET"}, "caveats": []}


def test_public_key_is_the_zestdb_example_pair_by_default(arbiter: FakeArbiter) -> None:
    assert arbiter.public_key == EXAMPLE_PUBLIC_KEY


def test_store_fetches_its_secret_with_its_arbiter_token(
    arbiter: FakeArbiter, secret: bytes
) -> None:
    assert arbiter.secret_of(STORE) == secret
    assert len(secret) == 36 and secret.count(b"-") == 4  # a UUID v4 as text, like the arbiter's


def test_each_fetch_makes_a_new_secret_and_tokens_use_the_latest(
    arbiter: FakeArbiter, secret: bytes
) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET")
    assert arbiter.bound is not None
    again = fetch_store_secret(arbiter.bound, EXAMPLE_PUBLIC_KEY, STORE_TOKEN, STORE, timeout=5)
    assert again != secret and arbiter.secret_of(STORE) == again
    minted = token(arbiter, "/ds/x")
    Authoriser(again, STORE).check(minted, method="GET", path="/ds/x")
    with pytest.raises(Unauthorized, match="signature"):
        Authoriser(secret, STORE).check(minted, method="GET", path="/ds/x")


def test_tokens_are_refused_until_the_store_has_fetched_its_secret(arbiter: FakeArbiter) -> None:
    arbiter.register_container(APP, APP_TOKEN)
    arbiter.register_store(STORE, STORE_TOKEN)
    arbiter.grant(APP, STORE, "/ds/*", "GET")
    assert arbiter.secret_of(STORE) is None
    with pytest.raises(Unauthorized, match="has not fetched its token secret"):
        token(arbiter, "/ds/x")
    assert arbiter.bound is not None
    secret = fetch_store_secret(arbiter.bound, EXAMPLE_PUBLIC_KEY, STORE_TOKEN, STORE, timeout=5)
    Authoriser(secret, STORE).check(token(arbiter, "/ds/x"), method="GET", path="/ds/x")


def test_store_secret_is_text_with_content_format_0(
    ctx: zmq.Context[Any], arbiter: FakeArbiter, secret: bytes
) -> None:
    reply = ask(ctx, arbiter, GET_SECRET)
    assert reply.code == zest.CONTENT
    assert reply.options[zest.OPT_CONTENT_FORMAT] == b"\x00\x00"
    assert reply.payload == arbiter.secret_of(STORE) != secret  # a new one per call


@pytest.mark.parametrize(("arbiter_token", "identity"), [("wrong", STORE), (STORE_TOKEN, "other")])
def test_store_secret_refused_without_the_registered_token(
    arbiter: FakeArbiter, secret: bytes, arbiter_token: str, identity: str
) -> None:
    assert arbiter.bound is not None
    with pytest.raises(Unauthorized, match="ARBITER_TOKEN"):
        fetch_store_secret(arbiter.bound, EXAMPLE_PUBLIC_KEY, arbiter_token, identity, timeout=5)


def test_every_arbiter_failure_is_an_arbiter_error_apart_from_the_store_errors(
    arbiter: FakeArbiter,
) -> None:
    assert arbiter.bound is not None
    with pytest.raises(ArbiterError) as refused:
        fetch_store_secret(arbiter.bound, EXAMPLE_PUBLIC_KEY, "wrong", STORE, timeout=5)
    assert isinstance(refused.value, Unauthorized)
    _, other_public = zmq.curve_keypair()
    with pytest.raises(ArbiterError) as silent:
        fetch_store_secret(arbiter.bound, other_public.decode(), STORE_TOKEN, STORE, timeout=0.3)
    assert isinstance(silent.value, Unavailable)


def test_any_registered_container_gets_a_secret_as_from_the_real_arbiter(
    arbiter: FakeArbiter, secret: bytes
) -> None:
    assert arbiter.bound is not None
    fetched = fetch_store_secret(arbiter.bound, EXAMPLE_PUBLIC_KEY, APP_TOKEN, APP, timeout=5)
    assert fetched == arbiter.secret_of(APP) and fetched != secret


def test_unreachable_arbiter_gives_unavailable_within_the_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="did not answer"):
        fetch_store_secret(
            f"ipc://{tmp_path}/none", EXAMPLE_PUBLIC_KEY, STORE_TOKEN, STORE, timeout=0.2
        )
    assert time.monotonic() - started < 2


def test_wrong_server_key_gives_unavailable(arbiter: FakeArbiter, secret: bytes) -> None:
    other_public, _ = zmq.curve_keypair()
    assert arbiter.bound is not None
    with pytest.raises(Unavailable, match="ZMQ_PUBLIC_KEY"):
        fetch_store_secret(arbiter.bound, other_public.decode(), STORE_TOKEN, STORE, timeout=0.3)


def test_token_for_a_granted_route_verifies_at_the_store(
    arbiter: FakeArbiter, secret: bytes
) -> None:
    arbiter.grant(APP, STORE, "/ds/job/app1", "GET")
    minted = token(arbiter, "/ds/job/app1")
    Authoriser(secret, STORE).check(minted, method="GET", path="/ds/job/app1")
    with pytest.raises(Unauthorized):
        Authoriser(secret, STORE).check(minted, method="GET", path="/ds/job/app2")
    with pytest.raises(Unauthorized):
        Authoriser(secret, "other-store").check(minted, method="GET", path="/ds/job/app1")


def test_wildcard_grant_covers_longer_paths(arbiter: FakeArbiter, secret: bytes) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "POST")
    minted = token(arbiter, "/ds/job/x", "POST")
    Authoriser(secret, STORE).check(minted, method="POST", path="/ds/job/x")


def test_wildcard_grant_may_mint_a_wildcard_token(arbiter: FakeArbiter, secret: bytes) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET")
    minted = token(arbiter, "/ds/*")
    Authoriser(secret, STORE).check(minted, method="GET", path="/ds/job/app1/j1")


@pytest.mark.parametrize(
    ("path", "method", "target"),
    [
        ("/ds/", "GET", STORE),  # the arbiter's * needs at least one more character
        ("/other/job", "GET", STORE),
        ("/ds/job/x", "POST", STORE),
        ("/ds/job/x", "get", STORE),
        ("/ds/job/x", "GET", APP),
        ("/ds/job/x", "GET", "unknown-store"),
    ],
)
def test_ungranted_route_is_refused(
    arbiter: FakeArbiter, secret: bytes, path: str, method: str, target: str
) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET")
    with pytest.raises(Unauthorized):
        token(arbiter, path, method, target=target)


def test_exact_grant_does_not_cover_a_wildcard_request(arbiter: FakeArbiter, secret: bytes) -> None:
    arbiter.grant(APP, STORE, "/ds/job/x", "GET")
    with pytest.raises(Unauthorized, match="no grant"):
        token(arbiter, "/ds/job/*")


def test_observe_caveat_present_when_asked_and_granted(arbiter: FakeArbiter, secret: bytes) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET", caveats=[{"observe": "data"}])
    minted = token(arbiter, "/ds/job/app1", observe="data")
    store = Authoriser(secret, STORE)
    store.check(minted, method="GET", path="/ds/job/app1", observe=True)
    with pytest.raises(Unauthorized, match="observe = data"):
        store.check(minted, method="GET", path="/ds/job/app1")


def test_observe_caveat_needs_a_grant_with_it(arbiter: FakeArbiter, secret: bytes) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET")
    with pytest.raises(Unauthorized, match="caveats"):
        token(arbiter, "/ds/job/app1", observe="data")


def caveat_lines(minted: str) -> list[str]:
    return [c.caveat_id for c in Macaroon.deserialize(minted).first_party_caveats()]


def test_by_default_only_path_method_and_target_are_minted(
    arbiter: FakeArbiter, secret: bytes
) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "POST")
    minted = token(arbiter, "/ds/job/", "POST", client="app1")
    assert caveat_lines(minted) == ["path = /ds/job/", "method = POST", f"target = {STORE}"]


def test_a_requested_caveat_other_than_observe_or_destination_is_not_minted(
    ctx: zmq.Context[Any], arbiter: FakeArbiter, secret: bytes
) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET", caveats=[{"colour": "blue"}])
    body = {"target": STORE, "path": "/ds/x", "method": "GET", "caveats": [{"colour": "blue"}]}
    reply = ask(ctx, arbiter, post("/token", body, APP_TOKEN, APP))
    assert reply.code == zest.CONTENT
    assert caveat_lines(reply.payload.decode()) == [
        "path = /ds/x",
        "method = GET",
        f"target = {STORE}",
    ]


def test_requested_caveats_may_match_a_grant_of_another_route(
    arbiter: FakeArbiter, secret: bytes
) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET")
    arbiter.grant(APP, STORE, "/elsewhere", "GET", caveats=[{"observe": "data"}])
    minted = token(arbiter, "/ds/x", observe="data")
    assert caveat_lines(minted)[-1] == "observe = data"


def test_client_caveat_only_with_the_extension(tmp_path: Path) -> None:
    with FakeArbiter(f"ipc://{tmp_path}/arbiter", client_caveats=True) as arbiter:
        secret = started(arbiter)
        arbiter.grant(APP, STORE, "/ds/*", "POST")
        minted = token(arbiter, "/ds/job/", "POST", client="app1")
    store = Authoriser(secret, STORE)
    store.check(minted, method="POST", path="/ds/job/", client="app1")
    with pytest.raises(Unauthorized, match="client = app1"):
        store.check(minted, method="POST", path="/ds/job/", client="app2")


@pytest.mark.parametrize(
    "frames",
    [
        [b"\x01"],  # truncated header
        [b"\x09\x00\x00\x00"],  # not a request code
        [zest.encode_request("GET", "/store/secret", host=STORE), b"extra frame"],
        [zest.encode_request("POST", "/token", token=APP_TOKEN, host=APP, body=b"{not json")],
        [zest.encode_request("POST", "/token", token=APP_TOKEN, host=APP, body=b'{"path": 1}')],
        [zest.encode_request("GET", "/nowhere", token=APP_TOKEN, host=APP)],
    ],
)
def test_bad_request_gets_128_and_the_arbiter_keeps_serving(
    ctx: zmq.Context[Any], arbiter: FakeArbiter, secret: bytes, frames: list[bytes]
) -> None:
    reply = ask(ctx, arbiter, *frames)
    assert reply.code == zest.BAD_REQUEST
    assert reply.payload  # says what was wrong
    assert ask(ctx, arbiter, GET_SECRET).code == zest.CONTENT


def test_cm_routes_drive_the_same_state_as_the_methods(
    ctx: zmq.Context[Any], arbiter: FakeArbiter
) -> None:
    for name, kind, key in ((STORE, "store", STORE_TOKEN), (APP, "app", APP_TOKEN)):
        body = {"name": name, "type": kind, "key": key}
        reply = ask(ctx, arbiter, post("/cm/upsert-container-info", body))
        assert (reply.code, reply.payload) == (zest.CONTENT, name.encode())
    reply = ask(ctx, arbiter, post("/cm/grant-container-permissions", grant_body(APP)))
    assert reply.code == zest.CONTENT
    assert json.loads(reply.payload) == [grant_body(APP)["route"]]
    secret = ask(ctx, arbiter, GET_SECRET).payload
    minted = token(arbiter, "/ds/job/app1")
    Authoriser(secret, STORE).check(minted, method="GET", path="/ds/job/app1")


def test_cm_routes_need_the_cm_key(
    ctx: zmq.Context[Any], arbiter: FakeArbiter, secret: bytes
) -> None:
    body = {"name": "x", "type": "app", "key": "k"}
    reply = ask(ctx, arbiter, post("/cm/upsert-container-info", body, token="wrong"))
    assert reply.code == zest.UNAUTHORIZED
    # A registered container that is not the CM gets 128, as from the real arbiter.
    reply = ask(ctx, arbiter, post("/cm/upsert-container-info", body, APP_TOKEN, APP))
    assert reply.code == zest.BAD_REQUEST


def test_grant_for_an_unregistered_container_is_refused(
    ctx: zmq.Context[Any], arbiter: FakeArbiter
) -> None:
    reply = ask(ctx, arbiter, post("/cm/grant-container-permissions", grant_body("ghost")))
    assert reply.code == zest.UNAUTHORIZED


def test_token_request_as_text_json_like_lib_go_databox(
    ctx: zmq.Context[Any], arbiter: FakeArbiter, secret: bytes
) -> None:
    arbiter.grant(APP, STORE, "/ds/*", "GET")
    body = json.dumps({"target": STORE, "path": "/ds/x", "method": "GET", "caveats": []}).encode()
    frame = zest.encode_request(
        "POST", "/token", token=APP_TOKEN, host=APP, body=body, content_format=zest.FORMAT_TEXT
    )
    reply = ask(ctx, arbiter, frame)
    assert reply.code == zest.CONTENT  # the arbiter answers POST /token with 69, not 65
    Authoriser(secret, STORE).check(reply.payload, method="GET", path="/ds/x")


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_fake_arbiter(parser.add_subparsers())
    endpoint = f"ipc://{tmp_path}/arbiter"
    flags = ["--store", f"{STORE}={STORE_TOKEN}", "--container", f"{APP}={APP_TOKEN}"]
    flags += ["--grant", f"{APP}:{STORE}:get:/ds/*", "--endpoint", endpoint]
    args = parser.parse_args(["fake-arbiter", *flags])
    results: list[Any] = []

    def client() -> None:
        """Use the CLI's arbiter (connecting before it binds is fine), then stop it."""
        try:
            key = EXAMPLE_PUBLIC_KEY
            results.append(fetch_store_secret(endpoint, key, STORE_TOKEN, STORE))
            results.append(
                request_token(
                    endpoint, key, APP_TOKEN, target=STORE, path="/ds/x", method="GET", identity=APP
                )
            )
        except Exception as exc:
            results.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    # Should the command fail before installing its handler, the SIGTERM lands here, harmlessly.
    outer = signal.signal(signal.SIGTERM, lambda *_: None)
    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert args.func(args) == 0
    finally:
        thread.join(15)
        signal.signal(signal.SIGTERM, outer)
    secret, minted = results
    Authoriser(secret, STORE).check(minted, method="GET", path="/ds/x")


def test_plain_arbiter_without_curve(tmp_path: Path) -> None:
    with FakeArbiter(f"ipc://{tmp_path}/plain", secret_key=None) as plain:
        plain.register_store(STORE, STORE_TOKEN)
        assert plain.public_key is None and plain.bound is not None
        assert fetch_store_secret(plain.bound, None, STORE_TOKEN, STORE) == plain.secret_of(STORE)
