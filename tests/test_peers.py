"""Slow, vanished and flooding peers do not stall anyone else."""

from __future__ import annotations

import time
from typing import Any

import zmq

from jobstore.protocol import zest
from jobstore.protocol.cbor import decode_reply, encode_request
from jobstore.protocol.sealed import TOPIC_LENGTH

from .conftest import Clocks, RunningStore, StoreFactory, recv


def socket(ctx: zmq.Context[Any], kind: int, endpoint: str, **options: Any) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.linger = 0
    for name, value in options.items():
        setattr(sock, name, value)
    sock.connect(endpoint)
    return sock


def round_trip(sock: zmq.Socket[Any], rid: int) -> float:
    start = time.monotonic()
    sock.send(encode_request("GET", "/ds/job/c", id=rid))
    assert decode_reply(recv(sock)[-1]).id == rid
    return time.monotonic() - start


def stats(sock: zmq.Socket[Any]) -> dict[str, Any]:
    sock.send(encode_request("GET", "/stats", id="stats"))
    reply = decode_reply(recv(sock)[-1])
    assert reply.id == "stats"
    body: dict[str, Any] = reply.body
    return body


def settle(sock: zmq.Socket[Any], received: int) -> dict[str, Any]:
    """Stats once the store has received ``received`` requests and answered all of them."""
    for _ in range(1000):
        if stats(sock)["requests_received"] >= received:
            return stats(sock)  # one more batch: the one that received them has finished
    raise AssertionError(f"the store never received {received} requests")


def test_a_client_that_never_reads_its_replies_has_them_dropped_past_its_send_queue(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    # 100 replies of 50 kB to a peer that reads none: 5 queued by ZeroMQ and a few in 4 kB
    # kernel buffers fit, so at least half are dropped, whatever the machine's defaults.
    store = start_store(send_hwm=5, socket_buffer=4096)
    other = socket(ctx, zmq.DEALER, store.endpoint)
    big = {"job": "big", "client": "c", "request": "x" * 50_000}
    other.send(encode_request("POST", "/ds/job/", big, id=0))
    assert decode_reply(recv(other)[-1]).status == 201
    deaf = socket(ctx, zmq.DEALER, store.endpoint, rcvhwm=1)
    for i in range(100):
        deaf.send(encode_request("GET", "/ds/job/c/big", id=i))
    after = settle(other, 102)
    assert after["replies_dropped"] >= 50
    round_trip(other, 1)  # and everyone else is still answered


def test_a_request_with_too_many_or_too_large_routing_frames_is_dropped_and_counted(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(max_envelope=3)  # the identity ZeroMQ adds, then two of the peer's
    sock = socket(ctx, zmq.DEALER, store.endpoint)
    request = encode_request("GET", "/ds/job/c", id="dropped")
    sock.send_multipart([b"a", b"b", b"c", request])
    sock.send_multipart([b"x" * 1000, request])
    sock.send_multipart([b"", b"", encode_request("GET", "/ds/job/c", id="kept")])
    frames = recv(sock)
    assert frames[:2] == [b"", b""] and decode_reply(frames[-1]).id == "kept"
    assert stats(sock)["requests_discarded"] == 2


def test_parked_takes_past_the_store_limit_get_429(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(max_parked=2)
    taker = socket(ctx, zmq.DEALER, store.endpoint)
    for i in range(3):
        taker.send(encode_request("POST", "/server/ds/job/take", {"wait": 60_000}, id=i))
    reply = decode_reply(recv(taker)[-1])
    assert reply.id == 2 and reply.status == 429 and "takes are waiting" in (reply.error or "")
    assert stats(taker)["waiting_takes"] == 2


def test_a_submit_wakes_one_parked_take_and_leaves_the_others_parked(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    taker = socket(ctx, zmq.DEALER, store.endpoint)
    for i in range(5):
        taker.send(encode_request("POST", "/server/ds/job/take", {"wait": 60_000}, id=i))
    round_trip(taker, 9)  # stats are taken before a batch: this batch follows the takes' one
    assert stats(taker)["waiting_takes"] == 5
    handled = store.server.service.handled
    writer = socket(ctx, zmq.DEALER, store.endpoint)
    writer.send(encode_request("POST", "/ds/job/", {"job": "j", "client": "c"}, id="s"))
    assert decode_reply(recv(writer)[-1]).status == 201
    taken = decode_reply(recv(taker)[-1])
    assert taken.id == 0 and [j["job"] for j in taken.body["jobs"]] == ["j"]
    # the submit and the one take it woke were handled; the other four were not re-run
    assert store.server.service.handled - handled == 2
    assert stats(taker)["waiting_takes"] == 4


def observe(sock: zmq.Socket[Any], path: str = "/ds/job/app1") -> zest.ZestReply:
    sock.send(zest.encode_request("GET", path, observe="data"))
    return zest.decode_reply(recv(sock)[-1])


def test_zest_observers_past_the_per_peer_and_store_limits_get_429(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(max_observers_per_peer=2, max_observers=3)
    first, second = (socket(ctx, zmq.DEALER, store.endpoint) for _ in range(2))
    assert [observe(first).code for _ in range(3)] == [zest.CONTENT] * 2 + [zest.TOO_MANY_REQUESTS]
    assert observe(second).code == zest.CONTENT
    refused = observe(second)
    assert refused.code == zest.TOO_MANY_REQUESTS and b"Zest observers" in refused.payload
    assert stats(first)["zest_observers"] == 3


def test_an_observer_whose_dealer_has_gone_is_dropped_and_one_not_yet_connected_is_kept(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sock = socket(ctx, zmq.DEALER, store.endpoint)
    waiting = observe(sock).payload  # its DEALER never connects, but it has time to
    ident = observe(sock).payload
    gone = socket(ctx, zmq.DEALER, store.server.endpoints["observe"], identity=ident)
    writer = socket(ctx, zmq.DEALER, store.endpoint)
    i = 0

    def submit() -> None:
        nonlocal i
        i += 1
        body = {"job": f"j{i}", "client": "app1"}
        writer.send(encode_request("POST", "/ds/job/", body, id=i))
        assert decode_reply(recv(writer)[-1]).status == 201

    while not gone.poll(10):  # its connection is asynchronous: submit until a push gets there
        submit()
    gone.close()
    for _ in range(500):  # the store learns of the disconnect asynchronously too
        if ident not in store.server._observers:
            break
        submit()
    assert set(store.server._observers) == {waiting}


def test_a_subscription_longer_than_a_topic_is_ignored(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    sub = socket(ctx, zmq.SUB, store.notify_endpoint)
    sub.subscribe(b"x" * (TOPIC_LENGTH + 8))
    sub.subscribe(b"")  # sent after it, so once this one is seen, both were
    writer = socket(ctx, zmq.DEALER, store.endpoint)
    for _ in range(500):
        if 0 in store.server._subscriptions.by_length:
            break
        round_trip(writer, 1)
    assert set(store.server._subscriptions.by_length) == {0}


def test_a_peer_that_disconnects_mid_request_is_dropped_quietly(
    ctx: zmq.Context[Any], store: RunningStore
) -> None:
    gone = socket(ctx, zmq.DEALER, store.endpoint)
    for i in range(100):
        gone.send(encode_request("POST", "/ds/job/", {"job": f"j{i}", "client": "c"}, id=i))
    gone.close()
    other = socket(ctx, zmq.DEALER, store.endpoint)
    round_trip(other, 1)
    # whatever arrived before the disconnect was applied in full, never half
    other.send(encode_request("GET", "/ds/job/c", {}, id=2))
    jobs = decode_reply(recv(other)[-1]).body["jobs"]
    assert [j["job"] for j in jobs] == [f"j{i}" for i in range(len(jobs))]


def test_a_flooding_peer_is_answered_429_past_its_in_flight_limit(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(max_inflight_per_peer=5, max_batch=512)
    flood = socket(ctx, zmq.DEALER, store.endpoint)
    for i in range(5):  # parked takes stay in flight
        flood.send(encode_request("POST", "/server/ds/job/take", {"wait": 60_000}, id=i))
    flood.send(encode_request("GET", "/ds/job/c", id="over"))
    reply = decode_reply(recv(flood)[-1])
    assert reply.status == 429 and "in flight" in (reply.error or "")
    other = socket(ctx, zmq.DEALER, store.endpoint)
    round_trip(other, 1)


def test_a_subscriber_that_stops_reading_does_not_stall_the_store(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(send_hwm=100)  # above the 50 replies of a wave, far below 4000
    sleeper = socket(ctx, zmq.SUB, store.notify_endpoint, rcvhwm=10)
    sleeper.subscribe(b"")
    writer = socket(ctx, zmq.DEALER, store.endpoint)
    for wave in range(40):  # 2000 changes, 4000 notifications the sleeper never reads
        ids = range(wave * 50, wave * 50 + 50)
        for i in ids:
            writer.send(encode_request("POST", "/ds/job/", {"job": f"j{i}", "client": "c"}, id=i))
        assert sorted(decode_reply(recv(writer)[-1]).id for _ in ids) == list(ids)


HOUR = 3_600_000


def test_a_wall_clock_step_back_keeps_no_take_waiting_past_its_wait(
    ctx: zmq.Context[Any], store: RunningStore, clocks: Clocks
) -> None:
    taker = socket(ctx, zmq.DEALER, store.endpoint)
    taker.send(encode_request("POST", "/server/ds/job/take", {"wait": 300}, id="take"))
    round_trip(taker, 1)  # answered after the take was parked
    clocks.wall -= HOUR  # NTP sets the clock back: the wait is on the monotonic clock
    reply = decode_reply(recv(taker)[-1])
    assert reply.id == "take" and reply.status == 200 and reply.body == {"jobs": []}


def test_a_wall_clock_step_forward_ends_no_zest_observation(
    ctx: zmq.Context[Any], store: RunningStore, clocks: Clocks
) -> None:
    sock = socket(ctx, zmq.DEALER, store.endpoint)
    sock.send(zest.encode_request("GET", "/ds/job/app1", observe="data", max_age=60))
    assert zest.decode_reply(recv(sock)[-1]).code == zest.CONTENT
    clocks.wall += 2 * HOUR  # no time has passed: the observation has 60 s left
    round_trip(sock, 1)  # a batch runs, and observers past their max_age go
    assert stats(sock)["zest_observers"] == 1
