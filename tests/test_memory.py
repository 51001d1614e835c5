"""Peers that send floods or stop reading cost the store a bounded number of bytes.

Each test runs ``jobstore serve`` in a subprocess with small limits, floods one socket with
far more than the limits allow, then checks the store still answers and that its peak
resident memory (VmHWM: it catches what was held for a moment, too) grew by less than
``BOUND``, against floods of at least four times that.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from jobstore.protocol.cbor import decode_reply, encode_request

from .conftest import recv

MB = 1 << 20
BOUND = 24 * MB
BIG = 50_000  # bytes of a job's request: replies and notifications about it are that large


class Served:
    def __init__(self, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
        self.ctx = ctx
        self.endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("req", "obs", "not")}
        self.log = tmp_path / "store.log"
        with self.log.open("wb") as log:  # the store's log, shown if it does not start
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "jobstore", "serve", "--data-dir", str(tmp_path / "d")),
                    *("--request-endpoint", self.endpoints["req"]),
                    *("--observe-endpoint", self.endpoints["obs"]),
                    *("--notify-endpoint", self.endpoints["not"]),
                    *("--max-frame", "131072", "--max-envelope", "4", "--max-batch", "64"),
                    *("--send-hwm", "8", "--recv-hwm", "8", "--socket-buffer", "65536"),
                ],
                stderr=log,
            )
        self.client = self.socket(zmq.DEALER, "req")
        self.client.send(encode_request("GET", "/stats", None, id="c"))
        if not self.client.poll(20_000):
            raise AssertionError(
                f"the store did not answer within 20 s (exit code {self.proc.poll()}); its log:\n"
                + self.log.read_text(errors="replace")[-4000:]
            )
        decode_reply(self.client.recv_multipart()[-1])
        self.baseline = self.peak()

    def socket(self, kind: int, name: str, **options: Any) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        for option, value in options.items():
            setattr(sock, option, value)
        sock.connect(self.endpoints[name])
        return sock

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.client.send(encode_request(method, path, body, id="c"))
        reply = decode_reply(recv(self.client, 20_000)[-1])
        assert reply.id == "c" and reply.status < 300, reply
        return reply.body

    def settle(self, received: int) -> None:
        """Return once the store has received ``received`` requests and finished that batch."""
        for _ in range(10_000):
            if self.call("GET", "/stats")["requests_received"] >= received:
                self.call("GET", "/stats")
                return
        raise AssertionError(f"the store never received {received} requests")

    def peak(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
        return int(line.split()[1]) * 1024

    def growth(self) -> int:
        """Peak resident memory gained since start-up, once the store has answered again."""
        self.call("GET", "/stats")
        return self.peak() - self.baseline

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def served(tmp_path: Path, ctx: zmq.Context[Any]) -> Iterator[Served]:
    store = Served(tmp_path, ctx)
    yield store
    store.stop()


def flood(sock: zmq.Socket[Any], frames: list[bytes], times: int) -> None:
    """Send without blocking, as a hostile peer would; what does not fit is not sent."""
    for _ in range(times):
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            sock.poll(100, zmq.POLLOUT)


def test_frames_sent_to_the_observe_socket_are_not_kept(served: Served) -> None:
    peer = served.socket(zmq.DEALER, "obs", sndhwm=100_000)
    flood(peer, [b"o" * 64_000], 2000)  # 128 MB
    small = served.socket(zmq.DEALER, "obs")
    flood(small, [b"o" * 500], 50_000)  # within the frame limit: read and discarded
    assert served.growth() < BOUND


def test_a_request_frame_far_over_the_limit_is_refused_before_it_is_held(
    served: Served,
) -> None:
    peer = served.socket(zmq.DEALER, "req")
    peer.send(b"\xa1" + b"x" * (128 * MB))
    # Its connection is dropped and made again; what the peer sends next is answered.
    peer.send(encode_request("GET", "/ds/job/c", id="next"))
    assert decode_reply(recv(peer, 20_000)[-1]).id == "next"
    assert served.growth() < BOUND


def test_requests_with_many_large_routing_frames_are_not_held_whole(served: Served) -> None:
    peer = served.socket(zmq.DEALER, "req", sndhwm=100_000, rcvhwm=1)
    request = encode_request("GET", "/ds/job/c")
    for _ in range(20):  # 120 MB, 6 MB a message
        flood(peer, [*([b"e" * 20_000] * 300), request], 1)
        # One message at a time, each read before the next: ZeroMQ counts a message against
        # the receive limit only once its last frame is in, so a store slowed by a loaded
        # machine would otherwise have several arriving at once, however it bounds them.
        served.call("GET", "/stats")
    assert served.growth() < BOUND


def test_a_dealer_that_never_reads_costs_its_send_queue_only(served: Served) -> None:
    served.call("POST", "/ds/job/", {"job": "big", "client": "c", "request": "x" * BIG})
    deaf = served.socket(zmq.DEALER, "req", rcvhwm=1)
    for _ in range(2000):  # 100 MB of replies
        deaf.send(encode_request("GET", "/ds/job/c/big"))
    served.settle(2000)
    assert served.growth() < BOUND


def test_subscribers_that_never_read_cost_their_send_queues_only(served: Served) -> None:
    deaf = [served.socket(zmq.SUB, "not", rcvhwm=1) for _ in range(10)]
    for sub in deaf:
        sub.subscribe(b"")
    writer = served.socket(zmq.DEALER, "req")
    waiting = set(deaf)
    for i in range(1000):  # each reads one notification, so each is subscribed, then stops
        served.call("POST", "/ds/job/", {"job": f"s{i}", "client": "c"})
        for sub in [sub for sub in waiting if sub.poll(10)]:
            sub.recv_multipart()
            waiting.discard(sub)
        if not waiting:
            break
    assert not waiting, "a subscriber never received a notification"
    for wave in range(40):  # 320 changes: 10 x 32 MB of notifications on two topics
        for i in range(8):  # no more than --send-hwm replies in one burst
            body = {"job": f"j{wave}-{i}", "client": "c", "request": "x" * BIG}
            writer.send(encode_request("POST", "/ds/job/", body))
        for _ in range(8):
            assert decode_reply(recv(writer)[-1]).status == 201
    # The store keeps recently written records decoded (about 32 MB of them here) besides.
    assert served.growth() < BOUND + 40 * MB
