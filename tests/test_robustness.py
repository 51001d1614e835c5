"""No frame, value or internal error stops a running store: it answers, then serves the next."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq

from jobstore.protocol import Reply, cbor, shown, zest
from jobstore.protocol.cbor import decode_reply, encode_request
from jobstore.records import Job
from jobstore.states import Status
from jobstore.store import check, frames, server
from jobstore.store.auth import Authoriser
from jobstore.store.operations import Service
from jobstore.store.server import ServerConfig
from jobstore.store.storage import Storage

from .conftest import RunningStore, StoreFactory, recv

BIG = 10**5000  # str() of it raises ValueError: more than 4300 digits
SECRET_KEY = b"EKy(xjAnIfg6AT+OGd?nS1Mi5zZ&b*VXA@WxNLLE"
PUBLIC_KEY = b"vl6wu0A@XP?}Or/&BR#LSxn>A+}L)p44/W[wXL3<"


def dealer(ctx: zmq.Context[Any], store: RunningStore, curve: bool = False) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if curve:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            PUBLIC_KEY,
            public,
            secret,
        )
    sock.connect(store.endpoint)
    return sock


def native(sock: zmq.Socket[Any], frame: bytes) -> Reply:
    sock.send(frame)
    return decode_reply(recv(sock)[-1])


def still_serving(sock: zmq.Socket[Any]) -> None:
    """The store answers a well-formed request after whatever came before."""
    reply = native(sock, encode_request("GET", "/ds/job/", {"client": "c1"}, id="after"))
    assert (reply.status, reply.id) in ((200, "after"), (401, "after")), reply


def zest_call(
    sock: zmq.Socket[Any], method: str, path: str, body: bytes = b"", fmt: int = zest.FORMAT_JSON
) -> zest.ZestReply:
    sock.send(zest.encode_request(method, path, body=body, content_format=fmt))
    return zest.decode_reply(recv(sock)[-1])


HOSTILE_FRAMES = [
    ({"method": BIG, "path": "/x"}, "method must be one of"),
    ({"method": "GET", "path": BIG}, "path must be text"),
    ({"method": "GET", "path": "/x", "id": BIG}, "id must be an unsigned integer"),
    ({"method": "GET", "path": "/x", BIG: 1}, "unknown key an integer of"),
    ({"method": "GET", "path": "/x", "id": 2**64}, "id must be an unsigned integer"),
]
BODY_FRAMES = [
    ("POST", "/ds/job/", {"job": "j", "client": "c", "request": BIG}, "request is an integer"),
    ("POST", "/ds/job/", {"job": "j", "client": "c", "request": [b"x"]}, "request[0] is bytes"),
    ("POST", "/ds/job/", {"job": "j", "client": "c", BIG: 1}, "unknown key an integer"),
    ("GET", "/ds/job/", {"client": "c", "limit": BIG}, "limit must be an integer"),
    ("GET", "/ds/job/", {"client": "c", "since": BIG}, "since must be an integer"),
    ("GET", "/server/ds/job/", {"status": BIG}, "status must be one of"),
    ("POST", "/server/ds/job/take", {"wait": BIG}, "wait must be an integer"),
    ("POST", "/server/ds/job/status", {"job": "j", "status": BIG}, "status must be one of"),
    ("GET", "/cat/job/c/j", None, "dsid 'cat' is reserved"),
    ("POST", "/stats/job", {"job": "j", "client": "c"}, "dsid 'stats' is reserved"),
]


@pytest.mark.parametrize(("message", "fragment"), HOSTILE_FRAMES, ids=shown)
def test_huge_integers_in_a_frame_get_400_and_the_store_serves_on(
    ctx: zmq.Context[Any], store: RunningStore, message: dict[Any, Any], fragment: str
) -> None:
    sock = dealer(ctx, store)
    reply = native(sock, cbor2.dumps(message))
    assert reply.status == 400 and fragment in (reply.error or ""), reply
    still_serving(sock)


def test_huge_integers_get_400_before_any_token_check_with_curve_and_macaroons_on(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    secured = start_store(secret_key=SECRET_KEY, auth=Authoriser(b"token-secret", "store"))
    sock = dealer(ctx, secured, curve=True)
    for message, fragment in HOSTILE_FRAMES:
        reply = native(sock, cbor2.dumps(message))
        assert reply.status == 400 and fragment in (reply.error or ""), reply
    still_serving(sock)


@pytest.mark.parametrize(("method", "path", "body", "fragment"), BODY_FRAMES, ids=shown)
def test_bad_body_fields_get_400_naming_them_and_the_store_serves_on(
    ctx: zmq.Context[Any], store: RunningStore, method: str, path: str, body: Any, fragment: str
) -> None:
    sock = dealer(ctx, store)
    reply = native(sock, encode_request(method, path, body, id=9))
    assert (reply.status, reply.id) == (400, 9) and fragment in (reply.error or ""), reply
    still_serving(sock)


@pytest.mark.parametrize(
    "tail", [b"\x00", cbor2.dumps({"method": "GET", "path": "/y"})], ids=["byte", "second map"]
)
def test_a_frame_with_data_after_its_map_gets_400(
    ctx: zmq.Context[Any], store: RunningStore, tail: bytes
) -> None:
    sock = dealer(ctx, store)
    reply = native(sock, encode_request("GET", "/stats") + tail)
    assert reply.status == 400 and "after its CBOR map" in (reply.error or ""), reply
    still_serving(sock)


@pytest.mark.parametrize(
    ("payload", "fmt", "fragment"),
    [
        (b'{"job":"j","client":"c","request":1e400}', zest.FORMAT_JSON, "request is Infinity"),
        (b'{"job":"j","client":"c","request":[-1e999]}', zest.FORMAT_JSON, "is -Infinity"),
        (
            cbor2.dumps({"job": "j", "client": "c", "request": float("nan")}),
            zest.FORMAT_CBOR,
            "request is NaN",
        ),
        (cbor2.dumps({"job": "j", "client": "c", "request": b"x"}), zest.FORMAT_CBOR, "bytes"),
        (cbor2.dumps({"job": "j", "client": "c", "request": BIG}), zest.FORMAT_CBOR, "bits"),
    ],
    ids=["json 1e400", "json -1e999", "cbor NaN", "cbor bytes", "cbor bignum"],
)
def test_zest_values_json_cannot_carry_get_128_and_are_not_stored(
    ctx: zmq.Context[Any], store: RunningStore, payload: bytes, fmt: int, fragment: str
) -> None:
    sock = dealer(ctx, store)
    reply = zest_call(sock, "POST", "/ds/job/", payload, fmt)
    assert reply.code == zest.BAD_REQUEST and fragment in reply.payload.decode(), reply
    assert zest_call(sock, "GET", "/ds/job/c/j").code == zest.NOT_FOUND
    still_serving(sock)


def store_old_record(data_dir: Path, job: str, request: Any) -> None:
    """Write a record as an older version could have: its request holds a value JSON lacks."""
    storage = Storage(data_dir)
    try:
        now = time.time_ns() // 1_000_000
        with storage.write() as txn:
            history = ((Status.SUBMITTED.value, now),)
            record = Job("ds", job, "c1", request, Status.SUBMITTED, now, now, txn.next_seq())
            txn.put(record._replace(history=history), None)
    finally:
        storage.close()


OLD_VALUES = [float("nan"), BIG, cbor2.CBORTag(4321, "x")]


@pytest.mark.parametrize("value", OLD_VALUES, ids=["NaN", "bignum", "tag"])
def test_a_stored_record_json_cannot_carry_gets_500_per_request_and_is_reported_by_check(
    ctx: zmq.Context[Any], start_store: StoreFactory, tmp_path: Path, value: Any
) -> None:
    store_old_record(tmp_path / "data", "old", value)
    store = start_store()
    sock = dealer(ctx, store)
    for method, path in [
        ("GET", "/ds/job/c1/old"),
        ("GET", "/ds/job/c1"),
        ("GET", "/server/ds/job"),
        ("POST", "/server/ds/job/take"),
    ]:
        reply = zest_call(sock, method, path)
        assert reply.code == zest.INTERNAL_SERVER_ERROR, (path, reply)
        assert b"jobstore check" in reply.payload
        assert zest_call(sock, "GET", "/ds/job/c1/none").code == zest.NOT_FOUND
    # CBOR carries these values: native and Zest CBOR readers still get the record.
    assert native(sock, encode_request("GET", "/ds/job/c1/old")).status == 200
    assert zest_call(sock, "GET", "/ds/job/c1/old", fmt=zest.FORMAT_CBOR).code == zest.CONTENT
    store.stop()
    _, problems = check.check(tmp_path / "data")
    assert problems == [
        next(p for p in problems if p.startswith("job ds/old cannot be sent as JSON"))
    ]


def test_an_observe_push_is_always_valid_json_and_skips_a_record_json_cannot_carry(
    ctx: zmq.Context[Any], start_store: StoreFactory, tmp_path: Path
) -> None:
    store_old_record(tmp_path / "data", "old", float("nan"))
    store = start_store()
    sock = dealer(ctx, store)
    reply = zest.decode_reply(
        native_zest(sock, zest.encode_request("GET", "/server/ds/job", observe="data"))
    )
    observer = ctx.socket(zmq.DEALER)
    observer.linger = 0
    observer.identity = reply.payload
    observer.connect(store.server.endpoints["observe"])
    # The observer connects asynchronously: submit until a push shows it is connected.
    for i in range(100):
        native(sock, encode_request("POST", "/ds/job/", {"job": f"j{i}", "client": "c1"}))
        if observer.poll(50):
            observer.recv()
            break
    else:
        raise AssertionError("no observe push arrived")
    cancelled = native(
        sock, encode_request("POST", "/ds/job/cancel", {"job": "old", "client": "c1"})
    )
    assert cancelled.status == 200 and cancelled.body["status"] == "cancelled"
    native(sock, encode_request("POST", "/ds/job/", {"job": "next", "client": "c1"}))
    # Pushes come in order: skip those of the j<i> submitted while connecting; had the
    # cancel of "old" been pushed, it would come before the push of "next".
    path, record = "/ds/job/c1/j0", ""
    while path.startswith("/ds/job/c1/j"):
        _, path, _, record = zest.decode_reply(recv(observer)[-1]).payload.decode().split(" ", 3)
    assert path == "/ds/job/c1/next"
    assert json.loads(record, parse_constant=reject)["job"] == "next"


def native_zest(sock: zmq.Socket[Any], frame: bytes) -> bytes:
    sock.send(frame)
    return recv(sock)[-1]


def reject(name: str) -> Any:
    raise AssertionError(f"{name} in a push is not JSON")


# --- an unexpected exception in any stage costs one request, not the store ------------------


class Once:
    """Raise ``RuntimeError`` on the first call, then behave as ``real``."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("planted failure")
        return self.real(*args, **kw)


def test_an_unexpected_error_decoding_a_frame_gets_500_and_the_store_serves_on(
    ctx: zmq.Context[Any], store: RunningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cbor, "decode_request", Once(cbor.decode_request))
    sock = dealer(ctx, store)
    reply = native(sock, encode_request("GET", "/stats", id=1))
    assert reply.status == 500 and "internal error" in (reply.error or "")
    still_serving(sock)


def test_an_unexpected_error_handling_a_batch_gets_500_and_the_store_serves_on(
    ctx: zmq.Context[Any], store: RunningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = store.server.service
    monkeypatch.setattr(service, "handle_batch", Once(service.handle_batch))
    sock = dealer(ctx, store)
    reply = native(sock, encode_request("GET", "/stats", id=1))
    assert (reply.status, reply.id) == (500, 1) and "internal error" in (reply.error or "")
    still_serving(sock)


@pytest.mark.parametrize("codec", ["native", "zest"])
def test_a_reply_that_cannot_be_encoded_gets_500_and_the_store_serves_on(
    ctx: zmq.Context[Any], store: RunningStore, monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    module: Any = cbor if codec == "native" else zest
    monkeypatch.setattr(module, "encode_reply", Once(module.encode_reply))
    sock = dealer(ctx, store)
    if codec == "native":
        reply = native(sock, encode_request("GET", "/stats", id=1))
        assert (reply.status, reply.id) == (500, 1) and "cannot encode" in (reply.error or "")
    else:
        got = zest_call(sock, "GET", "/stats")
        assert got.code == zest.INTERNAL_SERVER_ERROR and b"cannot encode" in got.payload
    still_serving(sock)


def test_an_unexpected_error_outside_every_stage_leaves_the_store_serving(
    ctx: zmq.Context[Any], store: RunningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = store.server
    failing = Once(srv._timeout)
    monkeypatch.setattr(srv, "_timeout", failing)
    sock = dealer(ctx, store)
    while failing.calls == 0:  # the loop may be asleep in its poll: wake it until it fails
        still_serving(sock)
    still_serving(sock)
    assert store.thread.is_alive()


def test_an_unexpected_error_publishing_costs_no_reply_of_the_batch(
    ctx: zmq.Context[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Driven by hand, so that both requests are surely in one batch.
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("request", "observe", "notify")}
    config = ServerConfig(**{f"{name}_endpoint": ep for name, ep in endpoints.items()})
    srv = server.Server(Service(Storage(tmp_path / "data")), config)
    try:
        monkeypatch.setattr(srv.sealer, "messages", Once(srv.sealer.messages))
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoints["request"])
        for i in range(2):
            sock.send(encode_request("POST", "/ds/job/", {"job": f"j{i}", "client": "c1"}, id=i))
        pending: list[Any] = []
        while len(pending) < 2:
            assert srv.request.poll(5000), "the requests did not arrive"
            pending += srv._receive()
        srv._run_batch(pending, server.now_ms())
        replies = [decode_reply(recv(sock)[-1]) for _ in range(2)]
        assert sorted((r.id, r.status) for r in replies) == [(0, 201), (1, 201)]
        assert srv.sealer.messages.calls == 2  # type: ignore[attr-defined]
    finally:
        for closing in (srv.request, srv.observe, srv.notify):
            closing.close(linger=0)
        srv.ctx.term()
        srv.service.storage.close()


def test_encode_falls_back_to_a_500_for_a_body_no_codec_can_carry() -> None:
    reply = Reply(200, {"x": object()}, id=4)
    assert decode_reply(frames.encode(reply, None)) == Reply(500, error=frames.UNENCODABLE, id=4)
