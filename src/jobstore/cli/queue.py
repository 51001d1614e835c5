"""Queue control commands (``requeue``, ``pause``, ``resume``, ``settings``) and what ``submit``
adds for scheduling (``--priority``, ``--delay``, ``--not-before``, ``--expires``, ``--batch``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from ..client import Driver, JobClient
from ..errors import ConfigError

BATCH = 1000  # jobs per batch request: the store's limit
OPTIONS = ("priority", "delay", "not_before", "expires")

# What the commands need from the rest of the CLI: the common flags, and a driver for the parsed
# arguments.
AddFlags = Callable[[argparse.ArgumentParser, bool], None]
DriverFor = Callable[[argparse.Namespace], Driver]


def add_submit_options(p: argparse.ArgumentParser) -> None:
    """Scheduling flags of ``submit``."""
    p.add_argument("--priority", type=int, help="-100 to 100 (default 0): higher is taken first")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=int, metavar="MS", help="not taken before MS ms from now")
    when.add_argument(
        "--not-before",
        type=int,
        metavar="MS",
        help="not taken before this time (ms since the epoch)",
    )
    p.add_argument(
        "--expires", type=int, metavar="MS", help="fails if still queued then (ms since the epoch)"
    )
    p.add_argument(
        "--batch",
        metavar="FILE",
        help="submit the jobs of FILE (- for stdin), one JSON object per line: "
        '{"request": ..., "job"?, "priority"?, "delay"? or "not_before"?, "expires"?}; '
        "sent 1000 to a request, each request one commit",
    )


def submit_options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in OPTIONS}


def submit_batch(jc: JobClient, args: argparse.Namespace) -> int:
    """``submit --batch``: every result printed; exit 1 when the store refused an item."""
    if args.request is not None:
        raise ConfigError("give a request or --batch FILE, not both")
    if any(value is not None for value in submit_options(args).values()):
        raise ConfigError("with --batch, give each job's priority and times in its line")
    refused = 0
    with _opened(args.batch) as lines:
        for chunk in _chunks(_items(lines, args.batch)):
            results = jc.submit_batch(chunk)
            for result in results:
                if isinstance(result.get("status"), int):  # {job, status, error}: refused
                    refused += 1
                    line = f"{result['job']}  refused ({result['status']}): {result['error']}"
                else:
                    line = f"{result['job']}  {result['status']}  client={result['client']}"
                _show_json_or(result, args.json, line)
    if refused:
        print(f"jobstore: the store refused {refused} job(s) of the batch", file=sys.stderr)
        return 1
    return 0


def _opened(name: str) -> Any:
    if name == "-":
        return _Borrowed(sys.stdin)
    try:
        return open(name, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --batch {name}: {exc.strerror}") from None


class _Borrowed:
    """stdin for a ``with``: not closed at its end."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> TextIO:
        return self.stream

    def __exit__(self, *_: object) -> None:
        pass


def _items(lines: TextIO, name: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name} line {number} is not JSON ({exc.msg}): fix it") from None
        if not isinstance(item, dict) or "request" not in item:
            raise ConfigError(
                f'{name} line {number} must be a JSON object with "request" (and any of job, '
                f"{', '.join(OPTIONS)}), got {line.strip()[:60]}"
            )
        yield item


def _chunks(items: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def add_cli(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_flags: AddFlags,
    driver_for: DriverFor,
) -> None:
    """The queue control commands, run as the datasource's driver."""

    def command(name: str, text: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, epilog=f"example: jobstore {name} sensor-jobs{example}")
        add_flags(p, False)
        return p

    p = command("requeue", "send a failed job back to the queue", " JOB_ID --delay 60000")
    p.add_argument("job", help="job id")
    p.add_argument("--delay", type=int, metavar="MS", help="not taken again before MS ms from now")
    p.set_defaults(func=lambda args: _requeue(args, driver_for))

    for name, paused, text in (
        ("pause", True, "stop drivers taking jobs from a datasource (submits go on)"),
        ("resume", False, "let drivers take jobs from a paused datasource again"),
    ):
        p = command(name, text, "")
        p.set_defaults(func=lambda args, paused=paused: _settings(args, driver_for, paused=paused))

    p = command("settings", "show or change a datasource's queue settings", " --backoff 1000")
    for flag, text in (
        ("--backoff", "first retry delay in ms, doubled per attempt (0: retry at once)"),
        ("--max-backoff", "longest retry delay in ms"),
        ("--max-attempts", "leases that may run out before the job fails"),
        ("--lease", "lease in ms of takes that give none"),
    ):
        p.add_argument(flag, type=int, help=text)
    p.set_defaults(
        func=lambda args: _settings(
            args,
            driver_for,
            backoff=args.backoff,
            max_backoff=args.max_backoff,
            max_attempts=args.max_attempts,
            lease=args.lease,
        )
    )


def _requeue(args: argparse.Namespace, driver_for: DriverFor) -> int:
    with driver_for(args) as driver:
        record = driver.requeue(args.job, delay=args.delay)
    _show_json_or(record, args.json, f"{record['job']} requeued ({record['requeued']} times)")
    return 0


def _settings(args: argparse.Namespace, driver_for: DriverFor, **changes: Any) -> int:
    changes = {k: v for k, v in changes.items() if v is not None}
    with driver_for(args) as driver:
        settings = driver.settings(**changes)
    text = "  ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
    _show_json_or(settings, args.json, f"{args.dsid}: {text}")
    return 0


def _show_json_or(value: Any, as_json: bool, line: str) -> None:
    print(json.dumps(value, indent=2) if as_json else line)
