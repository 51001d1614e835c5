"""Python libraries over the native protocol: :class:`JobClient` for apps, :class:`Driver` for servers.

Every call returns at once with the store's answer (or raises
:class:`~jobstore.errors.RequestFailed` / :class:`~jobstore.errors.Timeout`);
work happens asynchronously in the driver.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

import zmq

from .errors import ClientError, RequestFailed, Timeout
from .hypercat import job_datasource_item
from .notify import open_sealed
from .protocol import cbor

log = logging.getLogger(__name__)

Record = dict[str, Any]
# A macaroon, or a function giving the macaroon for a (method, path): Databox tokens name a method.
Token = str | Callable[[str, str], str] | None
# One request as (method, path, body), built once for the sync and the asyncio libraries.
Call = tuple[str, str, Any]
# The path and body of a subscribe request (always a POST).
Subscription = tuple[str, dict[str, Any]]


def notify_endpoint_for(endpoint: str) -> str:
    """The default notify endpoint beside a request endpoint: the tcp port two above it."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp" or parts.port is None:
        raise ClientError(
            f"cannot guess the notify endpoint for {endpoint}: pass notify_endpoint explicitly"
        )
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    return f"tcp://{host}:{parts.port + 2}"


def token_for(token: Token, method: str, path: str) -> str | None:
    """The macaroon to send with a request: the token itself, or what the token function gives."""
    return token(method, path) if callable(token) else token


def secure(sock: zmq.Socket[Any], server_key: bytes | None) -> None:
    """Set linger 0 and, with a server key, make the socket a CURVE client with a fresh keypair."""
    sock.linger = 0
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret


def no_reply(method: str, path: str, endpoint: str, limit: float) -> Timeout:
    """The Timeout for a request that got no reply."""
    return Timeout(
        f"no reply to {method} {path} from {endpoint} within {limit:g} s: "
        "is the store running there (and is the server key right)?"
    )


class ClientRequests:
    """The requests of the client API (contract section 4) for one client of one datasource."""

    def __init__(self, dsid: str, client: str) -> None:
        self.dsid = dsid
        self.client = client

    def submit(self, request: Any, job: str | None) -> Call:
        """Submit a job, with a fresh GUID unless ``job`` is given."""
        body = {"job": job or uuid.uuid4().hex, "client": self.client, "request": request}
        return "POST", f"/{self.dsid}/job/", body

    def status(self, job: str) -> Call:
        """Read one job's record."""
        return "GET", f"/{self.dsid}/job/{self.client}/{job}", None

    def cancel(self, job: str) -> Call:
        """Cancel one job."""
        return "POST", f"/{self.dsid}/job/cancel", {"job": job, "client": self.client}

    def page(self, since: int, limit: int | None) -> Call:
        """List the client's jobs changed after ``since``."""
        body: dict[str, Any] = {"client": self.client, "since": since}
        if limit is not None:
            body["limit"] = limit
        return "GET", f"/{self.dsid}/job/", body

    def subscription(self) -> Subscription:
        """Subscribe to the client's topic."""
        return f"/sub/{self.dsid}/job", {"client": self.client}


class DriverRequests:
    """The requests of the server API (contract section 5) for one datasource."""

    def __init__(self, dsid: str) -> None:
        self.dsid = dsid
        self.base = f"/server/{dsid}/job"

    def register(self, endpoint: str, description: str, href: str | None) -> Call:
        """Add the datasource to the hypercat catalogue; ``href`` defaults to ``<endpoint>/<dsid>``."""
        return (
            "POST",
            "/cat",
            job_datasource_item(href or f"{endpoint}/{self.dsid}", self.dsid, description),
        )

    def take(self, max: int, lease: int | None, wait: int) -> Call:
        """Take up to ``max`` queued jobs, waiting up to ``wait`` ms for one."""
        body: dict[str, Any] = {"max": max, "wait": wait}
        if lease is not None:
            body["lease"] = lease
        return "POST", f"{self.base}/take", body

    def accept(self, job: str, lease: int | None) -> Call:
        """Accept one named job."""
        body: dict[str, Any] = {"job": job}
        if lease is not None:
            body["lease"] = lease
        return "POST", f"{self.base}/accept", body

    def report(self, job: str, status: str, fields: dict[str, Any]) -> Call:
        """Report a status; fields that are None are left out."""
        body = {"job": job, "status": status}
        body.update((k, v) for k, v in fields.items() if v is not None)
        return "POST", f"{self.base}/status", body

    def page(self, since: int, filters: dict[str, Any]) -> Call:
        """List the datasource's jobs changed after ``since`` (filters: status, client, limit)."""
        return "GET", f"{self.base}/", {"since": since, **filters}

    def subscription(self) -> Subscription:
        """Subscribe to the datasource's server topic."""
        return f"/sub{self.base}", {}


class Connection:
    """One DEALER socket to the store's request endpoint, matching replies by id."""

    def __init__(
        self,
        endpoint: str,
        *,
        token: Token = None,
        server_key: bytes | str | None = None,
        timeout: float = 5.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.token = token
        self.server_key = server_key.encode() if isinstance(server_key, str) else server_key
        self.timeout = timeout
        self.context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self.socket = self.new_socket(zmq.DEALER)
        self.socket.connect(endpoint)

    def new_socket(self, kind: int) -> zmq.Socket[bytes]:
        """A socket with this connection's security settings (CURVE when a server key is set)."""
        sock: zmq.Socket[bytes] = self.context.socket(kind)
        secure(sock, self.server_key)
        return sock

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return the reply body; raise RequestFailed on an error status."""
        rid = next(self._ids)
        token = token_for(self.token, method, path)
        self.socket.send(cbor.encode_request(method, path, body, token=token, id=rid))
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(int(left * 1000) + 1):
                raise no_reply(method, path, self.endpoint, limit)
            reply = cbor.decode_reply(self.socket.recv())
            if reply.id != rid:
                continue  # the late answer to a call that already timed out
            if reply.status >= 400:
                raise RequestFailed(reply.status, reply.error or "(no error text)", reply.body)
            return reply.body

    def close(self) -> None:
        self.socket.close()


class JobClient:
    """An app's view of one job queue (datasource) as one client."""

    def __init__(
        self,
        endpoint: str,
        dsid: str,
        client: str,
        token: Token = None,
        *,
        server_key: bytes | str | None = None,
        notify_endpoint: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.conn = Connection(endpoint, token=token, server_key=server_key, timeout=timeout)
        self.dsid = dsid
        self.client = client
        self.notify_endpoint = notify_endpoint
        self._requests = ClientRequests(dsid, client)

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def submit(self, request: Any, job: str | None = None) -> Record:
        """Submit a job (a fresh GUID unless ``job`` is given); returns the record at once."""
        record: Record = self.conn.call(*self._requests.submit(request, job))
        return record

    def status(self, job: str) -> Record:
        """The job's current record."""
        record: Record = self.conn.call(*self._requests.status(job))
        return record

    def cancel(self, job: str) -> Record:
        """Cancel a job: at once when queued; as a request to the server once accepted."""
        record: Record = self.conn.call(*self._requests.cancel(job))
        return record

    def page(self, since: int = 0, limit: int | None = None) -> tuple[list[Record], int | None]:
        """One page of this client's jobs changed after ``since``, and the ``since`` of the next."""
        reply = self.conn.call(*self._requests.page(since, limit))
        return reply["jobs"], reply["next"]

    def jobs(self, since: int = 0) -> Iterator[Record]:
        """Every job of this client changed after ``since``, oldest change first, across pages."""
        cursor: int | None = since
        while cursor is not None:
            page, cursor = self.page(cursor)
            yield from page

    def watch(self, since: int = 0, *, idle: float = 1.0, timeout: float | None = None) -> Watch:
        """Every change to this client's jobs after ``since``, then live changes.

        Subscribes to the client's sealed topic at once; see :class:`Watch`.
        """
        endpoint = self.notify_endpoint or notify_endpoint_for(self.conn.endpoint)
        subscribe = self._requests.subscription()
        return Watch(self.conn, endpoint, subscribe, self.jobs, since, idle, timeout)


class WatchCursor:
    """A watch's decisions, without sockets: what to yield, when to catch up, when to give up.

    ``last`` is the seq of the last record yielded; ``stale`` says the live stream
    cannot be trusted until the watch has listed with ``since = last``.
    """

    def __init__(self, since: int, idle: float, timeout: float | None) -> None:
        self.last = since
        self.stale = True  # catch up before trusting the live stream
        self.idle = idle
        self.timeout = timeout
        self._quiet_since = time.monotonic()

    def listed(self, record: Record) -> bool:
        """Whether a record found by catching up is new, and so is to be yielded."""
        if record["seq"] <= self.last:
            return False
        self.last = record["seq"]
        return True

    def notified(self, msg: dict[str, Any]) -> Record | None:
        """The record of an opened notification to yield, or None (seen already, or after a gap)."""
        record: Record = msg["record"]
        if record["seq"] <= self.last:
            return None
        if msg["prev"] != self.last:
            self.stale = True
            return None
        self.last = record["seq"]
        return record

    def connected(self) -> None:
        """The SUB socket (re)connected: anything published meanwhile was lost."""
        self.stale = True

    def quiet(self, seq: int) -> None:
        """Nothing arrived for a while; ``seq`` is the store's last seq on the topic now."""
        self.stale = seq != self.last

    def delivered(self) -> None:
        """The consumer came back for more after a record: the timeout counts from now."""
        self._quiet_since = time.monotonic()

    def wait(self) -> float:
        """Seconds to wait for the next event; raise Timeout when the watch's timeout has run out."""
        wait = self.idle
        if self.timeout is not None:
            wait = min(wait, self._quiet_since + self.timeout - time.monotonic())
            if wait <= 0:
                raise Timeout(f"no change to watch within {self.timeout:g} s")
        return wait


class Watch:
    """Every change of a topic after ``since``: caught up by listing, then followed live.

    Subscribes at once (so nothing after creation is missed, even before the first
    ``next``), and lists with ``since`` on start, on a gap in ``prev``, on
    (re)connection, and when the topic has been quiet for ``idle`` seconds while
    the store's seq for it moved on. Catching up yields each job's latest record,
    so intermediate states of a job may be skipped (its ``history`` lists them), but
    never its last one. With ``timeout``, ``next`` raises Timeout (and the watch
    ends) when no change arrives for that many seconds. Close it (or use ``with``)
    to release its sockets.
    """

    def __init__(
        self,
        conn: Connection,
        notify_endpoint: str,
        subscribe: tuple[str, dict[str, Any]],
        catch_up: Callable[[int], Iterator[Record]],
        since: int,
        idle: float,
        timeout: float | None = None,
    ) -> None:
        self._conn, self._subscribe, self._catch_up = conn, subscribe, catch_up
        self._cursor = WatchCursor(since, idle, timeout)
        info = conn.call("POST", *subscribe)
        self._key: bytes = info["key"]
        self._sub = conn.new_socket(zmq.SUB)
        # A unique address: a socket's FD (pyzmq's default name) is reused once it is closed.
        self._monitor = self._sub.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED,
            addr=f"inproc://watch-{uuid.uuid4().hex}",
        )
        self._sub.setsockopt(zmq.SUBSCRIBE, info["topic"].encode())
        self._sub.connect(notify_endpoint)
        self._records = self._follow()

    @property
    def last(self) -> int:
        """The seq of the last record yielded (``since`` until then)."""
        return self._cursor.last

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Record:
        return next(self._records)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._records.close()
        self._sub.disable_monitor()
        self._monitor.close()
        self._sub.close()

    def _follow(self) -> Generator[Record, None, None]:
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        cursor = self._cursor
        while True:
            if cursor.stale:
                for listed in self._catch_up(cursor.last):
                    if cursor.listed(listed):
                        yield listed
                        cursor.delivered()
                cursor.stale = False
            events = dict(poller.poll(max(1, int(cursor.wait() * 1000))))
            if self._monitor in events:
                self._monitor.recv_multipart()
                cursor.connected()
            if self._sub in events:
                _topic, sealed = self._sub.recv_multipart()
                record = cursor.notified(open_sealed(self._key, sealed))
                if record is not None:
                    yield record
                    cursor.delivered()
            elif not events:
                cursor.quiet(self._conn.call("POST", *self._subscribe)["seq"])


class JobContext:
    """What a :meth:`Driver.run` handler sees of the job it is running."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self._progress: Any = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return str(self.record["job"])

    @property
    def request(self) -> Any:
        return self.record["request"]

    @property
    def cancel_requested(self) -> bool:
        """True once the client asked to cancel; the handler decides (raise JobCancelled to stop)."""
        return self._cancel.is_set()

    def progress(self, value: Any) -> None:
        """Report progress; it is sent with the next lease renewal (at once if none is due)."""
        with self._lock:
            self._progress = value

    def _pop_progress(self) -> Any:
        """The progress set since the last call, or None (for the driver's renewal loop)."""
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def _renewed(self, record: Record) -> None:
        """Take in the record a renewal returned (for the driver's renewal loop)."""
        if record.get("cancel_requested"):
            self._cancel.set()


class JobCancelled(Exception):
    """Raise from a handler to report the job ``cancelled``."""


class RetryJob(Exception):
    """Raise from a handler to hand the job back for another attempt (``retrying``)."""


class ForbidJob(Exception):
    """Raise from a handler to report the job ``forbidden``."""


def handler_outcome(exc: Exception) -> tuple[str, Any]:
    """The status and response a driver reports for a handler that raised ``exc``."""
    if isinstance(exc, JobCancelled):
        return "cancelled", _error_text(exc) if str(exc) else None
    if isinstance(exc, RetryJob):
        return "retrying", _error_text(exc) if str(exc) else None
    if isinstance(exc, ForbidJob):
        return "forbidden", {"error": _error_text(exc)}
    return "failed", {"error": _error_text(exc)}


class Driver:
    """A server (driver) taking and running jobs of one datasource."""

    def __init__(
        self,
        endpoint: str,
        dsid: str,
        token: Token = None,
        *,
        server_key: bytes | str | None = None,
        notify_endpoint: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.conn = Connection(endpoint, token=token, server_key=server_key, timeout=timeout)
        self.dsid = dsid
        self.notify_endpoint = notify_endpoint
        self._requests = DriverRequests(dsid)

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def register(self, description: str, href: str | None = None) -> Record:
        """Add this job datasource to the store's hypercat catalogue (store type job, an actuator).

        ``href`` defaults to ``<request endpoint>/<dsid>``, the form Databox apps resolve.
        """
        record: Record = self.conn.call(
            *self._requests.register(self.conn.endpoint, description, href)
        )
        return record

    def take(self, max: int = 1, *, lease: int | None = None, wait: int = 0) -> list[Record]:
        """Take up to ``max`` queued jobs (now accepted), waiting up to ``wait`` ms for one."""
        timeout = self.conn.timeout + wait / 1000
        reply = self.conn.call(*self._requests.take(max, lease, wait), timeout=timeout)
        jobs: list[Record] = reply["jobs"]
        return jobs

    def accept(self, job: str, *, lease: int | None = None) -> Record:
        """Accept one named job."""
        record: Record = self.conn.call(*self._requests.accept(job, lease))
        return record

    def report(self, job: str, status: str, **fields: Any) -> Record:
        """Report a status (with ``response``, ``progress`` or ``lease``) for a job."""
        record: Record = self.conn.call(*self._requests.report(job, status, fields))
        return record

    def progress(self, job: str, progress: Any, *, lease: int | None = None) -> Record:
        """Report progress and renew the lease."""
        return self.report(job, "accepted", progress=progress, lease=lease)

    def complete(self, job: str, response: Any = None) -> Record:
        return self.report(job, "complete", response=response)

    def fail(self, job: str, response: Any = None) -> Record:
        return self.report(job, "failed", response=response)

    def retry(self, job: str, response: Any = None) -> Record:
        return self.report(job, "retrying", response=response)

    def forbid(self, job: str, response: Any = None) -> Record:
        return self.report(job, "forbidden", response=response)

    def cancelled(self, job: str, response: Any = None) -> Record:
        return self.report(job, "cancelled", response=response)

    def jobs(self, since: int = 0, **filters: Any) -> Iterator[Record]:
        """Every job of the datasource changed after ``since`` (filters: status, client)."""
        cursor: int | None = since
        while cursor is not None:
            reply = self.conn.call(*self._requests.page(cursor, filters))
            yield from reply["jobs"]
            cursor = reply["next"]

    def watch(self, since: int = 0, *, idle: float = 1.0, timeout: float | None = None) -> Watch:
        """Every change in the datasource after ``since``, then live changes (see :class:`Watch`)."""
        endpoint = self.notify_endpoint or notify_endpoint_for(self.conn.endpoint)
        return Watch(
            self.conn, endpoint, self._requests.subscription(), self.jobs, since, idle, timeout
        )

    def run(
        self,
        handler: Callable[[JobContext], Any],
        *,
        lease: int = 30_000,
        wait: int = 1000,
        max_jobs: int | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Take jobs one at a time and run ``handler`` on each until ``stop`` is set.

        The handler's return value completes the job; an exception fails it with
        the error text in ``response`` (JobCancelled, RetryJob and ForbidJob
        report those outcomes). The lease is renewed while the handler runs, and
        ``ctx.cancel_requested`` turns true when the client cancels. Returns the
        number of jobs run.
        """
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            for record in self.take(1, lease=lease, wait=wait):
                self._run_one(handler, JobContext(record), lease)
                done += 1
        return done

    def _run_one(self, handler: Callable[[JobContext], Any], ctx: JobContext, lease: int) -> None:
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["response"] = handler(ctx)
                outcome["status"] = "complete"
            except Exception as exc:
                outcome["status"], outcome["response"] = handler_outcome(exc)
                if outcome["status"] == "failed":
                    log.exception("job %s failed", ctx.id)

        thread = threading.Thread(target=work, name=f"job-{ctx.id}", daemon=True)
        thread.start()
        renew_every = max(lease / 3000, 0.05)
        next_renew = time.monotonic() + renew_every
        try:
            while thread.is_alive():
                thread.join(0.05)
                progress = ctx._pop_progress()
                if progress is not None or time.monotonic() >= next_renew:
                    ctx._renewed(self.report(ctx.id, "accepted", progress=progress, lease=lease))
                    next_renew = time.monotonic() + renew_every
            self.report(ctx.id, outcome["status"], response=outcome.get("response"))
        except RequestFailed as exc:
            if exc.status != 409:
                raise
            log.warning("job %s changed under the driver and was not reported: %s", ctx.id, exc)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
