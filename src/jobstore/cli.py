"""The ``jobstore`` command: parse -> config -> library call."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from . import __version__
from .arbiter import add_cli as add_fake_arbiter
from .client import Driver, JobClient, JobContext, Token
from .databox import (
    DEFAULT_ARBITER,
    DEFAULT_DATA_DIR,
    DEFAULT_SECRETS_DIR,
    ArbiterTokens,
    read_secrets,
    token_secret,
)
from .errors import ClientError, ConfigError, JobstoreError, RequestFailed
from .server import DEFAULT_NOTIFY, DEFAULT_OBSERVE, DEFAULT_REQUEST, Server, ServerConfig, describe
from .service import Limits, Service
from .storage import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, Storage
from .watch import add_cli as add_watch

log = logging.getLogger("jobstore")
SECRETS_DIR = os.environ.get("JOBSTORE_SECRETS_DIR", DEFAULT_SECRETS_DIR)

EXIT_FAILED = 1  # the store answered with an error
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3  # no answer in time


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"JOBSTORE_{name}", default)


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run a store",
        description="Run a job store. Every flag can also be set as JOBSTORE_<FLAG> "
        "(e.g. JOBSTORE_DATA_DIR).",
        epilog="example: jobstore serve --data-dir ./var --request-endpoint tcp://127.0.0.1:5555",
    )
    p.add_argument(
        "--data-dir",
        default=_env("DATA_DIR"),
        help="LMDB directory (./var; /database with --databox)",
    )
    p.add_argument("--request-endpoint", default=_env("REQUEST_ENDPOINT", DEFAULT_REQUEST))
    p.add_argument("--observe-endpoint", default=_env("OBSERVE_ENDPOINT", DEFAULT_OBSERVE))
    p.add_argument("--notify-endpoint", default=_env("NOTIFY_ENDPOINT", DEFAULT_NOTIFY))
    p.add_argument(
        "--secret-key-file",
        default=_env("SECRET_KEY_FILE"),
        help="file holding the server's 40-character Z85 CURVE secret key; CURVE is off without it",
    )
    p.add_argument(
        "--token-key-file",
        default=_env("TOKEN_KEY_FILE"),
        help="file holding the macaroon secret; tokens are not checked without it",
    )
    p.add_argument(
        "--identity",
        default=_env("IDENTITY", os.environ.get("DATABOX_LOCAL_NAME", "jobstore")),
        help="store identity, the macaroon target caveat (DATABOX_LOCAL_NAME)",
    )
    p.add_argument(
        "--lease", type=int, default=int(_env("LEASE", 30_000)), help="default lease, ms"
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=int(_env("MAX_ATTEMPTS", 5)),
        help="lease expiries before failed",
    )
    limits, server = p.add_argument_group("limits (docs/operations.md)"), ServerConfig()
    defaults = Limits()
    for flag, default, text in (
        ("map-size", DEFAULT_MAP_SIZE, "initial LMDB map size, bytes"),
        (
            "max-map-size",
            DEFAULT_MAX_MAP_SIZE,
            "the map grows up to this; new jobs get 507 near it",
        ),
        ("max-frame", server.max_frame, "largest request frame, bytes (413 above)"),
        (
            "max-inflight",
            server.max_inflight_per_peer,
            "requests in flight per peer (429 above)",
        ),
        (
            "max-active-per-client",
            defaults.max_active_per_client,
            "unfinished jobs per client (429)",
        ),
        (
            "max-active-per-datasource",
            defaults.max_active_per_datasource,
            "unfinished jobs per datasource",
        ),
        ("retention", defaults.retention_ms, "ms a finished job is kept before it is purged"),
    ):
        env = flag.upper().replace("-", "_")
        limits.add_argument(
            f"--{flag}", type=int, default=int(_env(env, default)), help=f"{text} ({default})"
        )
    p.add_argument(
        "--databox",
        action="store_true",
        default=bool(_env("DATABOX")),
        help="start as a Databox store: secrets from --secrets-dir, token secret from the arbiter at "
        "DATABOX_ARBITER_ENDPOINT, identity DATABOX_LOCAL_NAME, data in /database",
    )
    p.add_argument("--secrets-dir", default=_env("SECRETS_DIR", DEFAULT_SECRETS_DIR))
    p.set_defaults(func=cmd_serve)


def _read_key(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes().strip()
    except OSError as exc:
        raise SystemExit(f"jobstore: cannot read the {what} file {path}: {exc.strerror}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    if args.databox:
        identity = os.environ.get("DATABOX_LOCAL_NAME")
        if not identity:
            raise ConfigError("--databox needs DATABOX_LOCAL_NAME, the store's name in Databox")
        args.identity = identity
        args.data_dir = args.data_dir or DEFAULT_DATA_DIR
        secrets = read_secrets(args.secrets_dir)
        arbiter = os.environ.get("DATABOX_ARBITER_ENDPOINT", DEFAULT_ARBITER)
        log.info("fetching the token secret from the arbiter at %s", arbiter)
        token_key: bytes | None = token_secret(arbiter, secrets, identity)
        secret_key: bytes | None = secrets.secret_key
    else:
        secret_key = _read_key(args.secret_key_file, "CURVE secret key")
        token_key = _read_key(args.token_key_file, "token key")
    if secret_key is not None and len(secret_key) != 40:
        raise ConfigError(
            "the CURVE secret key must be 40 characters of Z85 (make one with jobstore keygen)"
        )
    args.data_dir = args.data_dir or "./var"
    auth = None
    if token_key is not None:
        from .auth import Authoriser

        auth = Authoriser(token_key, args.identity)
    storage = Storage(args.data_dir, map_size=args.map_size, max_map_size=args.max_map_size)
    limits = Limits(
        lease_ms=args.lease,
        max_attempts=args.max_attempts,
        max_active_per_client=args.max_active_per_client,
        max_active_per_datasource=args.max_active_per_datasource,
        retention_ms=args.retention,
    )
    config = ServerConfig(
        request_endpoint=args.request_endpoint,
        observe_endpoint=args.observe_endpoint,
        notify_endpoint=args.notify_endpoint,
        secret_key=secret_key,
        max_frame=args.max_frame,
        max_inflight_per_peer=args.max_inflight,
    )
    server = Server(Service(storage, auth, limits), config)
    server.install_signal_handlers()
    log.info(
        "jobstore %s serving data in %s as %r",
        __version__,
        Path(args.data_dir).resolve(),
        args.identity,
    )
    for line in describe(server, auth is not None):
        # An unprotected store is logged as a warning, so it stands out in any log.
        log.log(logging.WARNING if "OFF" in line else logging.INFO, "%s", line)
    server.serve()
    log.info("stopped")
    return 0


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
        default=_env("ENDPOINT", os.environ.get("DATABOX_ZMQ_ENDPOINT", "tcp://127.0.0.1:5555")),
        help="store request endpoint (JOBSTORE_ENDPOINT, else DATABOX_ZMQ_ENDPOINT)",
    )
    p.add_argument("--token", default=_env("TOKEN"), help="macaroon (JOBSTORE_TOKEN)")
    p.add_argument(
        "--server-key",
        default=_env("SERVER_KEY", _secret_file("ZMQ_PUBLIC_KEY")),
        help="store's CURVE public key, Z85 (JOBSTORE_SERVER_KEY, else /run/secrets/ZMQ_PUBLIC_KEY)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
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
        default=_env("ARBITER_TOKEN", _secret_file("ARBITER_TOKEN")),
        help="this container's arbiter token (else /run/secrets/ARBITER_TOKEN)",
    )
    databox.add_argument(
        "--arbiter-key",
        default=_env("ARBITER_KEY", _secret_file("ZMQ_PUBLIC_KEY")),
        help="the arbiter's CURVE public key (else /run/secrets/ZMQ_PUBLIC_KEY)",
    )
    databox.add_argument(
        "--target",
        default=_env("TARGET", _store_name(os.environ.get("DATABOX_ZMQ_ENDPOINT"))),
        help="the store's name (else the host of DATABOX_ZMQ_ENDPOINT)",
    )
    databox.add_argument(
        "--as", dest="identity", help="this container's name (default: the hostname)"
    )
    if client:
        p.add_argument(
            "--client",
            default=_env("CLIENT", "cli"),
            help="client id (JOBSTORE_CLIENT, default cli)",
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


def _job_client(args: argparse.Namespace) -> JobClient:
    return JobClient(
        args.endpoint,
        args.dsid,
        args.client,
        _token(args, f"/{args.dsid}/*", args.client),
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


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        request = json.loads(args.request)
    except json.JSONDecodeError:
        request = args.request  # plain text is a fine request too
    with _job_client(args) as jc:
        _print(jc.submit(request, job=args.job), args.json)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _job_client(args) as jc:
        _print(jc.status(args.job), args.json)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _job_client(args) as jc:
        _print(jc.cancel(args.job), args.json)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _job_client(args) as jc:
        _print(list(jc.jobs(since=args.since)), args.json)
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    handler = _command_handler(args.exec) if args.exec else _callable(args.call)
    token = _token(args, "/*")
    with Driver(
        args.endpoint, args.dsid, token, server_key=args.server_key, timeout=args.timeout
    ) as driver:
        if args.register:
            driver.register(args.register)
            log.info("registered %s in the store's hypercat catalogue", args.dsid)
        log.info("working on %s at %s", args.dsid, args.endpoint)
        done = driver.run(handler, lease=args.lease, max_jobs=args.max_jobs)
    log.info("ran %d job(s)", done)
    return 0


def _command_handler(command: str) -> Callable[[JobContext], Any]:
    def run(ctx: JobContext) -> Any:
        env = {**os.environ, "JOBSTORE_JOB": ctx.id}
        proc = subprocess.run(
            command,
            shell=True,
            input=json.dumps(ctx.request),
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"exit status {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            return proc.stdout

    return run


def _callable(spec: str) -> Callable[[JobContext], Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"jobstore: --call wants module:function, got {spec!r}")
    func: Callable[[JobContext], Any] = getattr(importlib.import_module(module), name)
    return func


def cmd_keygen(args: argparse.Namespace) -> int:
    public, secret = zmq.curve_keypair()
    out = Path(args.out)
    out.touch(mode=0o600, exist_ok=False)
    out.write_bytes(secret + b"\n")
    Path(f"{out}.pub").write_bytes(public + b"\n")
    print(public.decode())
    return 0


def cmd_mint(args: argparse.Namespace) -> int:
    from .auth import mint

    secret = _read_key(args.token_key_file, "token key")
    assert secret is not None
    caveats = [f"path = {args.path}", f"method = {args.method.upper()}", f"target = {args.target}"]
    if args.client:
        caveats.append(f"client = {args.client}")
    if args.observe:
        caveats.append("observe = data")
    print(mint(secret, caveats))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check

    count, problems = check(args.data_dir)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{len(problems)} problem(s) in {count} record(s) in {args.data_dir}")
        return EXIT_FAILED
    print(f"ok: {count} record(s) in {args.data_dir}, every index and counter agrees")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    if not (Path(args.data_dir) / "data.mdb").exists():
        raise ConfigError(f"no jobstore data in {args.data_dir}")
    storage = Storage(args.data_dir, readonly=True)
    try:
        storage.backup(args.destination)
    except FileExistsError:
        raise ConfigError(f"{args.destination} exists: back up into a new directory") from None
    finally:
        storage.close()
    print(f"backed up {args.data_dir} to {args.destination}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobstore",
        description="A Databox store for a queue of jobs (asynchronous RPC).",
        epilog="exit status: 0 done; 1 the store (or arbiter) refused the request; 2 bad usage or "
        "configuration; 3 no answer in time. Try: jobstore serve --help",
    )
    parser.add_argument("--version", action="version", version=f"jobstore {__version__}")
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)

    p = sub.add_parser(
        "submit",
        help="submit a job",
        epilog='example: jobstore submit sensor-jobs \'{"read": "temperature"}\' --client app1',
    )
    _add_client_flags(p, True)
    p.add_argument("request", help="the job's request: JSON, or plain text")
    p.add_argument("--job", help="job id (default: a fresh GUID)")
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
        "keygen",
        help="write a CURVE key pair",
        description="Write a CURVE secret key to OUT (mode 0600) and its public key to OUT.pub; "
        "print the public key. Serve with --secret-key-file OUT; give clients the public key.",
        epilog="example: jobstore keygen --out ./store.key",
    )
    p.add_argument("--out", required=True, help="secret key file to create (must not exist)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "mint",
        help="mint a development macaroon",
        description="Mint a token the way the arbiter does, for development and tests.",
        epilog="example: jobstore mint --token-key-file ./token.key --target jobstore "
        "--path '/sensor-jobs/*' --method POST --client app1",
    )
    p.add_argument("--token-key-file", required=True, help="the store's token secret")
    p.add_argument("--target", required=True, help="store identity (or * for any)")
    p.add_argument("--path", required=True, help="path, or a prefix ending in *")
    p.add_argument("--method", required=True, help="GET, POST or DELETE (or *)")
    p.add_argument("--client", help="add a client caveat")
    p.add_argument("--observe", action="store_true", help="add observe = data (observe, subscribe)")
    p.set_defaults(func=cmd_mint)

    p = sub.add_parser(
        "check",
        help="verify a data directory",
        description="Check offline (or beside a running store) that every index entry points at a "
        "record that agrees with it, every record is indexed once, seq values are unique and below "
        "the counter, and the unfinished-job counts are right. Exit status 1 names each problem.",
        epilog="example: jobstore check ./var",
    )
    p.add_argument("data_dir", help="the store's data directory")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "backup",
        help="copy a data directory consistently, even while it is served",
        epilog="example: jobstore backup ./var ./backup-2026-11-28",
    )
    p.add_argument("data_dir", help="the store's data directory")
    p.add_argument("destination", help="a new directory for the copy")
    p.set_defaults(func=cmd_backup)

    add_watch(sub)
    add_fake_arbiter(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        result: int = args.func(args)
        return result
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
        return 130
