"""Slow, vanished and flooding peers do not stall anyone else."""

from __future__ import annotations

import time
from typing import Any

import zmq

from jobstore.protocol.cbor import decode_reply, encode_request

from .conftest import RunningStore, StoreFactory, recv


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


def test_a_client_that_never_reads_its_replies_does_not_stall_others(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(send_hwm=50)
    deaf = socket(ctx, zmq.DEALER, store.endpoint, rcvhwm=10)
    for i in range(3000):
        deaf.send(encode_request("GET", "/ds/job/c", id=i))
    other = socket(ctx, zmq.DEALER, store.endpoint)
    for i in range(20):
        round_trip(other, i)
    assert store.server.dropped > 0  # the deaf peer's replies were dropped, not queued forever


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
