"""RQ on Redis with ``appendonly yes`` and ``appendfsync always``; a SimpleWorker (no fork per job).

The client enqueues with ``Queue.enqueue``. It learns outcomes from RQ's own
result streams (``rq:results:<job id>``, what ``Job.latest_result(timeout=...)``
blocks on): the reader thread XREADs, blocking, over the streams of the oldest
jobs still pending, so it hears of each result as soon as the worker has
committed it, without a poll per job.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from harness import Endpoints, Outcomes, free_port, spawn_server, wait_for_port
from redis import Redis
from rq import Queue, SimpleWorker
from rq.results import Result

from systems import System, rq_tasks

QUEUE = "bench"
UNSERVED_QUEUE = "unserved"  # no worker listens to it: for the submit-only phase
XREAD_STREAMS = 32  # the worker finishes jobs in order: the oldest few are enough
XREAD_BLOCK_MS = 200
SUCCESSFUL = str(Result.Type.SUCCESSFUL.value).encode()


class RedisServer(System):
    name = "rq-redis-durable"
    module = "systems.rq_redis"
    jobs_scale = 0.25  # about 100 jobs/s end to end: a quarter of the jobs keeps the run short

    def start(self, workdir: Path) -> Endpoints:
        port = free_port()
        data = workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        argv += ["--daemonize", "no", "--protected-mode", "no"]
        proc = spawn_server(argv, workdir / "server.log")
        self.procs.append(proc)
        wait_for_port(port, proc)
        return {"port": port}


class RQClient:
    """``Queue.enqueue`` per job; results by blocking XREAD on RQ's result streams."""

    def __init__(self, endpoints: Endpoints, client: str) -> None:
        self.port = endpoints["port"]
        redis = Redis(port=self.port)
        self.served = Queue(QUEUE, connection=redis)
        self.unserved = Queue(UNSERVED_QUEUE, connection=redis)
        self.queue = self.served
        self.submitted: queue.SimpleQueue[str] = queue.SimpleQueue()

    def submit(self, job: str, request: dict[str, Any]) -> None:
        self.queue.enqueue(rq_tasks.perform, json.dumps(request), job_id=job, result_ttl=3600)
        if self.queue is self.served:
            self.submitted.put(job)

    def aim(self, served: bool) -> None:
        self.queue = self.served if served else self.unserved

    def wait_until(self, moment: float) -> None:
        time.sleep(max(0.0, moment - time.monotonic()))

    def flush(self) -> None:
        return

    def outcomes(self, ready: threading.Event) -> Outcomes:
        redis = Redis(port=self.port)
        pending: collections.OrderedDict[str, None] = collections.OrderedDict()
        ready.set()
        while True:
            if not pending:
                try:
                    pending[self.submitted.get(timeout=1.0)] = None
                except queue.Empty:
                    continue
            while not self.submitted.empty():
                pending[self.submitted.get()] = None
            oldest = [job for job, _ in zip(pending, range(XREAD_STREAMS), strict=False)]
            streams = {Result.get_key(job): "0-0" for job in oldest}
            for key, entries in redis.xread(streams, block=XREAD_BLOCK_MS) or []:
                job = key.decode().rsplit(":", 1)[1]
                _id, fields = entries[-1]
                pending.pop(job, None)
                yield job, fields[b"type"] == SUCCESSFUL

    def close(self) -> None:
        self.queue.connection.close()


def make_client(endpoints: Endpoints, client: str) -> RQClient:
    return RQClient(endpoints, client)


def drive(endpoints: Endpoints, stop: Any) -> None:
    """A SimpleWorker on the queue; ``stop`` turns into the SIGTERM that RQ shuts down on."""
    redis = Redis(port=endpoints["port"])
    worker = SimpleWorker([Queue(QUEUE, connection=redis)], connection=redis)
    worker.log_job_description = False

    def on_stop() -> None:
        stop.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=on_stop, daemon=True).start()
    worker.work(logging_level="WARNING")
