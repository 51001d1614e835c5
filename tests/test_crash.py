"""Crash safety: the store is SIGKILLed at random moments under load and restarted on the same data.

The short form runs in `make test`; `pytest tests/test_crash.py --crash-rounds 500` runs longer.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jobstore.client import Driver, JobClient
from jobstore.errors import ClientError, RequestFailed
from jobstore.store.check import check


class Store:
    """A `jobstore serve` process that can be killed and restarted on the same directory."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.args = [
            sys.executable,
            "-m",
            "jobstore",
            "--log-level",
            "WARNING",
            "serve",
            "--data-dir",
            str(self.data),
        ]
        for name in ("request", "observe", "notify"):
            self.args += [f"--{name}-endpoint", f"ipc://{tmp}/{name}"]
        self.endpoint = f"ipc://{tmp}/request"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args)
        with JobClient(self.endpoint, "ds", "probe", timeout=0.2) as probe:
            for _ in range(100):
                try:
                    probe.page(limit=1)
                    return
                except ClientError:
                    assert self.proc.poll() is None, "the store exited during start-up"
        raise AssertionError("the store did not start within 20 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class Ledger:
    """What the store acknowledged, and what it was asked without answering."""

    def __init__(self) -> None:
        self.submitted: dict[str, int] = {}  # job -> request, acknowledged
        self.maybe_submitted: dict[str, int] = {}  # sent, never answered
        self.cancelled: set[str] = set()
        self.completed: dict[str, Any] = {}  # job -> response, acknowledged


def workload(
    store: Store, ledger: Ledger, stop: threading.Event, gate: threading.Lock, seed: int
) -> None:
    """Submit, cancel, take and complete until ``stop``, one round at a time under ``gate``."""
    rng = random.Random(seed)
    with (
        JobClient(store.endpoint, "ds", "c", timeout=0.3) as app,
        Driver(store.endpoint, "ds", timeout=0.3) as driver,
    ):
        for n in itertools.count(1):
            if stop.is_set():
                return
            with gate:
                one_round(app, driver, ledger, rng.random() < 0.25, f"job-{seed}-{n}", n)


def one_round(
    app: JobClient, driver: Driver, ledger: Ledger, cancel: bool, job: str, n: int
) -> None:
    try:
        app.submit(n, job=job)
        ledger.submitted[job] = n
    except ClientError:
        ledger.maybe_submitted[job] = n
        return
    try:
        if cancel:
            app.cancel(job)
            ledger.cancelled.add(job)
        # Leases outlast the test: an expiry would change jobs while verify lists them.
        for taken in driver.take(2, lease=3_600_000):
            driver.complete(taken["job"], {"double": taken["request"] * 2})
            ledger.completed[taken["job"]] = {"double": taken["request"] * 2}
    except RequestFailed as exc:
        assert exc.status == 409, exc  # a retried complete after a crash may find it done
    except ClientError:
        pass  # unanswered: the store was down; whatever it did is checked by verify


def verify(store: Store, ledger: Ledger) -> None:
    with Driver(store.endpoint, "ds", timeout=5) as reader:
        records = list(reader.jobs())
    ids = [r["job"] for r in records]
    assert len(ids) == len(set(ids)), "a job appears twice in the listing"
    by_id = {r["job"]: r for r in records}
    for job, request in ledger.submitted.items():
        assert job in by_id, f"acknowledged job {job} was lost"
        assert by_id[job]["request"] == request
    for job, request in ledger.maybe_submitted.items():
        if job in by_id:  # took full effect, or none
            assert by_id[job]["request"] == request
    for job in ledger.cancelled:
        record = by_id[job]
        assert (
            record["status"] == "cancelled"
            or record["cancel_requested"]
            or record["status"] == "complete"
        )
    for job, response in ledger.completed.items():
        assert by_id[job]["status"] == "complete" and by_id[job]["response"] == response
    seqs = [r["seq"] for r in records]
    assert len(seqs) == len(set(seqs))


def test_acknowledged_changes_survive_sigkill(tmp_path: Path, crash_rounds: int) -> None:
    store = Store(tmp_path)
    ledger = Ledger()
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    store.start()
    stop, gate = threading.Event(), threading.Lock()
    worker = threading.Thread(
        target=workload, args=(store, ledger, stop, gate, rng.randrange(1 << 30)), daemon=True
    )
    worker.start()
    try:
        for _ in range(crash_rounds):
            time.sleep(rng.uniform(0.05, 0.3))
            store.kill()
            assert check(store.data)[1] == []
            store.start()
            with gate:  # the workload pauses: a listing is a snapshot only while nothing changes
                verify(store, ledger)
    finally:
        stop.set()
        worker.join(10)
        if store.proc and store.proc.poll() is None:
            store.kill()
    assert len(ledger.submitted) > crash_rounds, "the workload hardly ran"
    assert ledger.completed, "no job was completed"
