"""beanstalkd with the greenstalk client, durable (``-b DIR -f 0``) or in memory.

The client puts each job on the ``jobs`` tube; the driver reserves it, puts the
result on the client's own reply tube, then deletes the job. The client learns
an outcome when it reserves the result from its reply tube (then deletes it).
With ``-f 0`` beanstalkd fsyncs its binlog before answering each put and delete.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import greenstalk
from harness import RESPONSE, Endpoints, Outcomes, free_port, spawn_server, wait_for_port

from systems import System

JOBS_TUBE = "jobs"
UNSERVED_TUBE = "unserved"  # no driver watches it: for the submit-only phase
TTR = 60


class BeanstalkServer(System):
    name = "beanstalkd-durable"
    module = "systems.beanstalk"

    def __init__(self, durable: bool = True) -> None:
        super().__init__()
        self.durable = durable
        if not durable:
            self.name = "beanstalkd-memory"

    def start(self, workdir: Path) -> Endpoints:
        port = free_port()
        argv = ["beanstalkd", "-l", "127.0.0.1", "-p", str(port)]
        if self.durable:
            binlog = workdir / "binlog"
            binlog.mkdir(parents=True, exist_ok=True)
            argv += ["-b", str(binlog), "-f", "0"]
        proc = spawn_server(argv, workdir / "server.log")
        self.procs.append(proc)
        wait_for_port(port, proc)
        return {"port": port}


class BeanstalkClient:
    """Puts on ``jobs``; reserves outcomes from ``reply.<client>`` in the reader thread."""

    def __init__(self, endpoints: Endpoints, client: str) -> None:
        self.address = ("127.0.0.1", endpoints["port"])
        self.reply_tube = f"reply.{client}"
        self.conn: greenstalk.Client[str] = greenstalk.Client(self.address, use=JOBS_TUBE)

    def submit(self, job: str, request: dict[str, Any]) -> None:
        self.conn.put(
            json.dumps({"job": job, "reply": self.reply_tube, "request": request}), ttr=TTR
        )

    def aim(self, served: bool) -> None:
        self.conn.use(JOBS_TUBE if served else UNSERVED_TUBE)

    def wait_until(self, moment: float) -> None:
        time.sleep(max(0.0, moment - time.monotonic()))

    def flush(self) -> None:
        return

    def outcomes(self, ready: threading.Event) -> Outcomes:
        with greenstalk.Client(self.address, watch=self.reply_tube) as conn:
            ready.set()
            while True:
                try:
                    reply = conn.reserve(timeout=1)
                except greenstalk.TimedOutError:
                    continue
                body = json.loads(reply.body)
                yield body["job"], body["status"] == "complete"
                conn.delete(reply)

    def close(self) -> None:
        self.conn.close()


def make_client(endpoints: Endpoints, client: str) -> BeanstalkClient:
    return BeanstalkClient(endpoints, client)


def drive(endpoints: Endpoints, stop: Any) -> None:
    """Reserve, put the result on the job's reply tube, delete the job; until ``stop`` is set."""
    with greenstalk.Client(("127.0.0.1", endpoints["port"]), watch=JOBS_TUBE) as conn:
        using = ""
        while not stop.is_set():
            try:
                job = conn.reserve(timeout=1)
            except greenstalk.TimedOutError:
                continue
            body = json.loads(job.body)
            if body["reply"] != using:
                using = body["reply"]
                conn.use(using)
            conn.put(json.dumps({"job": body["job"], "status": "complete", "response": RESPONSE}))
            conn.delete(job)
