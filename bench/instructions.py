"""Count the instructions a job costs the store and the client library, under callgrind.

Unlike the timed benchmark, instruction counts do not move with the machine's load, so two
source trees can be compared on a busy machine. Two measurements, each a difference between
a run of ``--jobs`` A and B jobs (start-up and shutdown cancel out), divided by B - A:

- ``store``: ``jobstore serve``'s real loop (a :class:`Server` on ipc://, serving in the
  main thread) runs under callgrind; an unmeasured load process sends each window of
  ``--window`` submits, one take of that many jobs and their completes as raw CBOR frames
  (the same bytes for every tree) and reads the sealed notifications of the client's topic.
- ``client``: the client library runs under callgrind against an unmeasured store: a
  ``JobClient`` submits, a ``Driver`` takes and completes, and a ``Watch`` reads the
  changes, one window at a time.

Usage: ``.venv/bin/python bench/instructions.py [--src DIR] [--side store|client]
[--jobs 200,600] [--window 1] [--home]``; ``--home``: each window's take is sent first
and parked (it waits up to 200 ms, as the bench driver's does), then the submits wake it.
``--cprofile`` runs the store under cProfile instead and prints its call counts per job
(also deterministic), to see which functions a change adds.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
DSID = "ds"
CLIENT = "app1"
TIMEOUT_MS = 60_000
HOME_WAIT_MS = 200  # --home: the bench driver's long-poll
HOME_PARK_S = 0.05  # --home: time for the store (under callgrind) to park the take


def serve(data: Path, sockets: Path) -> None:
    """Serve on ipc:// in this process until SIGTERM; ``sockets/ready`` says it is bound."""
    try:  # the layout by layer
        from jobstore.store.operations import Service
        from jobstore.store.server import Server, ServerConfig
        from jobstore.store.storage import Storage
    except ImportError:  # the flat layout before it (commit a3b2bea and older)
        from jobstore.server import Server, ServerConfig  # type: ignore[no-redef]
        from jobstore.service import Service  # type: ignore[no-redef]
        from jobstore.storage import Storage  # type: ignore[no-redef]
    config = ServerConfig(
        request_endpoint=f"ipc://{sockets}/req",
        observe_endpoint=f"ipc://{sockets}/obs",
        notify_endpoint=f"ipc://{sockets}/not",
    )
    server = Server(Service(Storage(data), None, None), config)
    server.install_signal_handlers()
    (sockets / "ready").touch()
    server.serve()


def store_load(sockets: Path, jobs: int, window: int, wait: bool = False) -> None:
    """Submit, take and complete ``jobs`` jobs a window at a time as raw frames; with ``wait``,
    each window's take is sent first and waits for the submits, as a home driver's does."""
    import zmq

    from jobstore.protocol import cbor

    ctx: zmq.Context[Any] = zmq.Context()
    req = ctx.socket(zmq.DEALER)
    req.linger = 0
    req.connect(f"ipc://{sockets}/req")
    ids = iter(range(1, 1 << 62))

    def send(frames: list[tuple[str, str, Any]]) -> list[int]:
        sent = []
        for method, path, body in frames:
            rid = next(ids)
            req.send(cbor.encode_request(method, path, body, id=rid))
            sent.append(rid)
        return sent

    def receive(count: int) -> dict[int, Any]:
        bodies = {}
        for _ in range(count):
            if not req.poll(TIMEOUT_MS):
                raise RuntimeError("the store did not reply")
            reply = cbor.decode_reply(req.recv())
            if reply.status >= 400:
                raise RuntimeError(f"{reply.status}: {reply.error}")
            bodies[reply.id] = reply.body
        return bodies

    def calls(frames: list[tuple[str, str, Any]]) -> list[Any]:
        sent = send(frames)
        bodies = receive(len(sent))
        return [bodies[rid] for rid in sent]

    info = calls([("POST", f"/sub/{DSID}/job", {"client": CLIENT})])[0]
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, info["topic"].encode())
    sub.connect(f"ipc://{sockets}/not")
    time.sleep(0.5)  # the subscription reaches the XPUB (unmeasured side: a sleep is harmless)
    base = f"/server/{DSID}/job"
    done = 0
    while done < jobs:
        n = min(window, jobs - done)
        submits = [
            ("POST", f"/{DSID}/job/", {"job": f"j{done + i}", "client": CLIENT, "request": i})
            for i in range(n)
        ]
        take = (
            "POST",
            f"{base}/take",
            {"max": n, "wait": HOME_WAIT_MS if wait else 0, "lease": 60_000},
        )
        if wait:  # as at home load: the take is parked, then the submits wake it
            [rid] = send([take])
            time.sleep(HOME_PARK_S)
            taken = receive(len(send(submits)) + 1)[rid]["jobs"]
        else:
            calls(submits)
            taken = calls([take])[0]["jobs"]
        if len(taken) != n:
            raise RuntimeError(f"took {len(taken)} jobs of {n}")
        done_body = {"status": "complete", "response": {"ok": True}}
        calls([("POST", f"{base}/status", {"job": j["job"], **done_body}) for j in taken])
        for _ in range(3 * n):  # queued, running, complete
            if not sub.poll(TIMEOUT_MS):
                raise RuntimeError("a notification did not arrive")
            sub.recv_multipart()
        done += n
    ctx.destroy(linger=0)


def client_load(sockets: Path, jobs: int, window: int) -> None:
    """The client library's share: submit, take, complete and watch ``jobs`` jobs."""
    from jobstore.client import Driver, JobClient

    request, notify = f"ipc://{sockets}/req", f"ipc://{sockets}/not"
    client = JobClient(request, DSID, CLIENT, notify_endpoint=notify, timeout=60.0)
    driver = Driver(request, DSID, timeout=60.0)
    watch = iter(client.watch(idle=3600.0, timeout=60.0))
    done = 0
    while done < jobs:
        n = min(window, jobs - done)
        for i in range(n):
            client.submit(i, job=f"j{done + i}")
        taken = driver.take(n, lease=60_000)
        for job in taken:
            driver.complete(job["job"], {"ok": True})
        waiting = {job["job"] for job in taken}
        while waiting:  # a catch-up may skip a job's earlier states, so count outcomes
            record = next(watch)
            if record["status"] == "complete":
                waiting.discard(record["job"])
        done += n
    client.close()
    driver.close()


def spawn(
    role: str, src: Path, work: Path, *extra: str, tool: list[str]
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [*tool, sys.executable, str(HERE), role, str(work), *extra]
    return subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)


def wait_ready(sockets: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while not (sockets / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"the store did not start:\n{err}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}:\n{err.decode()}")


def callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]


def total(out: Path) -> int:
    """Instructions (Ir) of every thread of the process, from the callgrind output."""
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


def measure(
    side: str, src: Path, jobs: int, window: int, profile: Path | None = None, home: bool = False
) -> int:
    """Instructions of one run of ``jobs`` jobs on ``side`` (0 with ``profile``: cProfile)."""
    with tempfile.TemporaryDirectory(prefix="jobstore-ir-") as tmp:
        work = Path(tmp)
        out = work / "callgrind.out"
        measured = side == "store" and profile is None
        extra = [str(profile)] if profile is not None else []
        server = spawn("serve", src, work, *extra, tool=callgrind(out) if measured else [])
        wait_ready(work, server)
        tool = callgrind(out) if side == "client" else []
        load = spawn(f"{side}-load", src, work, str(jobs), str(window), str(home), tool=tool)
        _, err = load.communicate(timeout=3600)
        stop(server)
        if load.returncode:
            raise RuntimeError(f"the load failed:\n{err.decode()}")
        return 0 if profile is not None else total(out)


def call_counts(src: Path, jobs: tuple[int, int], window: int, home: bool) -> None:
    """Print the store's Python calls per job (difference of two cProfile runs), most first."""
    counts = []
    with tempfile.TemporaryDirectory(prefix="jobstore-prof-") as tmp:
        for n in jobs:
            prof = Path(tmp) / f"{n}.prof"
            measure("store", src, n, window, prof, home)
            stats: Any = pstats.Stats(str(prof)).stats
            counts.append({f"{k[0].split('src/')[-1]}:{k[2]}": v[1] for k, v in stats.items()})
    per_job = {
        name: (counts[1].get(name, 0) - counts[0].get(name, 0)) / (jobs[1] - jobs[0])
        for name in counts[1]
    }
    print(f"calls per job: {sum(per_job.values()):.1f}")
    for name, calls in sorted(per_job.items(), key=lambda kv: -kv[1]):
        if calls:
            print(f"{calls:8.2f}  {name}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "store-load", "client-load"):
        role, work = sys.argv[1], Path(sys.argv[2])
        if role == "serve":
            (work / "data").mkdir(exist_ok=True)
            if len(sys.argv) > 3:
                cProfile.runctx(
                    "serve(d, s)", globals(), {"d": work / "data", "s": work}, sys.argv[3]
                )
            else:
                serve(work / "data", work)
        else:
            if role == "store-load":
                store_load(work, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "True")
            else:
                client_load(work, int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ dir to measure")
    p.add_argument("--side", choices=("store", "client"), default="store")
    p.add_argument("--jobs", default="200,600", help="two job counts, A,B (B > A)")
    p.add_argument("--window", type=int, default=1, help="jobs per window (submits in flight)")
    p.add_argument("--cprofile", action="store_true", help="store's calls per job, not Ir")
    p.add_argument(
        "--home",
        action="store_true",
        help="store: each take waits (parked), then a submit wakes it",
    )
    args = p.parse_args()
    a, b = (int(n) for n in args.jobs.split(","))
    src = args.src.resolve()
    if args.cprofile:
        call_counts(src, (a, b), args.window, args.home)
        return
    small = measure(args.side, src, a, args.window, home=args.home)
    large = measure(args.side, src, b, args.window, home=args.home)
    mode = " home" if args.home else ""
    print(
        f"{args.side} {src} window {args.window}{mode}: {(large - small) / (b - a):,.0f} Ir per job "
        f"({a} jobs: {small:,}; {b}: {large:,})"
    )


if __name__ == "__main__":
    main()
