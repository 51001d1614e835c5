"""jobstore over its native protocol: pipelined CBOR submits, batched takes, sealed PUB outcomes.

The client keeps up to :data:`WINDOW` submits in flight on one DEALER and
learns outcomes from ``JobClient.watch()`` (sealed notifications on its topic,
with the list call to catch up on a gap). The driver takes up to
:data:`TAKE_MAX` jobs per long-poll and pipelines the completes of the batch.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from harness import RESPONSE, Endpoints, Outcomes, free_port, spawn_server, wait_for_port

import jobstore
from jobstore.client import Driver, JobClient
from jobstore.protocol import cbor
from systems import System

DSID = "bench-jobs"
UNSERVED_DSID = "bench-unserved"  # no driver takes from it: for the submit-only phase
WINDOW = 100
TAKE_MAX = 100
LEASE_MS = 60_000
TAKE_WAIT_MS = 200
REPLY_TIMEOUT_MS = 30_000
TERMINAL = frozenset({"complete", "cancelled", "forbidden", "failed"})
SRC = Path(jobstore.__file__).resolve().parents[1]  # the copy run.py runs on


class JobstoreServer(System):
    """``jobstore serve`` on three random loopback ports."""

    name = "jobstore-native"
    module = "systems.jobstore_native"

    def __init__(self, data_dir: Path | None = None, map_size: int | None = None) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.map_size = map_size

    def start(self, workdir: Path) -> Endpoints:
        ports = {name: free_port() for name in ("request", "observe", "notify")}
        endpoints: Endpoints = {name: f"tcp://127.0.0.1:{p}" for name, p in ports.items()}
        data = self.data_dir or workdir / "data"
        argv = [sys.executable, *_profiler(workdir, self.name), "-m", "jobstore"]
        argv += ["--log-level", "WARNING", "serve"]
        argv += ["--data-dir", str(data)]
        for name, endpoint in endpoints.items():
            argv += [f"--{name}-endpoint", endpoint]
        if self.map_size:
            argv += ["--map-size", str(self.map_size)]
        proc = spawn_server(argv, workdir / "server.log", {"PYTHONPATH": str(SRC)})
        self.procs.append(proc)
        wait_for_port(ports["request"], proc)
        wait_for_port(ports["notify"], proc)
        endpoints["dsid"] = DSID
        endpoints["data_dir"] = str(data)  # for the LMDB commit count (harness.IoMeter)
        return endpoints


def _profiler(workdir: Path, name: str) -> list[str]:
    """``-m cProfile -o ...`` when ``BENCH_CPROFILE`` names a directory for the server's profile.

    The store writes it when it stops (SIGTERM ends ``serve`` normally); read it with
    ``python -m pstats``. cProfile slows the store, so its figures of that run are not results.
    """
    out = os.environ.get("BENCH_CPROFILE")
    if not out:
        return []
    Path(out).mkdir(parents=True, exist_ok=True)
    return ["-m", "cProfile", "-o", f"{out}/{name}-{workdir.parent.name}.prof"]


class NativeClient:
    """Pipelined submits on a DEALER; outcomes from ``JobClient.watch()`` in the reader thread."""

    def __init__(self, endpoints: Endpoints, client: str) -> None:
        self.endpoints = endpoints
        self.client = client
        self.path = f"/{endpoints['dsid']}/job/"
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoints["request"])
        self.in_flight = 0
        self.next_id = 0

    def submit(self, job: str, request: dict[str, Any]) -> None:
        while self.in_flight >= WINDOW:
            self._receive(REPLY_TIMEOUT_MS, must=True)
        self.next_id += 1
        body = {"job": job, "client": self.client, "request": request}
        self.sock.send(cbor.encode_request("POST", self.path, body, id=self.next_id))
        self.in_flight += 1
        self._receive(0)

    def aim(self, served: bool) -> None:
        self.path = f"/{self.endpoints['dsid'] if served else UNSERVED_DSID}/job/"

    def wait_until(self, moment: float) -> None:
        while (left := moment - time.monotonic()) >= 0.001:
            self._receive(int(left * 1000))
        # Sleep out the last fraction of a millisecond: spinning on poll(0) would hold the GIL
        # and delay the outcome reader thread.
        time.sleep(max(0.0, moment - time.monotonic()))

    def flush(self) -> None:
        while self.in_flight:
            self._receive(REPLY_TIMEOUT_MS, must=True)

    def _receive(self, timeout_ms: int, must: bool = False) -> None:
        """Take every submit reply that has arrived, waiting up to ``timeout_ms`` for the first."""
        if not self.sock.poll(timeout_ms):
            if must:
                raise RuntimeError(f"no submit reply within {timeout_ms} ms")
            return
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = cbor.decode_reply(frame)
            self.in_flight -= 1
            if reply.status >= 400:
                raise RuntimeError(f"submit answered {reply.status}: {reply.error}")

    def outcomes(self, ready: threading.Event) -> Outcomes:
        jc = JobClient(
            self.endpoints["request"],
            self.endpoints["dsid"],
            self.client,
            notify_endpoint=self.endpoints["notify"],
            timeout=30.0,
        )
        ready.set()
        for record in jc.watch():
            status = record["status"]
            if status in TERMINAL:
                yield record["job"], status == "complete"

    def close(self) -> None:
        self.sock.close()


def make_client(endpoints: Endpoints, client: str) -> NativeClient:
    return NativeClient(endpoints, client)


def drive(endpoints: Endpoints, stop: Any) -> None:
    """Take batches with a long-poll and pipeline their completes, until ``stop`` is set."""
    dsid = endpoints["dsid"]
    path = f"/server/{dsid}/job/status"
    with Driver(endpoints["request"], dsid, timeout=30.0) as driver:
        sock = driver.conn.socket
        sent = 0
        while not stop.is_set():
            jobs = driver.take(TAKE_MAX, lease=LEASE_MS, wait=TAKE_WAIT_MS)
            for job in jobs:
                sent += 1
                body = {"job": job["job"], "status": "complete", "response": RESPONSE}
                sock.send(cbor.encode_request("POST", path, body, id=f"c{sent}"))
            for _ in jobs:
                if not sock.poll(REPLY_TIMEOUT_MS):
                    raise RuntimeError("no reply to a complete")
                reply = cbor.decode_reply(sock.recv())
                if reply.status >= 400:
                    raise RuntimeError(f"complete answered {reply.status}: {reply.error}")
