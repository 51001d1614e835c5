"""``jobstore work``: a driver that runs each job with a shell command or a Python callable."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from ..client import Driver, JobContext, SetupError
from ..errors import ConfigError
from .options import EXIT_INTERRUPTED, EXIT_USAGE, add_client_flags, command
from .options import token as _token

log = logging.getLogger("jobstore")


def cmd_work(args: argparse.Namespace) -> int:
    command = _Command(args.exec) if args.exec else None
    handler = command or _callable(args.call)
    token = _token(args, "/*")
    try:
        with Driver(
            args.endpoint, args.dsid, token, server_key=args.server_key, timeout=args.timeout
        ) as driver:
            if args.register:
                driver.register(args.register)
                log.info("registered %s in the store's hypercat catalogue", args.dsid)
            log.info("working on %s at %s", args.dsid, args.endpoint)
            done = driver.run(handler, lease=args.lease, max_jobs=args.max_jobs)
    except SetupError as exc:
        print(f"jobstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # Driver.run has said what became of the job in hand
    finally:
        if command is not None:
            command.stop()
    log.info("ran %d job(s)", done)
    return 0


# Exit statuses of `sh -c` for a command it could not run: not executable, not found.
SHELL_CANNOT_RUN = {126: "not executable", 127: "not found"}


class _Command:
    """``--exec``: a shell command per job, request JSON on stdin, stdout the response.

    Each runs in a process group of its own, so that ``stop`` ends it with whatever it
    started when the worker is interrupted (a Ctrl-C reaches only the worker, which hands
    the job back first).
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self._running: subprocess.Popen[str] | None = None

    def __call__(self, ctx: JobContext) -> Any:
        proc = subprocess.Popen(
            self.command,
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "JOBSTORE_JOB": ctx.id},
            start_new_session=True,
        )
        self._running = proc
        try:
            stdout, stderr = proc.communicate(json.dumps(ctx.request))
        finally:
            self._running = None
        if proc.returncode in SHELL_CANNOT_RUN:
            # The worker's fault, not the job's: failing it, and every job after it, helps nobody.
            said = stderr.strip().splitlines()[-1:] or ["(nothing on stderr)"]
            raise SetupError(
                f"--exec {self.command!r} cannot run: exit status {proc.returncode}, "
                f"{SHELL_CANNOT_RUN[proc.returncode]} ({said[0]}); fix the command and start "
                f"the worker again (job {ctx.id} was handed back, nothing more was taken)"
            )
        if proc.returncode != 0:
            raise RuntimeError(f"exit status {proc.returncode}: {stderr.strip()[-2000:]}")
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            return stdout

    def stop(self) -> None:
        """End the command running now, if any, and everything it started."""
        proc = self._running
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.killpg(proc.pid, signal.SIGTERM)


def _callable(spec: str) -> Callable[[JobContext], Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"--call wants module:function, got {spec!r}")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"--call {spec}: cannot import {module} ({exc}); is it on PYTHONPATH (or installed)?"
        ) from None
    func = getattr(loaded, name, None)
    if not callable(func):
        raise ConfigError(f"--call {spec}: {module} has no function {name}")
    return func  # type: ignore[no-any-return]


def add_work(sub: Any) -> None:
    """Add ``work`` to the ``jobstore`` parser's subcommands."""
    p = command(
        sub,
        "work",
        cmd_work,
        help="run a driver that executes jobs",
        epilog="examples: jobstore work sensor-jobs --exec 'python3 -c \"import sys; print(sys.stdin.read())\"'\n"
        "          jobstore work sensor-jobs --call mypackage.jobs:handle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_flags(p, False)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--exec",
        help="shell command per job: request JSON on stdin, stdout (JSON or text) is the response",
    )
    how.add_argument("--call", help="Python callable module:function taking a JobContext")
    p.add_argument(
        "--lease", type=int, default=30_000, help="lease in ms, renewed while a job runs"
    )
    p.add_argument("--max-jobs", type=int, help="stop after this many jobs")
    p.add_argument(
        "--register",
        metavar="DESCRIPTION",
        help="first add the datasource to the store's hypercat catalogue",
    )
