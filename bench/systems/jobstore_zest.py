"""jobstore over Zest, the way Databox clients talk: a REQ socket, one submit at a time.

Outcomes arrive by Zest observe: a GET with the observe option on
``/<DSID>/job/<client>`` answers a UUID, and a DEALER with that identity on the
observe socket receives one push per change. The driver is the native one (a
Databox driver may well use the native protocol; the client side is what
differs).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import zmq
from harness import Endpoints, Outcomes

from jobstore.protocol import zest
from systems import jobstore_native
from systems.jobstore_native import TERMINAL, UNSERVED_DSID, JobstoreServer

REPLY_TIMEOUT_MS = 30_000


class ZestServer(JobstoreServer):
    name = "jobstore-zest"
    module = "systems.jobstore_zest"
    jobs_scale = 0.5  # one request at a time: under 1000 jobs/s


class ZestClient:
    """REQ submits (JSON payload, content format 50); outcomes by Zest observe."""

    def __init__(self, endpoints: Endpoints, client: str) -> None:
        self.endpoints = endpoints
        self.client = client
        self.path = f"/{endpoints['dsid']}/job/"
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.req = self._req()

    def _req(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.connect(self.endpoints["request"])
        return sock

    def submit(self, job: str, request: dict[str, Any]) -> None:
        body = json.dumps({"job": job, "client": self.client, "request": request}).encode()
        self.req.send(zest.encode_request("POST", self.path, body=body))
        reply = _answer(self.req)
        if reply.code != zest.CREATED:
            raise RuntimeError(f"Zest submit answered code {reply.code}: {reply.payload!r:.200}")

    def aim(self, served: bool) -> None:
        self.path = f"/{self.endpoints['dsid'] if served else UNSERVED_DSID}/job/"

    def wait_until(self, moment: float) -> None:
        time.sleep(max(0.0, moment - time.monotonic()))

    def flush(self) -> None:
        return

    def outcomes(self, ready: threading.Event) -> Outcomes:
        path = f"/{self.endpoints['dsid']}/job/{self.client}"
        req = self._req()
        req.send(zest.encode_request("GET", path, observe="data"))
        reply = _answer(req)
        req.close()
        if reply.code != zest.CONTENT:
            raise RuntimeError(f"Zest observe answered code {reply.code}: {reply.payload!r:.200}")
        dealer: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.identity = reply.payload
        dealer.connect(self.endpoints["observe"])
        ready.set()
        try:
            while True:
                if not dealer.poll(1000):
                    continue
                push = zest.decode_reply(dealer.recv())
                if push.code != zest.CONTENT:
                    raise RuntimeError(f"observation ended with code {push.code}")
                _ms, _path, _fmt, text = push.payload.split(b" ", 3)
                record = json.loads(text)
                status = record["status"]
                if status in TERMINAL:
                    yield record["job"], status == "complete"
        finally:
            dealer.close()

    def close(self) -> None:
        self.req.close()


def _answer(sock: zmq.Socket[bytes]) -> zest.ZestReply:
    if not sock.poll(REPLY_TIMEOUT_MS):
        raise RuntimeError(f"no Zest reply within {REPLY_TIMEOUT_MS} ms")
    return zest.decode_reply(sock.recv())


def make_client(endpoints: Endpoints, client: str) -> ZestClient:
    return ZestClient(endpoints, client)


drive = jobstore_native.drive
