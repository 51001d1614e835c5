"""The ``jobstore`` command: parse -> config -> library call.

:mod:`.options` holds what the commands share (flag families, tokens, exit statuses);
:mod:`.jobs` an app's commands and ``health``, :mod:`.work` the driver, :mod:`.admin` the
operator's, :mod:`.watch` the live view.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import zmq

from .. import __version__
from ..errors import ClientError, ConfigError, JobstoreError, RequestFailed
from .admin import add_cli as add_admin
from .admin import add_fake_arbiter, add_serve
from .jobs import add_app_commands, add_health, add_queue_commands
from .options import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    env_setting,
    log_level,
)
from .watch import add_cli as add_watch
from .work import add_work

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


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
    add_app_commands(sub)
    add_work(sub)
    add_health(sub)
    add_queue_commands(sub)
    add_admin(sub)
    add_watch(sub)
    add_fake_arbiter(sub)
    for command in sub.choices.values():
        # SUPPRESS: given only before the command, the top-level value stays.
        command.add_argument("--log-level", type=log_level, default=argparse.SUPPRESS)
    return parser


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
    except JobstoreError as exc:
        print(f"jobstore: {exc.message}", file=sys.stderr)
        if isinstance(exc, ClientError):
            return EXIT_UNREACHABLE
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
