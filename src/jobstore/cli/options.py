"""What the commands share: exit statuses, flag values, the flag families and where tokens come from.

Every flag whose default the environment can set is declared through :func:`env_flag`,
so ``--some-flag`` reads ``JOBSTORE_SOME_FLAG`` in one place.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zmq.utils import z85

from ..client import Token, load_or_create_client_id
from ..databox.startup import DEFAULT_SECRETS_DIR, ArbiterTokens
from ..errors import ConfigError

EXIT_FAILED = 1  # the store answered with an error
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3  # no answer in time
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command killed by SIGPIPE (`jobs ... | head`)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def env_setting(name: str, default: Any = None) -> Any:
    """``JOBSTORE_<name>`` from the environment, else ``default``: every command flag's default."""
    return os.environ.get(f"JOBSTORE_{name}", default)


def env_flag(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    default: Any = None,
    *,
    env: str | None = None,
    **kwargs: Any,
) -> None:
    """Add ``flag`` with its default from ``JOBSTORE_<FLAG>`` (or ``JOBSTORE_<env>``), else ``default``.

    An ``int`` flag's environment value is converted here, when the parser is built, as a
    number the operator set once.
    """
    value = env_setting(env or flag.removeprefix("--").upper().replace("-", "_"), default)
    if kwargs.get("type") is int:
        value = int(value)
    p.add_argument(flag, default=value, **kwargs)


def command(
    sub: Any, name: str, run: Callable[[argparse.Namespace], int], **parser: Any
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (``parser``: its help, description, epilog…), run by ``run``."""
    p: argparse.ArgumentParser = sub.add_parser(name, **parser)
    p.set_defaults(func=run)
    return p


def log_level(text: str) -> str:
    """A --log-level value, any case; argparse reports anything else as a usage error."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level: use one of {', '.join(LOG_LEVELS)} (any case)"
        )
    return text.upper()


def endpoint(text: str) -> str:
    """An endpoint flag's value: tcp://HOST:PORT or ipc:///PATH (ZeroMQ says only "Invalid argument")."""
    if not text.startswith(("tcp://", "ipc://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an endpoint: write tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555) "
            "or ipc:///PATH"
        )
    return text


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
    secrets = os.environ.get("JOBSTORE_SECRETS_DIR", DEFAULT_SECRETS_DIR)
    try:
        return (Path(secrets) / name).read_text().strip() or None
    except OSError:
        return None


def _store_name(endpoint: str | None) -> str | None:
    """The store's name in a Databox endpoint such as tcp://jobstore-sensor:5555."""
    host = urlsplit(endpoint).hostname if endpoint else None
    return host if host and host not in ("127.0.0.1", "localhost", "0.0.0.0") else None


def key_flag(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, help: str, env: str
) -> None:
    """A CURVE public key flag: ``JOBSTORE_<env>``, else the container's mounted ZMQ_PUBLIC_KEY."""
    env_flag(p, flag, _secret_file("ZMQ_PUBLIC_KEY"), env=env, type=curve_key, help=help)


def add_timeout_flag(p: argparse.ArgumentParser, replies: str) -> None:
    p.add_argument(
        "--timeout", type=float, default=5.0, help=f"seconds to wait for {replies} (default 5)"
    )


def add_client_flags(p: argparse.ArgumentParser, client: bool) -> None:
    """Flags of the client commands; defaults come from JOBSTORE_* or what Databox gives a container."""
    p.add_argument("dsid", help="datasource (job queue) id")
    env_flag(
        p,
        "--endpoint",
        os.environ.get("DATABOX_ZMQ_ENDPOINT", "tcp://127.0.0.1:5555"),
        type=endpoint,
        help="store request endpoint (JOBSTORE_ENDPOINT, else DATABOX_ZMQ_ENDPOINT)",
    )
    env_flag(p, "--token", help="macaroon (JOBSTORE_TOKEN)")
    key_flag(
        p,
        "--server-key",
        "store's CURVE public key, Z85 (JOBSTORE_SERVER_KEY, else /run/secrets/ZMQ_PUBLIC_KEY)",
        "SERVER_KEY",
    )
    add_timeout_flag(p, "each reply")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    add_arbiter_flags(p)
    if client:
        env_flag(p, "--client", help="client id (JOBSTORE_CLIENT, default cli)")
        env_flag(
            p,
            "--client-file",
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
    env_flag(
        databox,
        "--arbiter-token",
        _secret_file("ARBITER_TOKEN"),
        help="this container's arbiter token (else /run/secrets/ARBITER_TOKEN)",
    )
    key_flag(
        databox,
        "--arbiter-key",
        "the arbiter's CURVE public key (else /run/secrets/ZMQ_PUBLIC_KEY)",
        "ARBITER_KEY",
    )
    env_flag(
        databox,
        "--target",
        _store_name(os.environ.get("DATABOX_ZMQ_ENDPOINT")),
        help="the store's name (else the host of DATABOX_ZMQ_ENDPOINT)",
    )
    databox.add_argument(
        "--as", dest="identity", help="this container's name (default: the hostname)"
    )


def token(args: argparse.Namespace, path: str, client: str | None = None) -> Token:
    """The command's token: --token, or with --arbiter one asked of the arbiter for ``path``."""
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


def client_id(args: argparse.Namespace) -> str:
    """--client, or the id kept in --client-file; ``cli`` without either."""
    if not args.client_file:
        return args.client or "cli"
    if args.client:
        raise ConfigError("give --client or --client-file (JOBSTORE_CLIENT_FILE), not both")
    return load_or_create_client_id(args.client_file)
