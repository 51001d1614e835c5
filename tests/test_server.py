"""The store through its real sockets: envelopes, pipelining, malformed frames, notifications."""

from __future__ import annotations

import threading
from typing import Any

import cbor2
import pytest
import zmq

from jobstore.errors import ProtocolError
from jobstore.protocol import zest
from jobstore.protocol.cbor import decode_reply, encode_request
from jobstore.protocol.sealed import open_sealed
from jobstore.store.operations import Limits

from .conftest import RunningStore, StoreFactory, recv


def dealer(ctx: zmq.Context[Any], store: RunningStore) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(store.endpoint)
    return sock


def call(sock: zmq.Socket[Any], method: str, path: str, body: Any = None, rid: int = 1) -> Any:
    sock.send(encode_request(method, path, body, id=rid))
    return decode_reply(recv(sock)[-1])


def test_req_peer_gets_its_reply_with_the_empty_delimiter(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(store.endpoint)
    req.send(encode_request("POST", "/ds/job/", {"job": "j", "client": "c", "request": 1}))
    reply = decode_reply(recv(req)[-1])
    assert reply.status == 201 and reply.body["job"] == "j"


def test_dealer_pipelines_and_matches_replies_by_id(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sock = dealer(ctx, store)
    for i in range(200):
        sock.send(encode_request("POST", "/ds/job/", {"job": f"j{i}", "client": "c"}, id=i))
    replies = [decode_reply(recv(sock)[-1]) for _ in range(200)]
    assert sorted(r.id for r in replies) == list(range(200))
    assert all(r.status == 201 and r.body["job"] == f"j{r.id}" for r in replies)


def test_tcp_endpoints_work_as_well_as_ipc(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(
        request_endpoint="tcp://127.0.0.1:*",
        observe_endpoint="tcp://127.0.0.1:*",
        notify_endpoint="tcp://127.0.0.1:*",
    )
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(store.endpoint)
    assert call(sock, "GET", "/ds/job/c").status == 200


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (b"", "empty frame"),
        (b"\x00garbage", "first byte 0x00"),
        (b"\xff", "first byte 0xff"),
        (b"\xa1", "not valid CBOR"),
        (cbor2.dumps({"method": "GET"}), "path must be text"),
        (cbor2.dumps({"method": "GET", "path": "/x", "junk": 1}), "unknown key"),
    ],
)
def test_malformed_native_frames_get_400_and_the_store_keeps_serving(
    ctx: zmq.Context[Any], store: RunningStore, frame: bytes, fragment: str
) -> None:
    sock = dealer(ctx, store)
    sock.send(frame)
    reply = decode_reply(recv(sock)[-1])
    assert reply.status == 400 and fragment in (reply.error or "")
    assert call(sock, "GET", "/ds/job/c").status == 200


def test_malformed_zest_frame_gets_a_zest_bad_request(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sock = dealer(ctx, store)
    sock.send(b"\x01\x05\x00")
    reply = zest.decode_reply(recv(sock)[-1])
    assert reply.code == zest.BAD_REQUEST and b"truncated" in reply.payload


def test_oversized_frame_gets_413(ctx: zmq.Context[Any], start_store: StoreFactory) -> None:
    store = start_store(max_frame=1000)
    sock = dealer(ctx, store)
    reply = call(sock, "POST", "/ds/job/", {"job": "j", "client": "c", "request": "x" * 2000})
    assert reply.status == 413 and "limit is 1000" in reply.error
    assert call(sock, "GET", "/ds/job/c/j").status == 404


def test_error_reply_to_a_malformed_pipelined_request_keeps_its_id(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sock = dealer(ctx, store)
    sock.send(cbor2.dumps({"method": "PUT", "path": "/x", "id": "req-7"}))
    reply = decode_reply(recv(sock)[-1])
    assert reply.status == 400 and reply.id == "req-7"


def test_zest_request_on_the_request_socket(ctx: zmq.Context[Any], store: RunningStore) -> None:
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(store.endpoint)
    body = b'{"job":"z1","client":"c","request":{"a":1}}'
    req.send(zest.encode_request("POST", "/ds/job/", body=body))
    reply = zest.decode_reply(recv(req)[-1])
    assert reply.code == zest.CREATED
    req.send(zest.encode_request("GET", "/ds/job/c/z1"))
    reply = zest.decode_reply(recv(req)[-1])
    assert reply.code == zest.CONTENT and b'"status":"submitted"' in reply.payload


def test_long_poll_take_is_answered_when_a_job_arrives(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    taker = dealer(ctx, store)
    taker.send(encode_request("POST", "/server/ds/job/take", {"wait": 10_000}, id=1))
    submitter = dealer(ctx, store)
    # The take is parked only once the store has handled it: wait for a later request's reply.
    assert call(taker, "GET", "/ds/job/c", rid=2).id == 2
    assert call(submitter, "POST", "/ds/job/", {"job": "j", "client": "c"}).status == 201
    reply = decode_reply(recv(taker)[-1])
    assert reply.id == 1 and [j["job"] for j in reply.body["jobs"]] == ["j"]


def test_long_poll_take_times_out_with_no_jobs(ctx: zmq.Context[Any], store: RunningStore) -> None:
    taker = dealer(ctx, store)
    reply = call(taker, "POST", "/server/ds/job/take", {"wait": 50})
    assert reply.status == 200 and reply.body == {"jobs": []}


def test_long_poll_take_ignores_other_datasources(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    taker = dealer(ctx, store)
    taker.send(encode_request("POST", "/server/ds/job/take", {"wait": 300}, id=1))
    assert call(taker, "GET", "/ds/job/c", rid=2).id == 2
    assert (
        call(dealer(ctx, store), "POST", "/other/job/", {"job": "j", "client": "c"}).status == 201
    )
    reply = decode_reply(recv(taker)[-1])
    assert reply.body == {"jobs": []}


def test_a_lease_runs_out_on_a_timer_without_other_requests(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sock = dealer(ctx, store)
    call(sock, "POST", "/ds/job/", {"job": "j", "client": "c"})
    server_sub = call(sock, "POST", "/sub/server/ds/job", {}).body
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(server_sub["topic"].encode())
    sub.connect(store.notify_endpoint)
    _sync_subscription(sock, sub, server_sub)
    assert (
        call(sock, "POST", "/server/ds/job/take", {"lease": 50}).body["jobs"][0]["status"]
        == "accepted"
    )
    statuses = [open_sealed(server_sub["key"], recv(sub)[1])["record"]["status"] for _ in range(2)]
    assert statuses == ["accepted", "retrying"]


def _sync_subscription(sock: zmq.Socket[Any], sub: zmq.Socket[Any], info: dict[str, Any]) -> None:
    """Make changes until the subscriber sees one, so the subscription is known to be live."""
    for i in range(100):
        call(sock, "POST", "/ds/job/", {"job": f"sync{i}", "client": "c"})
        call(sock, "POST", "/ds/job/cancel", {"job": f"sync{i}", "client": "c"})
        if sub.poll(50):
            while sub.poll(50):
                sub.recv_multipart()
            return
    raise AssertionError("subscription never became live")


def test_notifications_are_sealed_per_client(ctx: zmq.Context[Any], store: RunningStore) -> None:
    sock = dealer(ctx, store)
    mine = call(sock, "POST", "/sub/ds/job", {"client": "alice"}).body
    theirs = call(sock, "POST", "/sub/ds/job", {"client": "bob"}).body
    everything = ctx.socket(zmq.SUB)
    everything.linger = 0
    everything.subscribe(b"")
    everything.connect(store.notify_endpoint)
    server = call(sock, "POST", "/sub/server/ds/job", {}).body
    _sync_subscription(sock, everything, server)
    call(sock, "POST", "/ds/job/", {"job": "secret-job", "client": "bob", "request": "bob's"})
    seen = [recv(everything) for _ in range(2)]
    topics = {topic for topic, _ in seen}
    assert topics == {theirs["topic"].encode(), server["topic"].encode()}
    for _topic, sealed in seen:
        assert b"bob's" not in sealed and b"secret-job" not in sealed
        with pytest.raises(ProtocolError, match="does not open"):
            open_sealed(mine["key"], sealed)
    bob = next(sealed for topic, sealed in seen if topic == theirs["topic"].encode())
    assert open_sealed(theirs["key"], bob)["record"]["request"] == "bob's"


def test_server_subscription_sees_every_client_with_prev_chained(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sock = dealer(ctx, store)
    server = call(sock, "POST", "/sub/server/ds/job", {}).body
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(server["topic"].encode())
    sub.connect(store.notify_endpoint)
    _sync_subscription(sock, sub, server)
    last = call(sock, "POST", "/sub/server/ds/job", {}).body["seq"]
    for client in ("a", "b", "c"):
        call(sock, "POST", "/ds/job/", {"job": f"j-{client}", "client": client})
    messages = [open_sealed(server["key"], recv(sub)[1]) for _ in range(3)]
    assert [m["record"]["client"] for m in messages] == ["a", "b", "c"]
    prevs = [last] + [m["record"]["seq"] for m in messages[:-1]]
    assert [m["prev"] for m in messages] == prevs


def test_jobs_survive_a_restart_of_the_store(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    first = start_store()
    sock = dealer(ctx, first)
    call(sock, "POST", "/ds/job/", {"job": "j", "client": "c", "request": [1, 2, 3]})
    first.stop()
    second = start_store(data_dir=first.data_dir)
    record = call(dealer(ctx, second), "GET", "/ds/job/c/j").body
    assert record["request"] == [1, 2, 3] and record["seq"] == 1


def test_stop_answers_a_parked_take_before_exiting(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    taker = dealer(ctx, store)
    taker.send(encode_request("POST", "/server/ds/job/take", {"wait": 60_000}, id=1))
    assert call(taker, "GET", "/ds/job/c", rid=2).id == 2
    stopper = threading.Thread(target=store.stop)
    stopper.start()
    reply = decode_reply(recv(taker)[-1])
    stopper.join()
    assert reply.id == 1 and reply.body == {"jobs": []}


def test_pipelined_submits_get_consecutive_seqs(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(limits=Limits())
    sock = dealer(ctx, store)
    for i in range(50):
        sock.send(encode_request("POST", "/ds/job/", {"job": f"j{i}", "client": "c"}, id=i))
    assert sorted(decode_reply(recv(sock)[-1]).id for _ in range(50)) == list(range(50))
    page = call(sock, "GET", "/ds/job/c", rid=99).body
    assert [j["seq"] for j in page["jobs"]] == list(range(1, 51))


def test_store_stats_include_the_socket_counters(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sock = dealer(ctx, store)
    for i in range(3):
        call(sock, "GET", "/ds/job/c", rid=i)
    stats = call(sock, "GET", "/stats").body
    assert stats["requests_received"] >= 3 and stats["replies_dropped"] == 0
    assert stats["zest_observers"] == 0 and stats["waiting_takes"] == 0


def test_changes_are_sealed_only_for_topics_someone_subscribes_to(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sealed: list[int] = []
    real = store.server.sealer.messages

    def counting(change: Any, wanted: Any) -> list[list[bytes]]:
        messages = real(change, wanted)
        sealed.append(len(messages))
        return messages

    store.server.sealer.messages = counting  # type: ignore[method-assign]
    sock = dealer(ctx, store)
    call(sock, "POST", "/ds/job/", {"job": "quiet", "client": "c"})
    call(sock, "GET", "/ds/job/c")  # a change is published after its reply: let the loop finish it
    assert sealed == [0]
    info = call(sock, "POST", "/sub/ds/job", {"client": "c"}).body
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(info["topic"].encode())
    sub.connect(store.notify_endpoint)
    for i in range(100):  # until the subscription has reached the store
        call(sock, "POST", "/ds/job/", {"job": f"j{i}", "client": "c"})
        call(sock, "GET", "/ds/job/c")
        if sealed[-1]:
            break
    assert sealed[-1] == 1  # the client's topic only: nobody subscribes to the server topic
    assert open_sealed(info["key"], recv(sub)[1])["record"]["client"] == "c"
