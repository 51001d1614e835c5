"""What every system's benchmark shares: processes, ports, the client's clock and the phases.

The parent (``run.py``) starts each server with :func:`spawn_server`, then one
driver process and one client process (multiprocessing, spawn) per system and
run. All times are taken in the client process with ``time.monotonic()``: a
job's latency is from the moment it was *meant* to be submitted (its slot in
the open-loop schedule, or its actual send in the throughput phase) to the
moment the client learned its final status, so a backlog shows in the figures
instead of slowing the offered load (no coordinated omission).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

Endpoints = dict[str, Any]
Outcomes = Iterator[tuple[str, bool]]

WARMUP_JOBS = 3
WARMUP_TRIES = 40
READY_TIMEOUT = 15.0


@dataclass(frozen=True)
class Phase:
    """One measured stretch: ``jobs`` jobs, as fast as possible (``rate`` None) or at ``rate``/s."""

    name: str
    jobs: int
    rate: float | None = None
    deadline: float = 120.0  # seconds for the whole phase, submits and outcomes
    served: bool = True  # False: submit to a queue no driver serves, and measure submits only
    # Home load: one job at a time (submit, wait for its outcome, sleep ``pause`` seconds),
    # with random GUID job ids as Databox clients send. None: the batch phases above.
    pause: float | None = None


@dataclass
class PhaseResult:
    """What the client measured in one phase."""

    phase: str
    jobs: int
    rate: float | None
    done: int = 0
    failed: int = 0
    submit_s: float = 0.0  # first submit sent -> last submit acknowledged
    e2e_s: float = 0.0  # first submit sent -> last outcome known to the client
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in the phase
    io: dict[str, float] = field(default_factory=dict)  # what was written in the phase (IoMeter)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """The figures of one phase, as written to the JSON lines."""
        out: dict[str, Any] = {
            "phase": self.phase,
            "jobs": self.jobs,
            "offered_rate": self.rate,
            "done": self.done,
            "failed": self.failed,
            "submit_jobs_s": _rate(self.jobs, self.submit_s),
            "e2e_jobs_s": _rate(self.done, self.e2e_s) if self.done == self.jobs else None,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
            "max_ms": max(self.latencies_ms) if self.latencies_ms else None,
            "cpu_ms_per_job": {
                name: round(1000 * seconds / self.jobs, 4) for name, seconds in self.cpu_s.items()
            },
            **io_figures(self.io, self.jobs),
        }
        if self.error:
            out["error"] = self.error
        return out


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile (no interpolation), rounded to 0.01 ms."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return round(ordered[int(rank) - 1], 2)


def make_request(i: int) -> dict[str, Any]:
    """A job request of about 100 bytes of JSON, like a small Databox actuation."""
    return {
        "action": "set",
        "device": "living-room/thermostat",
        "target": 20.5,
        "unit": "celsius",
        "seq": i,
        "pad": "x" * 8,
    }


RESPONSE = {"ok": True, "value": 20.5}


# Ports, servers and processes


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Return once ``port`` accepts connections; raise if ``proc`` died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode} at start")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g} s: {proc.args!r}")


def spawn_server(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in its own session with output to ``log``; stop it with :func:`stop_pid`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def stop_pid(pid: int, wait: Callable[[float], bool], grace: float = 5.0) -> None:
    """SIGTERM ``pid``, then SIGKILL it if ``wait(seconds)`` does not report it gone in time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not wait(grace):
            os.kill(pid, signal.SIGKILL)
            wait(grace)


def stop_popen(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a server started by :func:`spawn_server` by its PID."""
    if proc is None or proc.poll() is not None:
        return

    def gone(seconds: float) -> bool:
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    stop_pid(proc.pid, gone)


def stop_process(proc: mp.process.BaseProcess | None) -> None:
    """Stop a multiprocessing child by its PID."""
    if proc is None or proc.pid is None or not proc.is_alive():
        return

    def gone(seconds: float) -> bool:
        proc.join(seconds)
        return not proc.is_alive()

    stop_pid(proc.pid, gone)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile (mapped file pages) of ``pid`` in kB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used (its threads included), from /proc/PID/stat."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def syscall_written(pid: int | None) -> int | None:
    """Bytes ``pid`` passed to write-type system calls (``wchar`` of /proc/PID/io), all threads.

    Not ``write_bytes``: on kernels with large page-cache folios that counts the whole folio
    a small write dirties (a 4 kB page plus fdatasync on an 11 MB file reads as about 2 MB).
    ``wchar`` counts write, pwrite and writev calls on any file, sockets and eventfds
    included, but not send/sendmsg (which ZeroMQ uses for TCP).
    """
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "wchar":
                return int(value)
    except OSError:
        pass
    return None


def block_device(path: Path) -> str | None:
    """The /proc/diskstats name of the block device holding ``path`` (e.g. ``vda``, ``sda2``).

    Found by the device number of ``path`` (its major:minor appears in /proc/diskstats for
    disks, partitions and device-mapper volumes); None when the filesystem has no single
    block device (tmpfs, overlay, btrfs), and then no device figure is reported.
    """
    try:
        dev = path.resolve().stat().st_dev
        for line in Path("/proc/diskstats").read_text().splitlines():
            parts = line.split()
            if (int(parts[0]), int(parts[1])) == (os.major(dev), os.minor(dev)):
                return parts[2]
    except (OSError, ValueError, IndexError):
        pass
    return None


def device_written(device: str | None) -> int | None:
    """Bytes written to ``device`` since boot, machine-wide: sectors written (the 10th column
    of /proc/diskstats, always in 512-byte units) times 512."""
    if device is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/diskstats").read_text().splitlines():
            parts = line.split()
            if parts[2] == device:
                return int(parts[9]) * 512
    return None


def device_idle_rate(device: str | None, seconds: float) -> float | None:
    """Bytes/s written to ``device`` while this benchmark runs nothing: the machine's own
    background (other processes, writeback), to judge the device figures against."""
    first = device_written(device)
    time.sleep(seconds)
    last = device_written(device)
    if first is None or last is None:
        return None
    return round((last - first) / seconds, 1)


JOURNAL_HEADER = struct.Struct(">4sIQ16s")  # jobstore's journal record: magic, length, number, MAC


def lmdb_commits(data_dir: str | None) -> tuple[int, int] | None:
    """(last committed LMDB transaction id, last journaled batch number) of the jobstore data in
    ``data_dir``: differences count LMDB commits (checkpoints) and batches journaled.

    LMDB is read by a read-only, lock-free open (no reader slot, nothing written). The batch
    number is the one the last checkpoint holds (meta key ``journal``) or, past it, the last of
    the records numbered on from the journal's start (jobstore.store.journal; MACs unchecked).
    """
    if data_dir is None:
        return None
    import lmdb  # only the jobstore systems need it

    try:
        env = lmdb.open(data_dir, readonly=True, lock=False, max_dbs=4)
    except lmdb.Error:
        return None
    try:
        txnid = int(env.info()["last_txnid"])
        try:
            with env.begin() as txn:
                stored = txn.get(b"journal", db=env.open_db(b"hot", txn=txn, create=False))
        except lmdb.Error:  # older data: no journal
            stored = None
    finally:
        env.close()
    batch = int.from_bytes(stored, "big") if stored else 0
    try:
        data = Path(data_dir, "journal").read_bytes()
    except OSError:
        return txnid, batch
    pos = 0
    while pos + JOURNAL_HEADER.size <= len(data):
        magic, length, number, _ = JOURNAL_HEADER.unpack_from(data, pos)
        if magic != b"jsJ1" or number != batch + 1:
            break
        batch, pos = number, pos + JOURNAL_HEADER.size + length
    return txnid, batch


class IoMeter:
    """What was written between two moments: bytes to the data's block device (machine-wide),
    bytes the server passed to write calls, and LMDB commits (jobstore only)."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.device: str | None = endpoints.get("device")
        self.pid: int | None = endpoints.get("server_pid")
        self.data_dir: str | None = endpoints.get("data_dir")
        self.started = time.monotonic()
        self.first = self._now()

    def _now(self) -> tuple[int | None, int | None, tuple[int, int] | None]:
        return (
            device_written(self.device),
            syscall_written(self.pid),
            lmdb_commits(self.data_dir),
        )

    def used(self) -> dict[str, float]:
        device, wchar, txn = self._now()
        out: dict[str, float] = {"seconds": round(time.monotonic() - self.started, 3)}
        if device is not None and self.first[0] is not None:
            out["device_bytes"] = device - self.first[0]
        if wchar is not None and self.first[1] is not None:
            out["server_wchar"] = wchar - self.first[1]
        if txn is not None and self.first[2] is not None:
            out["commits"] = txn[0] - self.first[2][0]
            out["journaled"] = txn[1] - self.first[2][1]
        return out


def io_figures(io: dict[str, float], jobs: int) -> dict[str, float | None]:
    """Per-job write figures of one phase (see bench/README.md for what each one counts)."""

    def per_job_kb(key: str) -> float | None:
        return round(io[key] / 1024 / jobs, 2) if key in io and jobs else None

    def per_job(count: float | None) -> float | None:
        return round(count / jobs, 3) if count is not None and jobs else None

    commits, journaled = io.get("commits"), io.get("journaled")
    flushes = None if commits is None or journaled is None else 2 * commits + journaled
    return {
        "io_seconds": io.get("seconds"),
        "device_kb_per_job": per_job_kb("device_bytes"),
        "wchar_kb_per_job": per_job_kb("server_wchar"),
        "commits_per_job": per_job(commits),
        "journaled_per_job": per_job(journaled),
        "flushes_per_job": per_job(flushes),
    }


class CpuMeter:
    """CPU seconds used by the server, the driver and this (client) process between two moments."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.pids = {"server": endpoints.get("server_pid"), "driver": endpoints.get("driver_pid")}
        self.start = self._now()

    def _now(self) -> dict[str, float | None]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        return now

    def used(self) -> dict[str, float]:
        end = self._now()
        out = {}
        for name, first in self.start.items():
            last = end[name]
            if first is not None and last is not None:
                out[name] = round(last - first, 3)
        return out


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), e.g. ext4 or tmpfs."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    return kind


# The client process


class ClientSide(Protocol):
    """How one system's client submits jobs and learns their outcomes.

    ``submit`` and ``wait_until`` run in the client's main thread; ``outcomes``
    runs in a thread of its own and must open its own connections.
    """

    def submit(self, job: str, request: dict[str, Any]) -> None: ...

    def wait_until(self, moment: float) -> None: ...

    def flush(self) -> None: ...

    def aim(self, served: bool) -> None:
        """Send the next submits to the queue the driver serves, or to one nobody serves."""

    def outcomes(self, ready: threading.Event) -> Outcomes: ...

    def close(self) -> None: ...


class Board:
    """Outcomes as they arrive: job id -> (monotonic time known, succeeded)."""

    def __init__(self) -> None:
        self.done: dict[str, tuple[float, bool]] = {}
        self.ready = threading.Event()
        self.error: str | None = None
        self._cond = threading.Condition()
        self._waiting: set[str] = set()

    def consume(self, outcomes: Callable[[threading.Event], Outcomes]) -> None:
        try:
            for job, ok in outcomes(self.ready):
                known = time.monotonic()
                with self._cond:
                    if job not in self.done:
                        self.done[job] = (known, ok)
                        self._waiting.discard(job)
                        if not self._waiting:
                            self._cond.notify_all()
        except Exception as exc:  # reported with the results; the phase then times out
            self.error = f"outcome reader failed: {type(exc).__name__}: {exc}"
            with self._cond:
                self._cond.notify_all()

    def expect(self, jobs: Sequence[str]) -> None:
        with self._cond:
            self._waiting = {job for job in jobs if job not in self.done}

    def wait(self, deadline: float) -> bool:
        """Wait until every expected job has an outcome; False if ``deadline`` passed first."""
        with self._cond:
            while self._waiting and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return not self._waiting


def client_main(
    module: str,
    endpoints: Endpoints,
    phases: Sequence[Phase],
    results: mp.Queue[Any],
) -> None:
    """The client process: warm up, run each phase, put the list of PhaseResult on ``results``."""
    out: list[PhaseResult] = []
    side: ClientSide | None = None
    try:
        make: Callable[[Endpoints, str], ClientSide] = import_module(module).make_client
        side = make(endpoints, f"bench-{uuid.uuid4().hex[:8]}")
        board = Board()
        reader = threading.Thread(target=board.consume, args=(side.outcomes,), daemon=True)
        reader.start()
        if not board.ready.wait(READY_TIMEOUT):
            raise RuntimeError(board.error or "the outcome reader did not get ready")
        _warm_up(side, board)
        for phase in phases:
            io = IoMeter(endpoints)
            meter = CpuMeter(endpoints)
            result = _run_phase(side, board, phase)
            result.cpu_s = meter.used()
            result.io = io.used()
            out.append(result)
    except Exception as exc:
        out.append(PhaseResult("error", 0, None, error=f"{type(exc).__name__}: {exc}"))
    finally:
        results.put([asdict(r) for r in out])
        if side is not None:
            with contextlib.suppress(Exception):
                side.close()


def _warm_up(side: ClientSide, board: Board) -> None:
    """Submit single jobs until a few outcomes in a row arrive: connections and subscriptions are live."""
    seen = 0
    for attempt in range(WARMUP_TRIES):
        job = f"warm-{uuid.uuid4().hex}"
        board.expect([job])
        side.submit(job, make_request(attempt))
        side.flush()
        seen = seen + 1 if board.wait(time.monotonic() + 1.0) else 0
        if seen == WARMUP_JOBS:
            return
    raise RuntimeError(board.error or f"no {WARMUP_JOBS} outcomes in a row in warm-up")


def _run_one_at_a_time(side: ClientSide, board: Board, phase: Phase) -> PhaseResult:
    """Home load: submit one job (a uuid4 id), wait for its outcome, sleep ``phase.pause``.

    Latency is from the submit being sent to the outcome being known to the client.
    """
    assert phase.pause is not None
    result = PhaseResult(phase.name, phase.jobs, phase.rate)
    first = time.monotonic()
    deadline = first + phase.deadline
    last = first
    for i in range(phase.jobs):
        job = str(uuid.uuid4())
        board.expect([job])
        sent = time.monotonic()
        side.submit(job, make_request(i))
        side.flush()
        if not board.wait(deadline):
            result.error = board.error or f"job {i + 1} of {phase.jobs} had no outcome in time"
            break
        known, ok = board.done[job]
        result.done += 1
        result.failed += not ok
        result.latencies_ms.append(round((known - sent) * 1000, 3))
        last = known
        time.sleep(phase.pause)
    result.e2e_s = last - first
    return result


def _run_phase(side: ClientSide, board: Board, phase: Phase) -> PhaseResult:
    if phase.pause is not None:
        return _run_one_at_a_time(side, board, phase)
    tag = uuid.uuid4().hex[:8]
    jobs = [f"{phase.name}-{tag}-{i}" for i in range(phase.jobs)]
    requests = [make_request(i) for i in range(phase.jobs)]
    result = PhaseResult(phase.name, phase.jobs, phase.rate)
    if not phase.served:
        side.aim(False)
        try:
            start = time.monotonic()
            for job, request in zip(jobs, requests, strict=True):
                side.submit(job, request)
            side.flush()
            result.submit_s = time.monotonic() - start
        finally:
            side.aim(True)
        return result
    board.expect(jobs)
    meant: list[float] = []
    start = time.monotonic() + 0.01
    deadline = start + phase.deadline
    for i, job in enumerate(jobs):
        if phase.rate:
            slot = start + i / phase.rate
            side.wait_until(slot)
            meant.append(slot)
        else:
            meant.append(time.monotonic())
        side.submit(job, requests[i])
        if time.monotonic() > deadline:
            result.error = f"submitted only {i + 1} of {phase.jobs} jobs before the deadline"
            break
    side.flush()
    acked = time.monotonic()
    first = meant[0]
    result.submit_s = acked - first
    if not board.wait(deadline):
        result.error = (
            result.error or board.error or "not every outcome arrived before the deadline"
        )
    last = first
    for job, slot in zip(jobs, meant, strict=False):
        found = board.done.get(job)
        if found is None:
            continue
        known, ok = found
        result.done += 1
        result.failed += not ok
        last = max(last, known)
        result.latencies_ms.append(round((known - slot) * 1000, 3))
    result.e2e_s = last - first
    return result


def driver_main(module: str, endpoints: Endpoints, stop: Any) -> None:
    """The driver process: run the system's driver loop until ``stop`` (an mp.Event) is set."""
    import_module(module).drive(endpoints, stop)


# Running one system's client and driver against its started server


def run_workload(
    module: str, endpoints: Endpoints, phases: Sequence[Phase], timeout: float
) -> list[dict[str, Any]]:
    """Start driver and client processes, wait for the client's results, stop both by PID."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    results: mp.Queue[Any] = ctx.Queue()
    driver = ctx.Process(target=driver_main, args=(module, endpoints, stop), daemon=True)
    client: mp.process.BaseProcess | None = None
    try:
        driver.start()
        endpoints = {**endpoints, "driver_pid": driver.pid}
        client = ctx.Process(
            target=client_main, args=(module, endpoints, phases, results), daemon=True
        )
        client.start()
        try:
            phase_results: list[dict[str, Any]] = results.get(timeout=timeout)
        except Exception:
            phase_results = [asdict(PhaseResult("error", 0, None, error="client gave no results"))]
        client.join(5)
        return phase_results
    finally:
        stop.set()
        if driver.pid is not None:
            driver.join(3)
        stop_process(client)
        stop_process(driver)
        results.close()


def log_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path``."""
    with path.open("a") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
