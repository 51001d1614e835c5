"""Drivers that outlive their store's restarts, a worker that cannot run its handler, and Ctrl-C.

The restart test runs ``jobstore serve`` as a process, stops it and starts it again on
the same endpoints and data directory under the CLI's ``work`` (tests/outage.py). Both
flavours' ``Driver.run`` across a restart is in tests/_async/test_driver_outage.py, a
handler's SetupError in tests/_async/test_driver_run.py.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobstore import aio
from jobstore.client import JobClient, JobContext
from jobstore.client.decisions import Outage
from jobstore.errors import Timeout

from .conftest import RunningStore
from .outage import LIMIT, Store, jobstore_env, restart_under, told_once, wait_for

COMMAND = [sys.executable, "-m", "jobstore"]
EXAMPLES = Path(__file__).parent.parent / "examples"


# The backoff and the outage lines, without sleeping


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_doubles_from_a_tenth_of_a_second_to_five_seconds() -> None:
    outage = Outage(clock=FakeClock(), jitter=lambda: 1.0)
    waits = [outage.failed(Timeout("no reply"))[0] for _ in range(9)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


def test_jitter_takes_each_wait_down_to_half_at_most() -> None:
    draws = iter([0.0, 0.5])
    outage = Outage(clock=FakeClock(), jitter=lambda: next(draws))
    assert outage.failed(Timeout("no reply"))[0] == pytest.approx(0.05)
    assert outage.failed(Timeout("no reply"))[0] == pytest.approx(0.15)


def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends() -> None:
    clock = FakeClock()
    outage = Outage(clock=clock, jitter=lambda: 1.0)
    assert outage.answered() is None  # no outage, nothing to say
    first = outage.failed(Timeout("no reply to POST /x within 5 s"))[1]
    assert first is not None and "does not answer (no reply to POST /x within 5 s)" in first
    clock.now += 3.25
    assert outage.failed(Timeout("no reply"))[1] is None
    assert outage.down
    assert outage.answered() == "the store answers again, after 3.2 s"
    assert not outage.down and outage.answered() is None
    # The next outage starts from the shortest wait again.
    assert outage.failed(Timeout("no reply"))[0] == 0.1


# Restarts


def test_work_carries_on_across_a_restart_of_the_store(served_store: Store) -> None:
    argv = ["work", "ds", "--exec", "cat", "--endpoint", served_store.endpoint, "--timeout", "1"]
    worker = subprocess.Popen(
        [*COMMAND, *argv], stderr=subprocess.PIPE, text=True, env=jobstore_env()
    )
    lines: list[str] = []
    noticed = threading.Event()

    def read_stderr() -> None:
        assert worker.stderr is not None
        for line in worker.stderr:
            lines.append(line)
            if "the store does not answer" in line:
                noticed.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:

        def finished(job: str) -> None:
            record = wait_for(served_store.endpoint, job, ("complete", "failed"))
            assert record["status"] == "complete", record
            assert worker.poll() is None, "the worker exited"

        restart_under(served_store, finished, noticed)
        assert wait_for(served_store.endpoint, "after", ("complete",))["response"] == "two"
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(LIMIT)
        reader.join(LIMIT)
    assert "Traceback" not in "".join(lines), lines
    told_once(lines)


# A worker that cannot run its handler


def test_work_with_a_command_that_is_not_there_hands_the_job_back_and_stops(
    served_store: Store,
) -> None:
    for n in range(3):
        served_store.submit(n, f"job-{n}")
    result = subprocess.run(
        [
            *COMMAND,
            "work",
            "ds",
            "--exec",
            "pyhton3-nosuch handler.py",
            "--endpoint",
            served_store.endpoint,
            "--log-level",
            "warning",
        ],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        env=jobstore_env(),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobstore: --exec 'pyhton3-nosuch handler.py' cannot run: ")
    assert "exit status 127, not found" in lines[0] and "fix the command" in lines[0]
    with JobClient(served_store.endpoint, "ds", "app1") as app:
        statuses = sorted(app.status(f"job-{n}")["status"] for n in range(3))
    assert statuses == ["retrying", "submitted", "submitted"]


# Ctrl-C


def interrupted(
    argv: list[str], store: RunningStore, started: Callable[[], bool]
) -> tuple[int, list[str]]:
    """Run ``argv``, submit a job, SIGINT the process once ``started`` says the job's handler
    runs; the exit status and the stderr lines other than the start-up one."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=jobstore_env())
    try:
        with store.client() as app:
            app.submit({"samples": 100_000}, job="long")
        deadline = time.monotonic() + LIMIT
        while not started():
            assert proc.poll() is None, "the driver exited before the job started"
            assert time.monotonic() < deadline, "the job's handler never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(LIMIT)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if "working on ds" not in line]
    return code, lines


def test_ctrl_c_of_work_hands_the_running_job_back_in_one_line(
    store: RunningStore, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    handler = f"echo $$ > {started}; exec sleep 600"
    code, lines = interrupted(
        [*COMMAND, "work", "ds", "--exec", handler, "--endpoint", store.endpoint],
        store,
        lambda: started.exists() and started.read_text().strip() != "",
    )
    assert code == 130
    assert len(lines) == 1 and "interrupted: job long handed back" in lines[0], lines
    with store.client() as app:
        assert app.status("long")["status"] == "retrying"
    # The command was stopped with the worker, not left running.
    pid = int(started.read_text())
    deadline = time.monotonic() + LIMIT
    while _running(pid):
        assert time.monotonic() < deadline, f"the job's command (pid {pid}) is still running"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("example", ["driver.py", "aio_pair.py"])
def test_ctrl_c_of_the_example_driver_hands_the_job_back_in_one_line(
    store: RunningStore, example: str
) -> None:
    argv = [sys.executable, str(EXAMPLES / example), "ds", "--endpoint", store.endpoint]
    if example == "aio_pair.py":
        argv += ["--role", "driver"]

    def reading() -> bool:
        with store.client() as app:
            return "progress" in app.status("long")

    code, lines = interrupted(argv, store, reading)
    assert code == 130
    assert len(lines) == 1 and "job long handed back" in lines[0], lines
    with store.client() as app:
        assert app.status("long")["status"] == "retrying"


# asyncio only: a task's cancel (the sync driver's Ctrl-C is tested above).
def test_a_cancelled_asyncio_driver_hands_the_job_back(store: RunningStore) -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def handler(ctx: JobContext) -> Any:
            started.set()
            await asyncio.Event().wait()  # until cancelled

        async with aio.Driver(store.endpoint, "ds") as driver:
            run = asyncio.create_task(driver.run(handler))
            await asyncio.wait_for(started.wait(), LIMIT)
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run

    with store.client() as app:
        app.submit(1, job="long")
        asyncio.run(main())
        assert app.status("long")["status"] == "retrying"
