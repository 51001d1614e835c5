"""jobstore's benchmark: jobstore (native and Zest) against beanstalkd and RQ, plus two ceilings.

    .venv/bin/python bench/run.py            # full: 3 runs, under ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # smoke: 1 run, about a minute
    .venv/bin/python bench/run.py --million  # also jobstore with 1,000,000 jobs stored
    .venv/bin/python bench/run.py --profile  # also py-spy the store under the native workload
    .venv/bin/python bench/run.py --home     # only the home-load phase (one job at a time)

Writes bench/results/runs.jsonl (one JSON line per system and run), results.md and
chart.png. See bench/README.md for the workload and how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SNAPSHOT = HERE / ".work" / f"src-{os.getpid()}"


def snapshot_source() -> None:
    """Run every process of this benchmark on one copy of src/, even if the tree changes meanwhile.

    ``--src DIR`` (read here, before argparse, because it decides what is imported)
    benchmarks another tree, e.g. an older commit from ``git archive``.
    """
    src = ROOT / "src"
    if "--src" in sys.argv[:-1]:
        src = Path(sys.argv[sys.argv.index("--src") + 1]).resolve()
    shutil.copytree(
        src / "jobstore",
        SNAPSHOT / "jobstore",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    sys.path[:0] = [str(SNAPSHOT)]


if __name__ == "__main__":  # spawned children inherit sys.path, snapshot included
    snapshot_source()
sys.path[:0] = [str(HERE)]

import harness  # noqa: E402
import hotspots  # noqa: E402
import report  # noqa: E402
from harness import Phase, log_line, memory_kb, run_workload  # noqa: E402
from systems import System, ceilings  # noqa: E402
from systems.beanstalk import BeanstalkServer  # noqa: E402
from systems.jobstore_native import DSID, JobstoreServer  # noqa: E402
from systems.jobstore_zest import ZestServer  # noqa: E402
from systems.rq_redis import RedisServer  # noqa: E402

MILLION = 1_000_000
MILLION_MAP_SIZE = 8 << 30
HOME_MAP_SIZE = 1 << 30
IDLE_WINDOW_S = 3.0  # the machine's background writes are sampled this long before each home run


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short run (about a minute)")
    p.add_argument("--runs", type=int, help="runs of every system (default 3; 1 with --quick)")
    p.add_argument(
        "--jobs",
        type=int,
        help="jobs in the throughput phase (default 6000; RQ a quarter, Zest half)",
    )
    p.add_argument("--open-100", type=float, help="seconds at 100 jobs/s (default 10)")
    p.add_argument("--open-500", type=float, help="seconds at 500 jobs/s (default 4)")
    p.add_argument("--million", action="store_true", help="also run jobstore on 1,000,000 jobs")
    p.add_argument("--stored", type=int, default=MILLION, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="also py-spy the store (native workload)")
    p.add_argument(
        "--systems",
        help="comma-separated subset, e.g. jobstore-native,beanstalkd-durable (scheduling: "
        "bench/scheduling.py)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    p.add_argument(
        "--data-root", type=Path, default=HERE / ".work", help="data directories (real disk)"
    )
    p.add_argument("--keep-data", action="store_true", help="leave the data directories behind")
    p.add_argument("--src", type=Path, help="benchmark the jobstore package under this src/ dir")
    p.add_argument(
        "--home", action="store_true", help="only the home-load phase (one job at a time)"
    )
    p.add_argument("--no-home", action="store_true", help="skip the home-load phase")
    p.add_argument(
        "--no-scheduling",
        action="store_true",
        help="skip bench/scheduling.py (take cost, lateness)",
    )
    p.add_argument("--home-jobs", type=int, help="jobs per home-load phase (default 1000)")
    p.add_argument("--home-pause", type=float, default=0.02, help="seconds between home-load jobs")
    p.add_argument(
        "--home-stored",
        type=int,
        default=50_000,
        help="finished jobs (uuid4 ids) in the store before the home-load phase",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.home_jobs = args.home_jobs or (150 if quick else 1000)
    args.runs = args.runs or (1 if quick else 3)
    args.jobs = args.jobs or (1000 if quick else 6000)
    args.open_100 = args.open_100 or (3.0 if quick else 10.0)
    args.open_500 = args.open_500 or (2.0 if quick else 4.0)
    args.ceiling_requests = 3000 if quick else 20000
    return args


def all_systems() -> list[System]:
    return [
        JobstoreServer(),
        ZestServer(),
        BeanstalkServer(durable=True),
        BeanstalkServer(durable=False),
        RedisServer(),
    ]


def phases(args: argparse.Namespace, scale: float = 1.0) -> list[Phase]:
    jobs = max(1, int(args.jobs * scale))
    return [
        Phase("throughput", jobs, None, deadline=180.0),
        Phase("open-100", int(100 * args.open_100), 100.0, deadline=args.open_100 + 60),
        Phase("open-500", int(500 * args.open_500), 500.0, deadline=args.open_500 + 60),
        Phase("submit-only", jobs, None, deadline=120.0, served=False),
    ]


def home_phase(args: argparse.Namespace) -> Phase:
    deadline = args.home_jobs * (args.home_pause + 0.5) + 60
    return Phase("home", args.home_jobs, None, deadline=deadline, pause=args.home_pause)


def home_systems() -> list[System]:
    """The systems of the home-load comparison; jobstore's start on a copy of a prefilled store."""
    out: list[System] = [JobstoreServer(), ZestServer(), BeanstalkServer(durable=True)]
    for system in out:
        system.name = f"home-{system.name}"
    return out


def measure(
    system: System,
    workdir: Path,
    args: argparse.Namespace,
    run: int,
    out: Path,
    work: list[Phase] | None = None,
    idle_window: float = 0.0,
) -> dict[str, Any]:
    """Start ``system``, run the workload against it, stop it; log and return the line.

    ``work`` defaults to the batch phases. With ``idle_window``, the device's background
    write rate is sampled that long first, with nothing of the benchmark running.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    line: dict[str, Any] = {"kind": "result", "run": run, "system": system.name}
    device = harness.block_device(workdir)
    try:
        if idle_window:
            os.sync()  # flush what others left dirty now, not during the phase
            line["device_idle_bytes_s"] = harness.device_idle_rate(device, idle_window)
        endpoints = system.start(workdir)
        endpoints["server_pid"] = system.pid
        endpoints["device"] = device
        work = work or phases(args, system.jobs_scale)
        results = run_workload(system.module, endpoints, work, timeout=600.0)
        line["phases"] = {r["phase"]: harness_summary(r) for r in results}
        if system.pid is not None:
            line["server_memory_kb"] = memory_kb(system.pid)
    except Exception as exc:
        line["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        system.stop()
    line["durable"] = system.durable
    line["seconds"] = round(time.monotonic() - started, 1)
    log_line(out, line)
    print(brief(line), flush=True)
    return line


def harness_summary(result: dict[str, Any]) -> dict[str, Any]:
    phase = harness.PhaseResult(**result)
    return phase.summary()


def brief(line: dict[str, Any]) -> str:
    name = f"run {line['run']} {line['system']:<22}"
    if "req_s" in line:
        return f"{name} {line['req_s']:>9.0f} req/s"
    if "error" in line:
        return f"{name} ERROR {line['error']}"
    parts = []
    for phase, figures in line.get("phases", {}).items():
        if "error" in figures:
            parts.append(f"{phase}: {figures['error']}")
        elif phase == "throughput":
            parts.append(f"submit {figures['submit_jobs_s']}/s e2e {figures['e2e_jobs_s']}/s")
        elif phase == "submit-only":
            parts.append(f"submit-only {figures['submit_jobs_s']}/s")
        elif phase == "home":
            cpu = figures["cpu_ms_per_job"].get("server")
            parts.append(
                f"home p50 {figures['p50_ms']} p99 {figures['p99_ms']} ms, server CPU {cpu} "
                f"ms/job, device {figures['device_kb_per_job']} kB/job, "
                f"flushes/job {figures['flushes_per_job']}"
            )
        else:
            parts.append(f"{phase} p50 {figures['p50_ms']} p99 {figures['p99_ms']} ms")
    rss = line.get("server_memory_kb", {}).get("VmHWM")
    if rss:
        parts.append(f"peak RSS {rss // 1024} MB")
    return f"{name} " + "; ".join(parts)


def meta(args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cpu = "?"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    digest = hashlib.sha256()
    for path in sorted((SNAPSHOT / "jobstore").rglob("*.py")):
        digest.update(path.read_bytes())
    return {
        "kind": "meta",
        "src_sha256": digest.hexdigest()[:12],
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + ("+dirty src" if dirty else ""),
        "src": str(args.src) if args.src else "src/ of this checkout",
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "data_fs": harness.filesystem_type(args.data_root),
        "runs": args.runs,
        "jobs": args.jobs,
        "open_100_seconds": args.open_100,
        "open_500_seconds": args.open_500,
        "million": args.million,
        "home_jobs": None if args.no_home else args.home_jobs,
        "home_pause_s": args.home_pause,
        "home_stored": args.home_stored,
        "device": harness.block_device(args.data_root),
        "loadavg": round(os.getloadavg()[0], 2),
    }


def check_tools(systems: Sequence[System]) -> None:
    needed = {"beanstalkd": "beanstalkd", "redis-server": "rq-redis"}
    for tool, prefix in needed.items():
        if any(s.name.startswith(prefix) for s in systems) and shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed; run: bash bench/setup.sh")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    systems = [] if args.home else all_systems()
    homes = [] if args.no_home else home_systems()
    if args.systems:
        wanted = set(args.systems.split(","))
        systems = [s for s in systems if s.name in wanted]
        homes = [s for s in homes if s.name in wanted or s.name.removeprefix("home-") in wanted]
    check_tools([*systems, *homes])
    args.data_root.mkdir(parents=True, exist_ok=True)
    fs = harness.filesystem_type(args.data_root)
    if fs in ("tmpfs", "ramfs"):
        raise SystemExit(f"bench: {args.data_root} is on {fs}; pass --data-root on a real disk")
    args.out.mkdir(parents=True, exist_ok=True)
    lines = args.out / "runs.jsonl"
    lines.unlink(missing_ok=True)
    log_line(lines, meta(args))
    session = args.data_root / f"bench-{os.getpid()}"
    started = time.monotonic()
    try:
        stored = None
        if args.million or homes:
            # Imported only when needed: it writes through the store's own modules, whose paths
            # older trees (--src) do not have, and the batch phases do not need it.
            from systems.prefill import prefill
        if args.million:
            stored = session / "stored"
            print(f"pre-filling a store with {args.stored:,} finished jobs ...", flush=True)
            took = prefill(stored / "data", DSID, args.stored, MILLION_MAP_SIZE)
            size = sum(f.stat().st_size for f in (stored / "data").iterdir())
            print(f"  {took:.0f} s, data file {size / 2**20:.0f} MiB", flush=True)
        template = session / "home-stored"
        if homes:
            print(f"pre-filling a store with {args.home_stored:,} finished jobs ...", flush=True)
            prefill(template, DSID, args.home_stored, HOME_MAP_SIZE, guid_ids=True)
        for run in range(1, args.runs + 1):
            if systems:
                for kind, name in (
                    ("echo", "ceiling-echo"),
                    ("group-commit", "ceiling-group-commit"),
                ):
                    found = ceilings.measure(kind, args.ceiling_requests, session / f"run{run}")
                    line = {"kind": "result", "run": run, "system": name, **found}
                    log_line(lines, line)
                    print(brief(line), flush=True)
            order = systems[run % len(systems) :] + systems[: run % len(systems)] if systems else []
            for system in order:
                measure(system, session / f"run{run}" / system.name, args, run, lines)
            if stored is not None:
                big = JobstoreServer(stored / "data", MILLION_MAP_SIZE)
                big.name = "jobstore-native-1M"
                measure(big, stored / f"run{run}", args, run, lines)
            if homes:
                home_run(homes, template, session / f"run{run}", args, run, lines)
        if args.profile:
            profile(args, session / "profile")
        if not (args.home or args.no_scheduling) and (
            not args.systems or "scheduling" in args.systems.split(",")
        ):
            scheduling(args, lines)
    finally:
        if not args.keep_data:
            shutil.rmtree(session, ignore_errors=True)
    end = {"kind": "end", "seconds": round(time.monotonic() - started), "loadavg": 0.0}
    end["loadavg"] = round(os.getloadavg()[0], 2)
    log_line(lines, end)
    text = report.write(lines, args.out)
    print(f"\n{text}\nresults in {args.out} after {time.monotonic() - started:.0f} s")
    return 0


def home_run(
    homes: list[System],
    template: Path,
    workdir: Path,
    args: argparse.Namespace,
    run: int,
    out: Path,
) -> None:
    """One home-load phase per system, in an order that rotates with ``run``; each jobstore
    starts on its own copy of the prefilled store, synced to disk before the idle window."""
    order = homes[run % len(homes) :] + homes[: run % len(homes)]
    for system in order:
        where = workdir / system.name
        if isinstance(system, JobstoreServer):
            system.data_dir = where / "data"
            shutil.copytree(template, system.data_dir)
        measure(system, where, args, run, out, [home_phase(args)], idle_window=IDLE_WINDOW_S)


def scheduling(args: argparse.Namespace, lines: Path) -> None:
    """bench/scheduling.py on this run's copy of the tree: take cost against the FIFO take that
    came before scheduling, and the lateness of delayed jobs; its line joins ``lines``."""
    print("scheduling: take cost and delayed-job lateness ...", flush=True)
    argv = [sys.executable, str(HERE / "scheduling.py"), "--src", str(SNAPSHOT)]
    argv += ["--json", str(lines)] + (["--quick"] if args.quick else [])
    if subprocess.run(argv, check=False).returncode != 0:
        log_line(lines, {"kind": "scheduling", "error": "bench/scheduling.py failed (see above)"})


def profile(args: argparse.Namespace, workdir: Path) -> None:
    """py-spy the store while the native client and driver run a throughput phase."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = JobstoreServer()
    raw = workdir / "profile.txt"
    try:
        endpoints = server.start(workdir)
        endpoints["server_pid"] = server.pid
        assert server.pid is not None
        spy = hotspots.start(server.pid, raw)
        try:
            jobs = 4000 if args.quick else 20000
            phase = Phase("throughput", jobs)
            [found] = run_workload(server.module, endpoints, [phase], timeout=300.0)
        finally:
            hotspots.finish(spy)
    finally:
        server.stop()
    summary = harness_summary(found)
    cpu = ", ".join(f"{k} {v:.3f} ms" for k, v in summary["cpu_ms_per_job"].items())
    head = (
        f"{jobs} jobs through the throughput phase at {summary['e2e_jobs_s']} jobs/s end to end "
        f"(slowed by the sampling); CPU per job: {cpu}.\n\n"
    )
    (args.out / "profile.md").write_text(
        "# Where jobstore's server spends its time (native workload)\n\n"
        + head
        + hotspots.summarise(raw)
    )
    print(head, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(SNAPSHOT, ignore_errors=True)
