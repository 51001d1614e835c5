"""lib-go-databox's Func against a real store: the frames it sends, over real sockets.

The driver's DEALER has the observation's UUID as identity, the caller's the response path
(goZestClient). Each DEALER connects asynchronously, as in Go; the store pushes again until
it gets through, so the tests need no sleeps.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from jobstore.protocol import notification as nt
from jobstore.protocol import zest
from jobstore.store.auth import Authoriser, mint
from jobstore.store.operations import Limits

from .conftest import TIMEOUT_MS, RunningStore, StoreFactory

F = "light"
J = "3d9c1e0a-8f5b-4c57-9f0a-2b7d1c4e5f60"


class Peer:
    """A Go process's sockets: a REQ for requests and DEALERs for observe pushes."""

    def __init__(
        self, store: RunningStore, ctx: zmq.Context[Any], server_key: bytes | None = None
    ) -> None:
        self.store, self.ctx, self.server_key = store, ctx, server_key
        self.req = self._socket(zmq.REQ, server_key)
        self.req.connect(store.endpoint)

    def _socket(self, kind: int, server_key: bytes | None = None) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.rcvtimeo = TIMEOUT_MS
        if server_key is not None:  # goZestClient: a fresh client keypair per socket
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.curve_serverkey = server_key
        return sock

    def send(self, frame: bytes) -> zest.ZestReply:
        self.req.send(frame)
        return zest.decode_reply(self.req.recv())

    def dealer(self, ident: bytes, server_key: bytes | None = None) -> zmq.Socket[Any]:
        sock = self._socket(zmq.DEALER, server_key)
        sock.identity = ident
        sock.connect(self.store.server.endpoints["observe"])
        return sock

    def observe(self) -> zmq.Socket[Any]:
        """Func.Register's observe: GET /notification/request/* in mode notification, JSON."""
        frame = zest.encode_request(
            "GET", "/notification/request/*", observe="notification", max_age=0, host="driver"
        )
        reply = self.send(frame)
        assert reply.code == zest.CONTENT, reply
        # goZestClient's DEALER trusts the key in option 2048 (empty when CURVE is off).
        key = reply.options[zest.OPT_OBSERVE_KEY] or None
        assert key == self.server_key
        return self.dealer(reply.payload, key)

    def notify(self, function: str = F, call: str = J) -> zmq.Socket[Any]:
        """Func.Call's Notify: GET of the response path without option 6; 65 with the key."""
        path = nt.response_path(function, call)
        reply = self.send(zest.encode_request("GET", path, max_age=0, host="app"))
        assert (reply.code, reply.payload) == (zest.CREATED, b"")
        key = reply.options[zest.OPT_OBSERVE_KEY] or None
        assert key == self.server_key
        return self.dealer(path.encode(), key)

    def call(self, payload: bytes, function: str = F, call: str = J, fmt: int = 50) -> int:
        path = nt.request_path(function, call)
        frame = zest.encode_request("POST", path, body=payload, content_format=fmt, host="app")
        return self.send(frame).code

    def respond(self, response_path: str, body: bytes, fmt: int = 50) -> int:
        frame = zest.encode_request("POST", response_path, body=body, content_format=fmt)
        return self.send(frame).code

    def register(self, function: str = F) -> None:
        item = nt.function_item("tcp://store:5555", "acme", function)
        frame = zest.encode_request("POST", "/cat", body=zest.encode_json(item))
        assert self.send(frame).code == zest.CREATED


def push(sock: zmq.Socket[Any]) -> bytes:
    """One push: code 69, option 12; its payload (a line)."""
    got = zest.decode_reply(sock.recv())
    assert got.code == zest.CONTENT, got
    return got.payload


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def native_record(store: RunningStore, function: str = F, call: str = J) -> dict[str, Any]:
    with store.client(client="notification", dsid=function) as client:
        record: dict[str, Any] = client.status(call)
        return record


def test_a_go_call_is_delivered_answered_and_kept_as_a_job(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store()
    driver, app = Peer(store, ctx), Peer(store, ctx)
    driver.register()
    calls = driver.observe()
    answers = app.notify()
    assert app.call(b'{"on":true}') == zest.CREATED

    frame = zest.decode_reply(calls.recv())
    assert (frame.code, frame.options[zest.OPT_CONTENT_FORMAT]) == (69, b"\x00\x32")
    line = nt.parse_call_line(frame.payload)
    assert line[1:] == ("app", f"/notification/response/{F}/{J}", "json", b'{"on":true}')
    assert native_record(store)["status"] == "accepted"

    body = b'{"Status":0,"Response":"eyJvayI6dHJ1ZX0="}'
    assert driver.respond(line.response_path, body) == zest.CREATED
    ms, path, ct, got = push(answers).split(b" ", 3)
    assert ms.isdigit()
    assert (path.decode(), ct, got) == (line.response_path, b"json", body)
    record = native_record(store)
    assert (record["status"], record["request"], record["response"]) == (
        "complete",
        {"format": "json", "payload": {"on": True}, "host": "app"},
        {"Status": 0, "Response": "eyJvayI6dHJ1ZX0="},
    )


def test_a_call_to_a_function_nobody_serves_is_163(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    app = Peer(start_store(), ctx)
    app.notify("nobody")
    assert app.call(b"{}", function="nobody") == zest.SERVICE_UNAVAILABLE


def test_an_error_status_fails_the_call_and_reaches_the_caller(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store()
    driver, app = Peer(store, ctx), Peer(store, ctx)
    calls, answers = driver.observe(), app.notify()
    assert app.call(b"{}") == zest.CREATED
    line = nt.parse_call_line(push(calls))
    body = nt.func_response(99, b"lamp unplugged")
    assert driver.respond(line.response_path, body) == zest.CREATED
    assert push(answers).split(b" ", 3)[3] == body
    assert native_record(store)["status"] == "failed"
    # A second response changes nothing and is 65, as zestdb answers every response.
    assert driver.respond(line.response_path, nt.func_response(0, None)) == zest.CREATED
    assert native_record(store)["response"] == {"Status": 99, "Response": "bGFtcCB1bnBsdWdnZWQ="}


def test_a_call_while_no_driver_observes_is_kept_then_delivered(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store()
    driver, app = Peer(store, ctx), Peer(store, ctx)
    driver.register()  # registered in /cat, but nobody observes yet
    answers = app.notify()
    assert app.call(b'"later"') == zest.CREATED
    assert native_record(store)["status"] == "submitted"
    line = nt.parse_call_line(push(driver.observe()))
    assert line.payload == b'"later"'
    assert driver.respond(line.response_path, nt.func_response(0, b"ok")) == zest.CREATED
    assert json.loads(push(answers).split(b" ", 3)[3]) == {"Status": 0, "Response": "b2s="}


def test_a_call_whose_driver_died_is_delivered_again_when_its_lease_runs_out(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store(Limits(lease_ms=300))
    first, second, app = Peer(store, ctx), Peer(store, ctx), Peer(store, ctx)
    dying = first.observe()
    answers = app.notify()
    assert app.call(b"1") == zest.CREATED
    push(dying)
    dying.close()  # the driver dies before answering
    line = nt.parse_call_line(push(second.observe()))
    assert native_record(store)["attempts"] == 2
    assert second.respond(line.response_path, nt.func_response(0, None)) == zest.CREATED
    assert json.loads(push(answers).split(b" ", 3)[3])["Status"] == 0


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_an_observation_survives_a_store_restart(
    start_store: StoreFactory, ctx: zmq.Context[Any], tmp_path: Path, curve: bool
) -> None:
    config: dict[str, Any] = {
        "request_endpoint": f"ipc://{tmp_path}/req",
        "observe_endpoint": f"ipc://{tmp_path}/obs",
        "notify_endpoint": f"ipc://{tmp_path}/not",
    }
    public = None
    if curve:  # the store comes back with the same key, as databox's start-up gives it
        public, config["secret_key"] = zmq.curve_keypair()
    store = start_store(**config)
    driver = Peer(store, ctx, public)
    calls = driver.observe()
    store.stop()
    again = start_store(**config)
    app = Peer(again, ctx, public)
    answers = app.notify()
    assert app.call(b"2") == zest.CREATED
    line = nt.parse_call_line(push(calls))  # the same DEALER, reconnected by ZeroMQ
    assert app.respond(line.response_path, nt.func_response(0, None)) == zest.CREATED
    assert json.loads(push(answers).split(b" ", 3)[3])["Status"] == 0


@pytest.mark.parametrize(
    ("status", "response", "expected"),
    [
        ("complete", {"on": True}, {"Status": 0, "Response": b'{"on":true}'}),
        ("failed", {"error": "lamp unplugged"}, {"Status": 99, "Response": b"lamp unplugged"}),
    ],
)
def test_a_native_driver_answers_a_go_call(
    start_store: StoreFactory,
    ctx: zmq.Context[Any],
    status: str,
    response: Any,
    expected: dict[str, Any],
) -> None:
    store = start_store()
    app = Peer(store, ctx)
    app.register()
    answers = app.notify()
    assert app.call(b'{"switch":"on"}') == zest.CREATED
    with store.driver(dsid=F) as driver:
        [job] = driver.take()
        assert (job["client"], job["request"]["payload"]) == ("notification", {"switch": "on"})
        driver.report(job["job"], status, response=response)
    got = json.loads(push(answers).split(b" ", 3)[3])
    assert got["Status"] == expected["Status"]
    assert base64.b64decode(got["Response"]) == expected["Response"]


def test_a_late_notify_of_an_ended_call_gets_the_response_at_once(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store()
    driver, app = Peer(store, ctx), Peer(store, ctx)
    calls = driver.observe()
    assert app.call(b"{}") == zest.CREATED
    line = nt.parse_call_line(push(calls))
    assert driver.respond(line.response_path, nt.func_response(0, b"x")) == zest.CREATED
    answers = app.notify()
    assert json.loads(push(answers).split(b" ", 3)[3]) == {"Status": 0, "Response": "eA=="}


@pytest.mark.parametrize(
    ("body", "code"),
    [(b'{"Status":"ok"}', zest.BAD_REQUEST), (b"nonsense", zest.BAD_REQUEST)],
)
def test_a_malformed_response_is_128(
    start_store: StoreFactory, ctx: zmq.Context[Any], body: bytes, code: int
) -> None:
    store = start_store()
    driver, app = Peer(store, ctx), Peer(store, ctx)
    calls = driver.observe()
    assert app.call(b"{}") == zest.CREATED
    line = nt.parse_call_line(push(calls))
    assert driver.respond(line.response_path, body, fmt=zest.FORMAT_TEXT) == code
    assert native_record(store)["status"] == "accepted"


def test_a_response_for_an_unknown_call_is_132(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    driver = Peer(start_store(), ctx)
    assert driver.respond(f"/notification/response/{F}/nope", nt.func_response(0, None)) == 132


def test_the_arbiters_tokens_for_function_calls_are_enough(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    secret, target = b"token-secret-for-function-calls", "core-store"
    store = start_store(auth=Authoriser(secret, target))
    driver, app = Peer(store, ctx), Peer(store, ctx)

    def token(method: str, path: str, *extra: str) -> str:
        # Exactly what the arbiter mints (lib-go-databox asks with no caveats of its own).
        return mint(secret, [f"path = {path}", f"method = {method}", f"target = {target}", *extra])

    pattern = "/notification/request/*"
    observe = zest.encode_request(
        "GET", pattern, token=token("GET", pattern, "observe = data"), observe="notification"
    )
    assert driver.send(observe).code == zest.UNAUTHORIZED
    for caveats in [("observe = notification",), ()]:  # lib-go-databox asks for no observe caveat
        observe = zest.encode_request(
            "GET", pattern, token=token("GET", pattern, *caveats), observe="notification"
        )
        reply = driver.send(observe)
        assert reply.code == zest.CONTENT
    calls = driver.dealer(reply.payload)
    response = nt.response_path(F, J)
    notify = zest.encode_request("GET", response, token=token("GET", response))
    assert app.send(notify).code == zest.CREATED
    answers = app.dealer(response.encode())
    request = nt.request_path(F, J)
    call = zest.encode_request("POST", request, token=token("POST", request), body=b"{}")
    assert app.send(call).code == zest.CREATED
    line = nt.parse_call_line(push(calls))
    body = nt.func_response(0, None)
    answer = zest.encode_request(
        "POST", line.response_path, token=token("POST", response), body=body
    )
    assert driver.send(answer).code == zest.CREATED
    assert push(answers).split(b" ", 3)[3] == body


def test_a_function_datasource_reads_through_the_native_api(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store()
    driver, app = Peer(store, ctx), Peer(store, ctx)
    driver.register()
    assert app.call(b'{"n":1}') == zest.CREATED  # nobody observes yet: kept, queued
    with store.driver(dsid=F) as native:
        stats = native.conn.call("GET", f"/server/{F}/stats")
        assert (stats["by_status"], stats["unfinished"]) == ({"submitted": 1}, 1)
        assert stats["oldest_queued_ms"] is not None
        [listed] = list(native.jobs())
        assert (listed["job"], listed["client"], listed["status"]) == (
            J,
            "notification",
            "submitted",
        )

        line = nt.parse_call_line(push(driver.observe()))
        record = native_record(store)
        assert (record["status"], record["attempts"]) == ("accepted", 1)
        stats = native.conn.call("GET", f"/server/{F}/stats")
        assert (stats["by_status"], stats["last_minute"]["taken"]) == ({"accepted": 1}, 1)

        assert driver.respond(line.response_path, nt.func_response(0, b"1")) == zest.CREATED
        stats = native.conn.call("GET", f"/server/{F}/stats")
        assert (stats["by_status"], stats["unfinished"]) == ({"complete": 1}, 0)
        assert stats["last_minute"]["finished"] == 1
        assert F in native.conn.call("GET", "/stats")["datasources"]


def test_a_go_drivers_observes_count_toward_the_per_peer_cap(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store(max_observers_per_peer=2)
    driver, other = Peer(store, ctx), Peer(store, ctx)
    driver.observe()
    data = zest.encode_request("GET", f"/server/{F}/job", observe="data", max_age=0)
    assert driver.send(data).code == zest.CONTENT
    function = zest.encode_request(
        "GET", "/notification/request/*", observe="notification", max_age=0
    )
    assert driver.send(function).code == zest.TOO_MANY_REQUESTS
    assert driver.send(data).code == zest.TOO_MANY_REQUESTS
    other.observe()  # the cap is per connection


def test_a_flood_of_calls_meets_the_queues_quota(
    start_store: StoreFactory, ctx: zmq.Context[Any]
) -> None:
    store = start_store(Limits(max_active_per_datasource=2))
    driver, app = Peer(store, ctx), Peer(store, ctx)
    driver.register()  # nobody observes: the calls stay queued
    assert app.call(b"1", call="call-1") == zest.CREATED
    assert app.call(b"2", call="call-2") == zest.CREATED
    assert app.call(b"3", call="call-3") == zest.TOO_MANY_REQUESTS
    with store.client(client="notification", dsid=F) as client:
        assert [job["job"] for job in client.jobs()] == ["call-1", "call-2"]


@pytest.mark.parametrize(
    "path", ["/notification/request/light/bad id", "/notification/request/li%ght/j"]
)
def test_a_call_to_a_path_that_is_not_a_valid_name_is_128(
    start_store: StoreFactory, ctx: zmq.Context[Any], path: str
) -> None:
    app = Peer(start_store(), ctx)
    frame = zest.encode_request("POST", path, body=b"{}", content_format=50, host="app")
    assert app.send(frame).code == zest.BAD_REQUEST
