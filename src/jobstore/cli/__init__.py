"""The ``jobstore`` command: parse -> config -> library call."""

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.utils import z85

from .. import __version__
from ..client import (
    Connection,
    Driver,
    JobClient,
    JobContext,
    SetupError,
    Token,
    load_or_create_client_id,
)
from ..databox.startup import (
    DEFAULT_SECRETS_DIR,
    ArbiterTokens,
)
from ..errors import ClientError, ConfigError, JobstoreError, RequestFailed
from . import queue
from .admin import add_cli as add_admin
from .admin import add_fake_arbiter, add_serve, endpoint, env_setting
from .watch import add_cli as add_watch
from .watch import cmd_watch as run_watch_command
from .watchstate import FINISHED

log = logging.getLogger("jobstore")
SECRETS_DIR = os.environ.get("JOBSTORE_SECRETS_DIR", DEFAULT_SECRETS_DIR)

EXIT_FAILED = 1  # the store answered with an error
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3  # no answer in time
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command killed by SIGPIPE (`jobs ... | head`)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """A --log-level value, any case; argparse reports anything else as a usage error."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level: use one of {', '.join(LOG_LEVELS)} (any case)"
        )
    return text.upper()


def curve_key(text: str) -> str:
    """A CURVE public key flag's value: 40 characters of Z85."""
    try:
        valid = len(text) == 40 and len(z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise argparse.ArgumentTypeError(
            f"not a CURVE public key ({len(text)} characters): give the 40-character Z85 key "
            "jobstore keygen printed (or the store's ZMQ_PUBLIC_KEY)"
        )
    return text


def _secret_file(name: str) -> str | None:
    """A Databox secret the container manager mounted, if there is one."""
    try:
        return (Path(SECRETS_DIR) / name).read_text().strip() or None
    except OSError:
        return None


def _store_name(endpoint: str | None) -> str | None:
    """The store's name in a Databox endpoint such as tcp://jobstore-sensor:5555."""
    host = urlsplit(endpoint).hostname if endpoint else None
    return host if host and host not in ("127.0.0.1", "localhost", "0.0.0.0") else None


def _add_client_flags(p: argparse.ArgumentParser, client: bool) -> None:
    """Flags of the client commands; defaults come from JOBSTORE_* or what Databox gives a container."""
    p.add_argument("dsid", help="datasource (job queue) id")
    p.add_argument(
        "--endpoint",
        type=endpoint,
        default=env_setting(
            "ENDPOINT", os.environ.get("DATABOX_ZMQ_ENDPOINT", "tcp://127.0.0.1:5555")
        ),
        help="store request endpoint (JOBSTORE_ENDPOINT, else DATABOX_ZMQ_ENDPOINT)",
    )
    p.add_argument("--token", default=env_setting("TOKEN"), help="macaroon (JOBSTORE_TOKEN)")
    p.add_argument(
        "--server-key",
        type=curve_key,
        default=env_setting("SERVER_KEY", _secret_file("ZMQ_PUBLIC_KEY")),
        help="store's CURVE public key, Z85 (JOBSTORE_SERVER_KEY, else /run/secrets/ZMQ_PUBLIC_KEY)",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each reply (default 5)"
    )
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    add_arbiter_flags(p)
    if client:
        p.add_argument(
            "--client",
            default=env_setting("CLIENT"),
            help="client id (JOBSTORE_CLIENT, default cli)",
        )
        p.add_argument(
            "--client-file",
            default=env_setting("CLIENT_FILE"),
            help="instead of --client: a file keeping this client's secret id, made on first use "
            "(JOBSTORE_CLIENT_FILE); with the arbiter's tokens the id is what keeps jobs private",
        )


def add_arbiter_flags(p: argparse.ArgumentParser) -> None:
    """The flags that get tokens from a Databox arbiter, for every command that talks to a store."""
    databox = p.add_argument_group(
        "tokens from a Databox arbiter (instead of --token)",
        "With --arbiter, a token per method is asked of the arbiter, for /DSID/* (an app) or "
        "/* (a driver, work), naming --target as the store.",
    )
    databox.add_argument(
        "--arbiter",
        default=os.environ.get("DATABOX_ARBITER_ENDPOINT"),
        help="DATABOX_ARBITER_ENDPOINT",
    )
    databox.add_argument(
        "--arbiter-token",
        default=env_setting("ARBITER_TOKEN", _secret_file("ARBITER_TOKEN")),
        help="this container's arbiter token (else /run/secrets/ARBITER_TOKEN)",
    )
    databox.add_argument(
        "--arbiter-key",
        type=curve_key,
        default=env_setting("ARBITER_KEY", _secret_file("ZMQ_PUBLIC_KEY")),
        help="the arbiter's CURVE public key (else /run/secrets/ZMQ_PUBLIC_KEY)",
    )
    databox.add_argument(
        "--target",
        default=env_setting("TARGET", _store_name(os.environ.get("DATABOX_ZMQ_ENDPOINT"))),
        help="the store's name (else the host of DATABOX_ZMQ_ENDPOINT)",
    )
    databox.add_argument(
        "--as", dest="identity", help="this container's name (default: the hostname)"
    )


def _token(args: argparse.Namespace, path: str, client: str | None = None) -> Token:
    if not args.arbiter:
        return args.token  # type: ignore[no-any-return]
    if not (args.arbiter_token and args.target):
        raise ConfigError(
            "--arbiter needs --arbiter-token (this container's) and --target (the store)"
        )
    return ArbiterTokens(
        args.arbiter,
        args.arbiter_key,
        args.arbiter_token,
        target=args.target,
        path=path,
        client=client,
        identity=args.identity,
    )


def _client_id(args: argparse.Namespace) -> str:
    if not args.client_file:
        return args.client or "cli"
    if args.client:
        raise ConfigError("give --client or --client-file (JOBSTORE_CLIENT_FILE), not both")
    return load_or_create_client_id(args.client_file)


def _job_client(args: argparse.Namespace) -> JobClient:
    client = _client_id(args)
    return JobClient(
        args.endpoint,
        args.dsid,
        client,
        _token(args, f"/{args.dsid}/*", client),
        server_key=args.server_key,
        timeout=args.timeout,
    )


def _print(value: Any, as_json: bool) -> None:
    """JSON for scripts; otherwise one readable line per record."""
    if as_json:
        print(json.dumps(value, indent=2, default=repr))
        return
    for record in value if isinstance(value, list) else [value]:
        print(_describe(record))


def _describe(record: dict[str, Any]) -> str:
    parts = [
        record["job"],
        record["status"],
        f"client={record['client']}",
        f"attempts={record['attempts']}",
    ]
    if record.get("cancel_requested") and record["status"] == "accepted":
        parts.append("cancel-requested")
    for key in ("progress", "response"):
        if key in record:
            parts.append(f"{key}={json.dumps(record[key], default=repr)}")
    return "  ".join(parts)


def _request(text: str) -> Any:
    """The request an argument gives: JSON, or plain text; text that starts like JSON must be JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith(("{", "[")):
            raise ConfigError(
                f"the request starts like JSON but is not JSON ({exc.msg} at character {exc.pos}): "
                "fix it, or pass it as a JSON string to send text"
            ) from None
        return text  # plain text is a fine request too


def cmd_submit(args: argparse.Namespace) -> int:
    if args.batch:
        with _job_client(args) as jc:
            return queue.submit_batch(jc, args)
    if args.request is None:
        raise ConfigError("give the job's request (JSON, or plain text), or --batch FILE")
    request = _request(args.request)
    with _job_client(args) as jc:
        _print(jc.submit(request, job=args.job, **queue.submit_options(args)), args.json)
    return 0


def _driver(args: argparse.Namespace) -> Driver:
    token = _token(args, "/*")
    return Driver(args.endpoint, args.dsid, token, server_key=args.server_key, timeout=args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    with _job_client(args) as jc:
        _print(jc.status(args.job), args.json)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _job_client(args) as jc:
        record = jc.cancel(args.job)
    _print(record, args.json)
    if record["status"] in FINISHED:
        # The store answers a finished job's cancel with the record as it was: say so.
        print(
            f"jobstore: {args.job} had already ended ({record['status']}); nothing changed",
            file=sys.stderr,
        )
    elif record["status"] == "accepted":
        print(
            f"jobstore: {args.job} is running; its driver has been asked to stop it",
            file=sys.stderr,
        )
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _job_client(args) as jc:
        jobs = list(jc.jobs(since=args.since))
    if args.json:
        _print(jobs, True)
    elif not jobs:
        since = f" changed after seq {args.since}" if args.since else ""
        print(f"no jobs of client {jc.client} in {args.dsid}{since}", file=sys.stderr)
    else:
        for line in _table(jobs):
            print(line)
    return 0


def _table(records: list[dict[str, Any]]) -> list[str]:
    """One line per record as :func:`_describe` words it, with the columns aligned."""
    rows = [_describe(record).split("  ") for record in records]
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return [
        "  ".join(cell.ljust(widths.get(i, 0)) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]


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


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the store answers ``GET /stats`` on its request socket."""
    conn = Connection(
        args.endpoint, token=args.token, server_key=args.server_key, timeout=args.timeout
    )
    try:
        stats = conn.call("GET", "/stats")
    except RequestFailed as exc:
        if exc.status != 401 or args.token:
            raise
        # Without a token a store that checks macaroons refuses /stats, but the refusal
        # comes from its serve loop after CURVE and decoding: it is up.
        print(f"healthy: {args.endpoint} answers (401 without a token)")
        return 0
    finally:
        conn.close()
    print(
        f"healthy: {args.endpoint} answers; {stats['records']} record(s), seq {stats['seq']}, "
        f"storage {stats['lmdb']['fill']:.1%} of its ceiling"
    )
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobstore",
        description="A Databox store for a queue of jobs (asynchronous RPC).",
        epilog="exit status: 0 done; 1 the store (or arbiter) refused the request; 2 bad usage or "
        "configuration; 3 no answer in time. Try: jobstore serve --help",
    )
    parser.add_argument("--version", action="version", version=f"jobstore {__version__}")
    parser.add_argument(
        "--log-level",
        type=log_level,
        default=env_setting("LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (JOBSTORE_LOG_LEVEL; default INFO); "
        "also accepted after the command",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve(sub)

    p = sub.add_parser(
        "submit",
        help="submit a job",
        epilog='example: jobstore submit sensor-jobs \'{"read": "temperature"}\' --client app1',
    )
    _add_client_flags(p, True)
    p.add_argument("request", nargs="?", help="the job's request: JSON, or plain text")
    p.add_argument("--job", help="job id (default: a fresh GUID)")
    queue.add_submit_options(p)
    p.set_defaults(func=cmd_submit)

    for name, func, text in (
        ("status", cmd_status, "show a job"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        p = sub.add_parser(
            name, help=text, epilog=f"example: jobstore {name} sensor-jobs JOB_ID --client app1"
        )
        _add_client_flags(p, True)
        p.add_argument("job", help="job id")
        p.set_defaults(func=func)

    p = sub.add_parser(
        "jobs",
        help="list a client's jobs",
        epilog="example: jobstore jobs sensor-jobs --client app1",
    )
    _add_client_flags(p, True)
    p.add_argument("--since", type=int, default=0, help="only jobs changed after this seq")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "work",
        help="run a driver that executes jobs",
        epilog="examples: jobstore work sensor-jobs --exec 'python3 -c \"import sys; print(sys.stdin.read())\"'\n"
        "          jobstore work sensor-jobs --call mypackage.jobs:handle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_client_flags(p, False)
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
    p.set_defaults(func=cmd_work)

    p = sub.add_parser(
        "health",
        help="exit 0 if the store answers (the Docker image's HEALTHCHECK)",
        description="Ask the store for GET /stats through its request socket. Exit 0 when it "
        "answers with the statistics, or, without --token, with 401 (a store that checks "
        "macaroons refuses /stats without one, after its serve loop has decoded the request: "
        "it is up); 1 for any other error reply; 3 for no reply in time. Inside the Databox "
        "image this uses the container's own ZMQ_PUBLIC_KEY and no token: the store's token "
        "secret lives only in the serving process, and asking the arbiter for it again "
        "would invalidate the store's tokens.",
        epilog="example: jobstore health --endpoint tcp://127.0.0.1:5555",
    )
    p.add_argument(
        "--endpoint",
        type=endpoint,
        default=env_setting("HEALTH_ENDPOINT", "tcp://127.0.0.1:5555"),
        help="the store's request endpoint (JOBSTORE_HEALTH_ENDPOINT; default tcp://127.0.0.1:5555)",
    )
    p.add_argument(
        "--server-key",
        type=curve_key,
        default=env_setting("SERVER_KEY", _secret_file("ZMQ_PUBLIC_KEY")),
        help="the store's CURVE public key (JOBSTORE_SERVER_KEY, else "
        "ZMQ_PUBLIC_KEY in JOBSTORE_SECRETS_DIR or /run/secrets)",
    )
    p.add_argument("--token", default=env_setting("TOKEN"), help="a token for GET /stats")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the reply (default 5)"
    )
    p.set_defaults(func=cmd_health)

    queue.add_cli(sub, _add_client_flags, _driver)
    add_admin(sub)
    add_watch(sub)
    watch = sub.choices["watch"]
    add_arbiter_flags(watch)
    watch.set_defaults(func=cmd_watch)
    add_fake_arbiter(sub)
    for command in sub.choices.values():
        # SUPPRESS: given only before the command, the top-level value stays.
        command.add_argument("--log-level", type=log_level, default=argparse.SUPPRESS)
    return parser


def cmd_watch(args: argparse.Namespace) -> int:
    """``watch``, with tokens from the arbiter when --arbiter is given.

    A whole datasource is watched as its driver (path /*); --client as that app
    (/DSID/* with its client caveat). The subscribe needs the caveats of a GET of the
    watched jobs, observe = data included: the GET token covers it (a token without
    an observe caveat is broader), so the view asks the arbiter for GET and POST tokens.
    """
    path = f"/{args.dsid}/*" if args.client else "/*"
    args.token = _token(args, path, args.client)
    return run_watch_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return result
    except BrokenPipeError:
        # The reader stopped reading (`jobstore jobs ... | head`): not an error worth a word.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except zmq.ZMQError as exc:
        print(
            f"jobstore: ZeroMQ refused the configuration ({exc.strerror}): check the endpoints "
            "(tcp://HOST:PORT or ipc:///PATH) and CURVE keys (40 characters of Z85)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except RequestFailed as exc:
        print(f"jobstore: the store answered {exc.status}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except ClientError as exc:
        print(f"jobstore: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConfigError as exc:
        print(f"jobstore: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except JobstoreError as exc:
        print(f"jobstore: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
