"""``jobstore serve`` and ``check`` as processes: the data-directory lock, a truncated data file,
fsync per acknowledged change (under strace) and the memory the decoded-record cache may hold."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstore.client import Driver, JobClient
from jobstore.errors import ConfigError, RequestFailed
from jobstore.protocol import Request
from jobstore.store.datadir import LOCK_FILE, check_data_file
from jobstore.store.operations import Service
from jobstore.store.storage import Storage

JOBSTORE = [sys.executable, "-m", "jobstore"]


class Served:
    """A ``jobstore serve`` process on ipc endpoints under ``sockets``."""

    def __init__(
        self, data: Path, sockets: Path, *extra: str, prefix: tuple[str, ...] = ()
    ) -> None:
        sockets.mkdir(exist_ok=True)
        self.endpoints = {
            name: f"ipc://{sockets}/{name}" for name in ("request", "observe", "notify")
        }
        flags = [f"--{name}-endpoint={endpoint}" for name, endpoint in self.endpoints.items()]
        command = [*prefix, *JOBSTORE, "serve", "--data-dir", str(data), *flags, *extra]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []

    def wait_until_serving(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "protections:" in line:
                return
        raise AssertionError("the store exited before serving:\n" + "".join(self.lines))

    def stop(self, pid: int | None = None) -> None:
        os.kill(pid or self.proc.pid, signal.SIGTERM)
        assert self.proc.wait(30) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for process in started:
        process.kill()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBSTORE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_second_store_on_the_same_directory_refuses_to_start_naming_the_first(
    tmp_path: Path, served: list[Served]
) -> None:
    first = Served(tmp_path / "data", tmp_path / "one")
    served.append(first)
    first.wait_until_serving()
    second = Served(tmp_path / "data", tmp_path / "two")
    served.append(second)
    assert second.proc.wait(60) == 2
    assert second.proc.stderr is not None
    error = second.proc.stderr.read()
    assert "another jobstore is serving" in error
    assert f"pid {first.proc.pid}" in error and first.endpoints["request"] in error
    # check and backup still work beside the running store
    assert run("check", str(tmp_path / "data")).returncode == 0
    assert run("backup", str(tmp_path / "data"), str(tmp_path / "copy")).returncode == 0
    with JobClient(first.endpoints["request"], "ds", "app") as app:
        assert app.submit(1, job="j1")["status"] == "submitted"
    first.stop()
    third = Served(tmp_path / "data", tmp_path / "three")
    served.append(third)
    third.wait_until_serving()  # the lock went with the first store
    third.stop()


def _truncated_store(data: Path) -> None:
    storage = Storage(data)
    service = Service(storage)
    for i in range(50):
        body = {"job": f"j{i}", "client": "c", "request": "x" * 3000}
        service.handle(Request("POST", "/ds/job/", body=body), 1000 + i)
    storage.close()
    os.truncate(data / "data.mdb", 3 * 4096)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_truncated_data_file_is_refused_with_advice_not_a_crash(
    tmp_path: Path, command: str
) -> None:
    _truncated_store(tmp_path / "data")
    if command == "check":
        done = run("check", str(tmp_path / "data"))
    else:
        endpoint = f"ipc://{tmp_path}/req"
        done = run("serve", "--data-dir", str(tmp_path / "data"), "--request-endpoint", endpoint)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "is truncated" in done.stderr and "jobstore backup" in done.stderr


def test_the_data_file_check_agrees_with_lmdb(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    service = Service(storage)
    for i in range(30):
        service.handle(Request("POST", "/ds/job/", body={"job": f"j{i}", "client": "c"}), 1000 + i)
    info, psize = storage.env.info(), storage.env.stat()["psize"]
    storage.close()
    size = (tmp_path / "data" / "data.mdb").stat().st_size
    assert size >= (info["last_pgno"] + 1) * psize
    check_data_file(tmp_path / "data")  # a sound file passes
    os.truncate(tmp_path / "data" / "data.mdb", info["last_pgno"] * psize)  # one page short
    with pytest.raises(ConfigError, match="is truncated"):
        check_data_file(tmp_path / "data")


SYNC_CALL = re.compile(r"^\d+\s+(\d+\.\d+)\s+(fdatasync|fsync|msync)\(")


def test_every_acknowledged_submit_reached_the_disk(tmp_path: Path, served: list[Served]) -> None:
    trace = tmp_path / "trace"
    strace = ("strace", "-f", "-qq", "-ttt", "-e", "trace=fdatasync,fsync,msync", "-o", str(trace))
    store = Served(tmp_path / "data", tmp_path / "s", prefix=strace)
    served.append(store)
    store.wait_until_serving()
    submits = 10
    with JobClient(store.endpoints["request"], "ds", "app", timeout=30) as app:
        with pytest.raises(RequestFailed, match="404"):
            app.status("nothing")  # the store answers: it is serving
        ready = time.time()
        for i in range(submits):
            app.submit(i, job=f"j{i}")  # one at a time: each reply before the next submit
    pid = int((tmp_path / "data" / LOCK_FILE).read_text().split()[1].rstrip(","))
    store.stop(pid)  # the store itself, not strace: strace exits with it and flushes its trace
    syncs = [m for m in map(SYNC_CALL.match, trace.read_text().splitlines()) if m]
    after = [m for m in syncs if float(m.group(1)) >= ready]
    assert len(after) >= submits, f"{len(after)} sync calls for {submits} acknowledged submits"


def rss_anon(pid: int) -> int:
    """Anonymous resident memory of a process in bytes (the LMDB map is file-backed: not counted)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc status")


def test_large_progress_reports_do_not_pin_memory(tmp_path: Path, served: list[Served]) -> None:
    store = Served(tmp_path / "data", tmp_path / "s", "--record-cache", str(1 << 20))
    served.append(store)
    store.wait_until_serving()
    request = store.endpoints["request"]
    with (
        JobClient(request, "ds", "app", timeout=30) as app,
        Driver(request, "ds", timeout=30) as driver,
    ):
        app.submit("work", job="j1")
        assert driver.take(lease=600_000)
        driver.progress("j1", "warm-up " + "x" * 300_000)
        before = rss_anon(store.proc.pid)
        # Old behaviour: every distinct record kept decoded, 4096 of them, whatever their size.
        for i in range(100):
            driver.progress("j1", f"{i} " + "x" * 300_000)
        for i in range(1000):
            driver.progress("j1", f"{i} " + "y" * 12_000)
        grown = rss_anon(store.proc.pid) - before
    assert grown < 32 << 20, f"the store grew by {grown >> 20} MiB"
    store.stop()
