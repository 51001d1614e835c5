"""The commands that talk to a store as a client does: an app's ``submit``, ``status``,
``cancel`` and ``jobs``, and ``health``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..client import Connection, Driver, JobClient
from ..errors import ConfigError, RequestFailed
from . import queue
from .options import (
    add_client_flags,
    add_timeout_flag,
    client_id,
    command,
    endpoint,
    env_flag,
    key_flag,
    token,
)
from .watchstate import FINISHED


def _job_client(args: argparse.Namespace) -> JobClient:
    client = client_id(args)
    return JobClient(
        args.endpoint,
        args.dsid,
        client,
        token(args, f"/{args.dsid}/*", client),
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
    """A driver's connection for the queue-control commands (requeue, pause, resume, settings)."""
    return Driver(
        args.endpoint,
        args.dsid,
        token(args, "/*"),
        server_key=args.server_key,
        timeout=args.timeout,
    )


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


def add_app_commands(sub: Any) -> None:
    """Add ``submit``, ``status``, ``cancel`` and ``jobs`` to the ``jobstore`` parser's subcommands."""
    p = command(
        sub,
        "submit",
        cmd_submit,
        help="submit a job",
        epilog='example: jobstore submit sensor-jobs \'{"read": "temperature"}\' --client app1',
    )
    add_client_flags(p, True)
    p.add_argument("request", nargs="?", help="the job's request: JSON, or plain text")
    p.add_argument("--job", help="job id (default: a fresh GUID)")
    queue.add_submit_options(p)

    for name, func, text in (
        ("status", cmd_status, "show a job"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        p = command(
            sub,
            name,
            func,
            help=text,
            epilog=f"example: jobstore {name} sensor-jobs JOB_ID --client app1",
        )
        add_client_flags(p, True)
        p.add_argument("job", help="job id")

    p = command(
        sub,
        "jobs",
        cmd_jobs,
        help="list a client's jobs",
        epilog="example: jobstore jobs sensor-jobs --client app1",
    )
    add_client_flags(p, True)
    p.add_argument("--since", type=int, default=0, help="only jobs changed after this seq")


def add_queue_commands(sub: Any) -> None:
    """Add ``requeue``, ``pause``, ``resume`` and ``settings``, run as the datasource's driver."""
    queue.add_cli(sub, add_client_flags, _driver)


def add_health(sub: Any) -> None:
    """Add ``health`` to the ``jobstore`` parser's subcommands."""
    p = command(
        sub,
        "health",
        cmd_health,
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
    env_flag(
        p,
        "--endpoint",
        "tcp://127.0.0.1:5555",
        env="HEALTH_ENDPOINT",
        type=endpoint,
        help="the store's request endpoint (JOBSTORE_HEALTH_ENDPOINT; default tcp://127.0.0.1:5555)",
    )
    key_flag(
        p,
        "--server-key",
        "the store's CURVE public key (JOBSTORE_SERVER_KEY, else "
        "ZMQ_PUBLIC_KEY in JOBSTORE_SECRETS_DIR or /run/secrets)",
        "SERVER_KEY",
    )
    env_flag(p, "--token", help="a token for GET /stats")
    add_timeout_flag(p, "the reply")
