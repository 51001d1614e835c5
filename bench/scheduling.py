#!/usr/bin/env python3
"""Scheduling benchmark: what a take costs with a deep queue across many clients, and how late
delayed jobs reach a waiting driver.

    .venv/bin/python bench/scheduling.py                    # both phases, results printed
    .venv/bin/python bench/scheduling.py --quick            # smaller, about a minute
    .venv/bin/python bench/scheduling.py --take-only --src /tmp/old/src   # an older tree's take

``make bench`` (bench/run.py) runs it after the other systems and puts its figures in the same
run's results.md.

**Take cost.** The store's service runs in this process, without sockets, on a data directory
under bench/.work/: ``--queued`` jobs (default 100,000) are submitted by 1 client (a plain FIFO
queue) or spread over ``--clients`` clients (default 100), then ``--takes`` single takes (default
5,000) are run in batches of 100 requests, one commit per batch, as the serve loop batches a busy
driver's takes. The decoded-record cache is made large enough for the whole queue, so that its
clearing (when full) does not swamp the take itself. Reported: microseconds per take, median
of ``--rounds`` rounds. The same is measured on the FIFO take that came before scheduling
(``--baseline``, a commit unpacked with ``git archive`` under bench/.work/), its rounds
alternating with this tree's so that both see the same machine; the figure to read is the
ratio, fair take over FIFO take with 100 clients (target: at most 1.5). ``--src`` measures
another source tree instead of this one.

**Lateness.** ``jobstore serve`` runs as a subprocess on ipc:// sockets; ``--delayed`` jobs (default
10,000) are submitted in batches with ``not_before`` spread over ``--spread`` seconds (default 20)
starting 2 s later, and one driver long-polls ``take`` (max 100). Each job's lateness is the wall time it reached the
driver minus its ``not_before``; p50, p99 and max are reported. Both clocks are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
FIFO = "f06b5cd"  # the last commit before scheduling: today's FIFO take


def _take_cost(args: argparse.Namespace, clients: int) -> float:
    from jobstore.protocol import Request
    from jobstore.store.operations import Limits, Service
    from jobstore.store.storage import Storage

    WORK.mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(dir=WORK, prefix="sched-take-"))
    try:
        limits = Limits(max_active_per_client=args.queued, max_active_per_datasource=args.queued)
        # A decoded-record cache that holds the whole queue: its clearing when full would
        # otherwise dominate (and records differ in size between versions).
        storage = Storage(data, map_size=1 << 31, cache_bytes=1 << 30)
        service = Service(storage, limits=limits)
        now = int(time.time() * 1000)
        for start in range(0, args.queued, 1000):
            batch = [
                Request(
                    "POST",
                    "/bench/job/",
                    body={"job": f"j{n}", "client": f"c{n % clients}", "request": {"n": n}},
                )
                for n in range(start, min(start + 1000, args.queued))
            ]
            service.handle_batch(batch, now)
        take = Request("POST", "/server/bench/job/take", body={})
        taken = 0
        started = time.perf_counter()
        while taken < args.takes:
            _, outcomes = service.handle_batch([take] * 100, now)
            taken += sum(len(o.reply.body["jobs"]) for o in outcomes if o.reply is not None)
        elapsed = time.perf_counter() - started
        service.storage.close()
        return elapsed / taken * 1e6
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _baseline(rev: str) -> Path | None:
    """The src/ of commit ``rev``, unpacked under bench/.work/ (None without git or the commit)."""
    where = WORK / f"baseline-{rev}"
    if not (where / "src").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", rev, "src"], capture_output=True, check=False
        )
        if archive.returncode != 0:
            print(f"take: no FIFO baseline ({archive.stderr.decode().strip()})")
            shutil.rmtree(where, ignore_errors=True)
            return None
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where / "src"


def _take_in(src: Path, args: argparse.Namespace, clients: int) -> float:
    """One round of :func:`_take_cost` on the tree ``src``, in a process of its own."""
    argv = [sys.executable, __file__, "--take-round", str(clients), "--src", str(src)]
    argv += ["--queued", str(args.queued), "--takes", str(args.takes)]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def take_phase(args: argparse.Namespace) -> dict[str, Any]:
    trees = {"fair": args.src or HERE.parent / "src"}
    fifo = None if args.baseline == "none" else _baseline(args.baseline)
    if fifo is not None:
        trees["fifo"] = fifo
    out: dict[str, Any] = {"queued": args.queued, "clients": args.clients}
    for clients in (1, args.clients):
        rounds: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):  # alternating, so that both trees see the same machine
            for name, src in trees.items():
                rounds[name].append(_take_in(src, args, clients))
        for name, found in rounds.items():
            out[f"{name}_{clients}_us"] = round(statistics.median(found), 1)
            print(
                f"take ({name}): {args.queued} queued, {clients} client(s): {out[f'{name}_{clients}_us']} us"
            )
    if fifo is not None:
        many = f"fair_{args.clients}_us"
        out["ratio"] = round(out[many] / out[f"fifo_{args.clients}_us"], 2)
        out["ratio_fifo_1"] = round(out[many] / out["fifo_1_us"], 2)
        print(
            f"take: fair over FIFO with {args.clients} clients {out['ratio']}x (target <= 1.5), "
            f"over FIFO with 1 client {out['ratio_fifo_1']}x"
        )
    return out


def lateness_phase(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    from jobstore.client import Driver, JobClient

    WORK.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=WORK, prefix="sched-late-"))
    sockets = {name: f"ipc://{root}/{name}" for name in ("request", "observe", "notify")}
    argv = [sys.executable, "-m", "jobstore", "--log-level", "WARNING", "serve"]
    argv += ["--data-dir", str(root / "data")]
    for name, endpoint in sockets.items():
        argv += [f"--{name}-endpoint", endpoint]
    env = {**os.environ, "PYTHONPATH": str(Path(__import__("jobstore").__file__).parents[1])}
    server = subprocess.Popen(argv, env=env)
    try:
        app = JobClient(sockets["request"], "late", "bench", timeout=30)
        driver = Driver(sockets["request"], "late", timeout=30)
        for _ in range(100):  # the store is up once it answers
            try:
                app.status("none")
            except Exception as exc:  # 404 once it answers; ZeroMQ queues the request meanwhile
                if getattr(exc, "status", None) == 404:
                    break
        start = int(time.time() * 1000) + 2000  # time to submit them all first
        step = args.spread * 1000 / args.delayed
        due = {f"d{n}": start + int(n * step) for n in range(args.delayed)}
        items = [{"job": job, "request": 0, "not_before": at} for job, at in due.items()]
        for first in range(0, len(items), 1000):  # 1000 to a batch, each one commit
            app.submit_batch(items[first : first + 1000])
        if time.time() * 1000 > start:
            print("lateness: the submits took longer than 2 s; the first jobs are late already")
        late: list[float] = []
        while len(late) < args.delayed:
            for record in driver.take(100, wait=5000, lease=600_000):
                late.append(time.time() * 1000 - due[record["job"]])
        app.close()
        driver.close()
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(root, ignore_errors=True)
        zmq.Context.instance().term()
    late.sort()
    result = {
        "delayed": args.delayed,
        "lateness_p50_ms": round(late[len(late) // 2], 1),
        "lateness_p99_ms": round(late[int(len(late) * 0.99)], 1),
        "lateness_max_ms": round(late[-1], 1),
        "early": sum(1 for x in late if x < 0),
    }
    print(
        f"lateness of {args.delayed} delayed jobs: p50 {result['lateness_p50_ms']} ms, "
        f"p99 {result['lateness_p99_ms']} ms, max {result['lateness_max_ms']} ms, "
        f"{result['early']} handed early"
    )
    return result


def table(found: dict[str, Any]) -> list[str]:
    """Markdown for bench/run.py's results.md: the figures :func:`main` wrote with ``--json``."""
    out = ["", "## Scheduling (bench/scheduling.py)", ""]
    if "error" in found:
        return [*out, found["error"]]
    take, late = found.get("take", {}), found.get("lateness", {})
    if take:
        n, queued = take["clients"], take["queued"]
        out += [
            f"Take cost, us per take with {queued:,} jobs queued (median of the rounds, FIFO and "
            "fair rounds alternating):",
            "",
            f"| take | 1 client | {n} clients |",
            "|---|---|---|",
        ]
        for name, label in (("fifo", "FIFO, before scheduling"), ("fair", "fair take order")):
            if f"{name}_1_us" in take:
                out.append(f"| {label} | {take[f'{name}_1_us']} | {take[f'{name}_{n}_us']} |")
        if "ratio" in take:
            out += [
                "",
                f"Fair over FIFO with {n} clients: **{take['ratio']}x** (target <= 1.5); over "
                f"FIFO with 1 client: {take['ratio_fifo_1']}x.",
            ]
    if late:
        out += [
            "",
            f"Lateness of {late['delayed']:,} delayed jobs handed to a waiting driver: p50 "
            f"**{late['lateness_p50_ms']} ms**, p99 **{late['lateness_p99_ms']} ms** (target <= "
            f"50), max {late['lateness_max_ms']} ms; {late['early']} handed early.",
        ]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queued", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--takes", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--delayed", type=int, default=10_000)
    p.add_argument("--spread", type=float, default=20.0, help="seconds the due times span")
    p.add_argument("--take-only", action="store_true")
    p.add_argument("--lateness-only", action="store_true")
    p.add_argument("--src", type=Path, help="the source tree to measure (default: this one)")
    p.add_argument("--baseline", default=FIFO, help="commit of the FIFO take to compare, or none")
    p.add_argument("--quick", action="store_true", help="20,000 queued, 2,000 delayed, 1 round")
    p.add_argument("--json", type=Path, help="also append the figures to this JSON lines file")
    p.add_argument("--take-round", type=int, help=argparse.SUPPRESS)  # clients: one round
    args = p.parse_args()
    if args.quick:
        args.queued, args.takes, args.rounds = 20_000, 2000, 1
        args.delayed, args.spread = 2000, 5.0
    if args.take_round:
        sys.path.insert(0, str(args.src.resolve()))
        print(_take_cost(args, args.take_round))
        return 0
    found: dict[str, Any] = {"kind": "scheduling"}
    if not args.lateness_only:
        found["take"] = take_phase(args)
    if not args.take_only:
        sys.path.insert(0, str((args.src or HERE.parent / "src").resolve()))
        found["lateness"] = lateness_phase(args)
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(found) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
