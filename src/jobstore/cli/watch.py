"""``jobstore watch``: a live view of a datasource's jobs, fed by its subscription.

:class:`~jobstore.cli.watchstate.WatchState` is the pure part. :func:`run_watch` follows a
:class:`~jobstore.client.Watch` in a thread, folds what arrives into the state and
draws it a few times a second with one of the views of :mod:`~jobstore.cli.watchview`.
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol, TextIO

from ..client import Driver, JobClient, Record, notify_endpoint_for
from ..errors import ClientError, ConfigError, RequestFailed, Timeout
from .options import add_arbiter_flags, command, env_flag, token
from .watchstate import WatchState
from .watchview import JsonView, LiveView, Output, PlainView, View, choose_output

QUIET = 1.0  # seconds a watch may be quiet before the feeder thread looks up (to stop or reopen)
RETRY = 1.0  # seconds between attempts to reach a store that stopped answering
QUEUE_EVERY = 1.0  # seconds between reads of a watched datasource's delayed count and pause
REFUSED = (401, 403)  # a client's token may not cover the datasource's stats


# Following a store


class RecordStream(Protocol):
    """An iterator of job records that can be closed, such as a :class:`~jobstore.client.Watch`."""

    def __iter__(self) -> Iterator[Record]: ...

    def __next__(self) -> Record: ...

    def close(self) -> None: ...


class Source(Protocol):
    """What :func:`run_watch` follows: a Driver (a whole datasource) or a JobClient (one client)."""

    dsid: str

    def watch(
        self, since: int = 0, *, idle: float = 1.0, timeout: float | None = None
    ) -> RecordStream: ...


class Clock(Protocol):
    """Where :func:`run_watch` reads the time and waits; tests pass one they move by hand."""

    def now(self) -> float:
        """Seconds on a clock that only moves forward."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> None:
        """Return when ``event`` is set or ``seconds`` of this clock have passed."""
        ...


class MonotonicClock:
    """The real clock: time.monotonic, and waiting on the event itself."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> None:
        event.wait(seconds)


def subscription_seq(source: Source) -> int:
    """The seq of the last change on the source's topic now: later ones are live, earlier history.

    Any source other than a Driver or JobClient has no topic to ask: 0, all of it is live.
    """
    if isinstance(source, JobClient):
        reply = source.conn.call("POST", f"/sub/{source.dsid}/job", {"client": source.client})
    elif isinstance(source, Driver):
        reply = source.conn.call("POST", f"/sub/server/{source.dsid}/job", {})
    else:
        return 0
    return int(reply["seq"])


class _Feeder:
    """Follows a source in a thread, handing its records to the drawing loop through a queue.

    The watch's sockets are used by this thread alone. A watch that is quiet for
    QUIET seconds ends with Timeout; the thread then stops if asked, or reopens it
    from the last seq, so nothing is missed. While the store does not answer,
    ``problem`` says so and the thread keeps trying.
    """

    def __init__(self, source: Source, first: RecordStream) -> None:
        self.records: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self.ended = threading.Event()
        self.error: Exception | None = None
        self.problem: str | None = None
        self._source = source
        # (delayed, paused) of the datasource, read from its stats; delayed is None for a
        # client's watch, which counts its own delayed jobs.
        self.queue: tuple[int | None, bool] | None = None
        self._queue_at = -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(first,), name="jobstore-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (within a reply timeout and a quiet period)."""
        self._stop.set()
        self._thread.join(QUIET + 10)

    def drain_into(self, state: WatchState) -> None:
        """Apply every record received so far."""
        while True:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                break
            state.apply(record)
        if self.queue is not None:
            state.set_queue(*self.queue)

    def _read_queue(self) -> None:
        """Read the datasource's delayed count and pause from its stats, at most every
        QUEUE_EVERY seconds; a client's watch takes only the pause, and stops asking if
        its token does not cover the stats."""
        source = self._source
        if (
            not isinstance(source, Driver | JobClient)
            or time.monotonic() - self._queue_at < QUEUE_EVERY
        ):
            return
        self._queue_at = time.monotonic()
        try:
            stats = source.conn.call("GET", f"/server/{source.dsid}/stats")
        except RequestFailed as exc:
            if exc.status in REFUSED and isinstance(source, JobClient):
                self._queue_at = math.inf
            return
        except ClientError:
            return  # the records' stream says what is wrong with the store
        delayed = int(stats.get("delayed", 0)) if isinstance(source, Driver) else None
        self.queue = (delayed, bool(stats.get("paused", False)))

    def _run(self, stream: RecordStream | None) -> None:
        since = 0
        try:
            self._read_queue()
            while stream is not None:
                try:
                    for record in stream:
                        self.records.put(record)
                        since = record["seq"]
                        if self._stop.is_set():
                            return
                        self._read_queue()
                    return  # the source ended: only a finite (test) source does
                except Timeout:
                    self._read_queue()  # quiet, or a reply was late: look up, go on from `since`
                except RequestFailed as exc:
                    if exc.status < 500:
                        raise
                    self.problem = f"the store answered {exc.status}: {exc.message}"
                finally:
                    stream.close()
                stream = self._reopen(since)
        except Exception as exc:
            self.error = exc
        finally:
            self.ended.set()

    def _reopen(self, since: int) -> RecordStream | None:
        while not self._stop.is_set():
            try:
                stream = self._source.watch(since, timeout=QUIET)
            except Timeout as exc:
                self.problem = f"{exc.message}; retrying"
            except RequestFailed as exc:
                if exc.status < 500:
                    raise
                self.problem = f"the store answered {exc.status}: {exc.message}; retrying"
            else:
                self.problem = None
                return stream
            self._stop.wait(RETRY)
        return None


def run_watch(
    source: Source,
    *,
    interval: float = 0.25,
    seconds: float | None = None,
    output: Output = "auto",
    out: TextIO | None = None,
    window: float = 5.0,
    clock: Clock | None = None,
) -> int:
    """Follow ``source`` and draw its state every ``interval`` s until ``seconds`` have passed.

    ``source`` is a :class:`Driver` for the whole datasource, or a :class:`JobClient`
    for its client's jobs. Records are taken in by a thread and folded into a
    :class:`WatchState` once per draw, so the view keeps up with thousands of changes
    a second. ``output``: ``live`` (rich), ``plain`` (a line per draw, at most one a
    second), ``json`` (an object per draw) or ``auto``. Runs until interrupted when
    ``seconds`` is None. Errors of the first subscription (unreachable store, a token
    refused) are raised; later the view shows them and keeps trying. ``clock`` times the
    draws, the deadline and the throughput (by default the monotonic clock).
    """
    clock = clock or MonotonicClock()
    out = out or sys.stdout
    output, why = choose_output(output, out)
    if why:
        print(f"jobstore watch: {why}; printing a summary line a second", file=sys.stderr)
    client = source.client if isinstance(source, JobClient) else None
    label = source.dsid if client is None else f"{source.dsid} (client {client})"
    state = WatchState(baseline_seq=subscription_seq(source), window=window, clock=clock.now)
    feeder = _Feeder(source, source.watch(0, timeout=QUIET))
    period = max(interval, 1.0) if output == "plain" else interval
    view: View
    try:
        if output == "live":
            view = LiveView(out, label)
        elif output == "json":
            view = JsonView(out, source.dsid, client)
        else:
            view = PlainView(out, label)
    except BaseException:
        feeder.stop()
        raise
    try:
        now = clock.now()
        deadline = math.inf if seconds is None else now + seconds
        next_draw = now + period
        while True:
            # Wake to draw, or at once when the feeder ends (a finite source, or an error).
            clock.wait(feeder.ended, max(0.0, min(next_draw, deadline) - clock.now()))
            feeder.drain_into(state)
            if feeder.error is not None:
                raise feeder.error
            now = clock.now()
            if feeder.ended.is_set() or now >= deadline:
                break
            if now >= next_draw:
                view.draw(state, feeder.problem)
                next_draw += period
                if next_draw <= now:  # drawing fell behind: skip the missed frames
                    next_draw = now + period
        view.draw(state, feeder.problem)
    finally:
        feeder.stop()
        view.close()
    return 0


# The command


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def add_cli(subparsers: Any) -> None:
    """Add the ``watch`` subcommand to an argparse subparsers object."""
    p = command(
        subparsers,
        "watch",
        cmd_watch,
        help="a live view of a datasource's jobs",
        description="Follow a datasource through its subscription and show the jobs in each "
        "status, changes and finished jobs per second, the latest changes, and a progress bar "
        'for each running job reporting {"done": n, "total": m}. On a terminal with rich '
        "installed (pip install 'jobstore[watch]') the view is redrawn in place; otherwise "
        "one summary line is printed a second.",
        epilog="examples:\n"
        "  jobstore watch sensor-jobs\n"
        '  jobstore watch sensor-jobs --client app1 --token "$APP1_TOKEN"\n'
        "  jobstore watch sensor-jobs --json --seconds 10 --interval 1 | jq .counts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dsid", help="datasource (job queue) id")
    p.add_argument(
        "--client",
        help="only this client's jobs, with that client's token (default: the whole "
        "datasource, with a driver's token)",
    )
    env_flag(
        p, "--endpoint", "tcp://127.0.0.1:5555", help="store request endpoint (JOBSTORE_ENDPOINT)"
    )
    p.add_argument(
        "--notify-endpoint",
        help="store notify endpoint (default: the request endpoint's tcp port + 2)",
    )
    env_flag(p, "--token", help="macaroon (JOBSTORE_TOKEN)")
    env_flag(p, "--server-key", help="store's CURVE public key, Z85 (JOBSTORE_SERVER_KEY)")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--plain", action="store_true", help="a summary line a second, even on a terminal"
    )
    how.add_argument(
        "--json", action="store_true", help="a JSON object with the state every interval"
    )
    p.add_argument(
        "--interval",
        type=_positive,
        default=0.25,
        help="seconds between redraws or JSON objects (0.25; plain lines: at least 1)",
    )
    p.add_argument("--seconds", type=_positive, help="stop after this many seconds")
    add_arbiter_flags(p)


def cmd_watch(args: argparse.Namespace) -> int:
    """The ``watch`` command: a Driver or (with --client) a JobClient, then :func:`run_watch`.

    With --arbiter the tokens come from the arbiter: a whole datasource is watched as its
    driver (path /*); --client as that app (/DSID/* with its client caveat). The subscribe
    needs the caveats of a GET of the watched jobs, observe = data included: the GET token
    covers it (a token without an observe caveat is broader), so the view asks the arbiter
    for GET and POST tokens.
    """
    args.token = token(args, f"/{args.dsid}/*" if args.client else "/*", args.client)
    notify = args.notify_endpoint
    if notify is None:
        try:
            notify = notify_endpoint_for(args.endpoint)
        except ClientError:
            raise ConfigError(
                f"cannot guess the notify endpoint for {args.endpoint}: pass --notify-endpoint"
            ) from None
    output: Output = "json" if args.json else "plain" if args.plain else "auto"
    source: Driver | JobClient
    if args.client:
        source = JobClient(
            args.endpoint,
            args.dsid,
            args.client,
            args.token,
            server_key=args.server_key,
            notify_endpoint=notify,
        )
    else:
        source = Driver(
            args.endpoint, args.dsid, args.token, server_key=args.server_key, notify_endpoint=notify
        )
    with source:
        return run_watch(source, interval=args.interval, seconds=args.seconds, output=output)
