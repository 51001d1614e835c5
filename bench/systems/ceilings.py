"""Ceilings measured beside the systems: what bare Python + pyzmq (+ LMDB) can do on this machine.

* ``echo``: a ROUTER that decodes each CBOR request and answers a CBOR reply.
* ``group-commit``: a ROUTER that takes every request waiting, writes them all in
  one LMDB write transaction with sync on (one fsync per batch), then answers each.

The client keeps :data:`WINDOW` submit-shaped CBOR requests in flight on a DEALER.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import cbor2
import lmdb
import zmq
from harness import free_port, make_request, stop_process

WINDOW = 100
MAX_BATCH = 512
POLL_MS = 200


def serve(kind: str, port: int, data_dir: str, ready: Any, stop: Any) -> None:
    """The ceiling server process: ``kind`` is ``echo`` or ``group-commit``."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(f"tcp://127.0.0.1:{port}")
    env = None
    if kind == "group-commit":
        env = lmdb.open(data_dir, map_size=1 << 30, sync=True, metasync=True, max_dbs=2)
    ready.set()
    key = 0
    while not stop.is_set():
        if not sock.poll(POLL_MS):
            continue
        batch: list[tuple[list[bytes], dict[str, Any]]] = []
        for _ in range(MAX_BATCH):
            try:
                msg = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            batch.append((msg[:-1], cbor2.loads(msg[-1])))
        if env is not None:
            with env.begin(write=True) as txn:
                for _, request in batch:
                    key += 1
                    txn.put(key.to_bytes(8, "big"), cbor2.dumps(request["body"]))
        for envelope, request in batch:
            reply = {"status": 201, "body": request["body"], "id": request["id"]}
            sock.send_multipart([*envelope, cbor2.dumps(reply)])
    sock.close()
    if env is not None:
        env.close()


def load(port: int, requests: int, deadline: float, results: Any) -> None:
    """The ceiling client process: ``requests`` requests, WINDOW in flight; puts requests/s."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{port}")
    frames = [
        cbor2.dumps(
            {
                "method": "POST",
                "path": "/bench-jobs/job/",
                "body": {"job": f"ceiling-{i}", "client": "bench", "request": make_request(i)},
                "id": i,
            }
        )
        for i in range(requests)
    ]
    sent = answered = 0
    start = time.monotonic()
    stop_at = start + deadline
    while answered < requests and time.monotonic() < stop_at:
        while sent < requests and sent - answered < WINDOW:
            sock.send(frames[sent])
            sent += 1
        if sock.poll(1000):
            while True:
                try:
                    cbor2.loads(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                answered += 1
    elapsed = time.monotonic() - start
    results.put({"requests": answered, "seconds": elapsed, "req_s": round(answered / elapsed, 1)})
    sock.close()


def measure(kind: str, requests: int, workdir: Path, deadline: float = 60.0) -> dict[str, Any]:
    """Run one ceiling: server and client processes, stopped by PID when done."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    results: mp.Queue[Any] = ctx.Queue()
    port = free_port()
    data = workdir / kind
    data.mkdir(parents=True, exist_ok=True)
    server = ctx.Process(target=serve, args=(kind, port, str(data), ready, stop), daemon=True)
    client = ctx.Process(target=load, args=(port, requests, deadline, results), daemon=True)
    try:
        server.start()
        if not ready.wait(15):
            raise RuntimeError(f"the {kind} ceiling server did not start")
        client.start()
        found: dict[str, Any] = results.get(timeout=deadline + 15)
        return found
    finally:
        stop.set()
        server.join(2)
        stop_process(client)
        stop_process(server)
