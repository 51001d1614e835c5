"""The operator's commands: ``serve``, ``keygen``, ``mint``, ``check`` and ``backup``.

``jobstore.cli`` adds them to its parser with :func:`add_serve` and :func:`add_cli`, as
it adds ``watch`` and ``fake-arbiter``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import zmq

from .. import __version__
from ..databox.startup import (
    DEFAULT_ARBITER,
    DEFAULT_DATA_DIR,
    DEFAULT_SECRETS_DIR,
    read_secrets,
    token_secret,
)
from ..errors import ConfigError, JobstoreError
from ..store.auth import MAX_CAVEATS, MAX_TOKEN
from ..store.cache import DEFAULT_CACHE_BYTES
from ..store.datadir import DataDirLock
from ..store.operations import Limits, Service
from ..store.server import (
    DEFAULT_NOTIFY,
    DEFAULT_OBSERVE,
    DEFAULT_REQUEST,
    Server,
    ServerConfig,
    describe,
)
from ..store.storage import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, Storage
from .options import command, endpoint, env_flag, env_setting

log = logging.getLogger("jobstore")


def add_cli(sub: Any) -> None:
    """Add keygen, mint, check and backup to the ``jobstore`` parser's subcommands."""
    p = command(
        sub,
        "keygen",
        cmd_keygen,
        help="write a CURVE key pair",
        description="Write a CURVE secret key to OUT (mode 0600) and its public key to OUT.pub; "
        "print the public key. Serve with --secret-key-file OUT; give clients the public key.",
        epilog="example: jobstore keygen --out ./store.key",
    )
    p.add_argument("--out", required=True, help="secret key file to create (must not exist)")

    p = command(
        sub,
        "mint",
        cmd_mint,
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

    p = command(
        sub,
        "check",
        cmd_check,
        help="verify a data directory",
        description="Check offline (or beside a running store) that every index entry points at a "
        "record that agrees with it, every record is indexed once, seq values are unique and below "
        "the counter, and the unfinished-job counts are right. Exit status 1 names each problem.",
        epilog="example: jobstore check ./var",
    )
    p.add_argument("data_dir", help="the store's data directory")

    p = command(
        sub,
        "backup",
        cmd_backup,
        help="copy a data directory consistently, even while it is served",
        epilog="example: jobstore backup ./var ./backup-2026-11-28",
    )
    p.add_argument("data_dir", help="the store's data directory")
    p.add_argument("destination", help="a new directory for the copy")


def add_serve(sub: Any) -> None:
    """Add ``serve`` to the ``jobstore`` parser's subcommands."""
    p = command(
        sub,
        "serve",
        cmd_serve,
        help="run a store",
        description="Run a job store. Every flag can also be set as JOBSTORE_<FLAG> "
        "(e.g. JOBSTORE_DATA_DIR).",
        epilog="example: jobstore serve --data-dir ./var --request-endpoint tcp://127.0.0.1:5555",
    )
    env_flag(p, "--data-dir", help="LMDB directory (./var; /database with --databox)")
    for socket, listen in (
        ("request", DEFAULT_REQUEST),
        ("observe", DEFAULT_OBSERVE),
        ("notify", DEFAULT_NOTIFY),
    ):
        env_flag(p, f"--{socket}-endpoint", listen, type=endpoint, help=f"({listen})")
    for flag, text in (
        (
            "--secret-key-file",
            "file holding the server's 40-character Z85 CURVE secret key; CURVE is off without it",
        ),
        ("--token-key-file", "file holding the macaroon secret; tokens are not checked without it"),
    ):
        env_flag(p, flag, help=text)
    env_flag(
        p,
        "--identity",
        os.environ.get("DATABOX_LOCAL_NAME", "jobstore"),
        help="store identity, the macaroon target caveat (DATABOX_LOCAL_NAME)",
    )
    env_flag(p, "--lease", 30_000, type=int, help="default lease, ms")
    env_flag(p, "--max-attempts", 5, type=int, help="lease expiries before failed")
    limits, server = p.add_argument_group("limits (docs/operations.md)"), ServerConfig()
    defaults = Limits()
    for flag, default, text in (
        ("map-size", DEFAULT_MAP_SIZE, "initial LMDB map size, bytes"),
        (
            "max-map-size",
            DEFAULT_MAX_MAP_SIZE,
            "the map grows up to this; new jobs get 507 near it",
        ),
        ("record-cache", DEFAULT_CACHE_BYTES, "bytes of recently written records kept decoded"),
        ("max-frame", server.max_frame, "largest request frame, bytes (413 above)"),
        ("max-batch", server.max_batch, "requests handled per batch, in one commit"),
        (
            "max-inflight",
            server.max_inflight_per_peer,
            "requests in flight per peer (429 above)",
        ),
        ("max-envelope", server.max_envelope, "routing frames before a request (dropped above)"),
        ("send-hwm", server.send_hwm, "messages queued per peer; more are dropped and counted"),
        ("recv-hwm", server.recv_hwm, "messages read ahead per peer before reading pauses"),
        ("socket-buffer", server.socket_buffer, "kernel send/receive buffer, bytes; 0: OS default"),
        ("max-observers", server.max_observers, "Zest observers in the store (429 above)"),
        (
            "max-observers-per-peer",
            server.max_observers_per_peer,
            "Zest observers per connection (429 above)",
        ),
        ("max-waiting-takes", server.max_parked, "takes waiting for a job (429 above)"),
        ("max-token", MAX_TOKEN, "characters of a token (401 above)"),
        ("max-caveats", MAX_CAVEATS, "caveats in a token (401 above)"),
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
        env_flag(limits, f"--{flag}", default, type=int, help=f"{text} ({default})")
    p.add_argument(
        "--databox",
        action="store_true",
        default=bool(env_setting("DATABOX")),
        help="start as a Databox store: secrets from --secrets-dir, token secret from the arbiter at "
        "DATABOX_ARBITER_ENDPOINT, identity DATABOX_LOCAL_NAME, data in /database",
    )
    env_flag(p, "--secrets-dir", DEFAULT_SECRETS_DIR)


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
        from ..store.auth import Authoriser

        issuer = "the arbiter" if args.databox else "jobstore mint (with this store's token key)"
        auth = Authoriser(
            token_key,
            args.identity,
            issuer=issuer,
            max_token=args.max_token,
            max_caveats=args.max_caveats,
        )
    _check_endpoints(args)
    created = not os.path.lexists(args.data_dir)
    # Before the data is opened: a second store on the directory names the first and stops.
    lock = DataDirLock(
        args.data_dir,
        f"pid {os.getpid()}, request endpoint {args.request_endpoint}, "
        f"notify endpoint {args.notify_endpoint}",
    )
    storage = Storage(
        args.data_dir,
        map_size=args.map_size,
        max_map_size=args.max_map_size,
        cache_bytes=args.record_cache,
    )
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
        max_batch=args.max_batch,
        max_inflight_per_peer=args.max_inflight,
        max_envelope=args.max_envelope,
        send_hwm=args.send_hwm,
        recv_hwm=args.recv_hwm,
        socket_buffer=args.socket_buffer,
        max_observers=args.max_observers,
        max_observers_per_peer=args.max_observers_per_peer,
        max_parked=args.max_waiting_takes,
    )
    try:
        server = Server(Service(storage, auth, limits), config)
    except zmq.ZMQError as exc:
        # Taken between the check and now: leave no data directory behind for a store that never ran.
        storage.close()
        if created:
            shutil.rmtree(args.data_dir, ignore_errors=True)
        raise ConfigError(f"cannot listen: {exc.strerror}; {_LISTEN_ADVICE}") from None
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
    lock.release()
    log.info("stopped")
    return 0


_LISTEN_ADVICE = (
    "is another store (or program) using it? Stop it, or give this store other "
    "--request/--observe/--notify-endpoint values"
)


def _check_endpoints(args: argparse.Namespace) -> None:
    """Bind and release each endpoint, so a busy port stops start-up before anything is created."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        for name in ("request", "observe", "notify"):
            where = getattr(args, f"{name}_endpoint")
            sock = ctx.socket(zmq.ROUTER)
            sock.linger = 0
            try:
                sock.bind(where)
            except zmq.ZMQError as exc:
                advice = (
                    _LISTEN_ADVICE
                    if exc.errno == errno.EADDRINUSE
                    else "check the host, port or path (tcp://HOST:PORT or ipc:///PATH)"
                )
                raise ConfigError(
                    f"cannot listen on --{name}-endpoint {where}: {exc.strerror}; {advice}"
                ) from None
            finally:
                sock.close()
    finally:
        ctx.term()


def cmd_keygen(args: argparse.Namespace) -> int:
    public, secret = zmq.curve_keypair()
    out = Path(args.out)
    pub = Path(f"{out}.pub")
    for path in (out, pub):
        if path.exists():
            raise ConfigError(
                f"{path} exists: keygen never overwrites a key; choose another --out, or remove "
                "the old pair if nothing uses it"
            )
    if not out.parent.is_dir():
        raise ConfigError(f"no directory {out.parent} for --out {out}: create it first")
    try:
        out.touch(mode=0o600, exist_ok=False)
        out.write_bytes(secret + b"\n")
        pub.write_bytes(public + b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(public.decode())
    return 0


def cmd_mint(args: argparse.Namespace) -> int:
    from ..store.auth import mint

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
    from ..store.check import check, journaled

    count, problems = check(args.data_dir)
    batches = journaled(args.data_dir)
    if batches:
        print(
            f"note: the journal holds {batches} batch(es) not yet in the data file, which this "
            "check reads: the store commits them at its next checkpoint, or redoes them when it "
            "opens; check again then to include them"
        )
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        raise JobstoreError(f"{len(problems)} problem(s) in {count} record(s) in {args.data_dir}")
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


def add_fake_arbiter(subparsers: Any) -> None:
    """Add the ``fake-arbiter`` subcommand; :mod:`jobstore.devtools.fake_arbiter` is imported only
    when it runs, so the fake stays out of the store's import path."""
    p = command(
        subparsers,
        "fake-arbiter",
        _run_fake_arbiter,
        help="run a fake Databox arbiter (development only)",
        description="Serve the Databox arbiter's Zest routes from memory until SIGINT or SIGTERM.",
        epilog="example: jobstore fake-arbiter --store jobs=TOKEN1 --container app1=TOKEN2 "
        "--grant 'app1:jobs:POST:/sensor-jobs/*' --grant 'app1:jobs:GET:/sensor-jobs/*'",
    )
    p.add_argument("--endpoint", help="bind here (tcp://127.0.0.1:4444)")
    p.add_argument("--secret-key-file", help="Z85 CURVE secret key (default: zestdb's example)")
    p.add_argument("--store", action="append", default=[], metavar="NAME=ARBITER_TOKEN")
    p.add_argument("--container", action="append", default=[], metavar="NAME=ARBITER_TOKEN")
    p.add_argument("--grant", action="append", default=[], metavar="NAME:TARGET:METHOD:PATH")
    p.add_argument(
        "--client-caveats",
        action="store_true",
        help="jobstore's extension: add a client caveat to tokens whose request names a client "
        "(the real arbiter never does)",
    )


def _run_fake_arbiter(args: argparse.Namespace) -> int:
    from ..devtools.fake_arbiter import run_cli

    return run_cli(args)
