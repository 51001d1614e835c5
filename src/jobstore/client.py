"""Python libraries over the native protocol: :class:`JobClient` for apps, :class:`Driver` for servers.

Every call returns at once with the store's answer (or raises
:class:`~jobstore.errors.RequestFailed` / :class:`~jobstore.errors.Timeout`);
work happens asynchronously in the driver.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

import zmq

from .calls import (
    ClientRequests,
    DriverRequests,
    ForbidJob,
    JobCancelled,
    JobContext,
    Outage,
    Record,
    RetryJob,
    SetupError,
    Token,
    WatchCursor,
    client_id,
    handler_outcome,
    load_or_create_client_id,
    new_client_id,
    no_reply,
    notify_endpoint_for,
    secure,
    store_unavailable,
    token_for,
)
from .errors import ClientError, RequestFailed
from .protocol import cbor
from .protocol.sealed import open_sealed

log = logging.getLogger(__name__)

__all__ = [
    "Connection",
    "Driver",
    "ForbidJob",
    "JobCancelled",
    "JobClient",
    "JobContext",
    "Record",
    "RetryJob",
    "SetupError",
    "Token",
    "Watch",
    "load_or_create_client_id",
    "new_client_id",
    "notify_endpoint_for",
]


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
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        frame = cbor.encode_request(method, path, body, token=token, id=rid)
        # A send to a store that is down blocks once the queue fills: bound it by the timeout too.
        if not self.socket.poll(max(1, int(limit * 1000)), zmq.POLLOUT):
            raise no_reply(method, path, self.endpoint, limit)
        self.socket.send(frame, zmq.NOBLOCK)
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

    def reconnect(self) -> None:
        """Replace the socket, dropping requests still queued for a store that is away: ZeroMQ
        would deliver them when it comes back, a take among them handing a job to nobody."""
        self.socket.close()
        self.socket = self.new_socket(zmq.DEALER)
        self.socket.connect(self.endpoint)

    def close(self) -> None:
        self.socket.close()


class JobClient:
    """An app's view of one job queue (datasource) as one client."""

    def __init__(
        self,
        endpoint: str,
        dsid: str,
        client: str | None = None,
        token: Token = None,
        *,
        client_file: str | os.PathLike[str] | None = None,
        server_key: bytes | str | None = None,
        notify_endpoint: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        # ``client_file`` keeps a generated secret id (see calls.load_or_create_client_id).
        self.client = client_id(client, client_file)
        self.conn = Connection(endpoint, token=token, server_key=server_key, timeout=timeout)
        self.dsid = dsid
        self.notify_endpoint = notify_endpoint
        self._requests = ClientRequests(dsid, self.client)

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
                # Everything that has arrived, for one poll: notifications come in bursts.
                while not cursor.stale:
                    try:
                        _topic, sealed = self._sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    record = cursor.notified(open_sealed(self._key, sealed))
                    if record is not None:
                        yield record
                        cursor.delivered()
            elif not events:
                cursor.quiet(self._conn.call("POST", *self._subscribe)["seq"])


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
        self._outage = Outage()

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
        self._requests.handed(jobs)
        return jobs

    def accept(self, job: str, *, lease: int | None = None) -> Record:
        """Accept one named job."""
        record: Record = self.conn.call(*self._requests.accept(job, lease))
        self._requests.handed([record])
        return record

    def report(self, job: str, status: str, **fields: Any) -> Record:
        """Report a status (with ``response``, ``progress`` or ``lease``) for a job.

        The report carries the attempt this driver was handed the job with, so it is refused
        (409) once the job's lease has run out and it was handed out again.
        """
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
        report those outcomes; SetupError hands the job back and ends ``run`` by
        raising it). The lease is renewed while the handler runs, and
        ``ctx.cancel_requested`` turns true when the client cancels. While the
        store does not answer, ``run`` logs it once and tries again with backoff
        (a job's outcome too, until the store takes it or ``stop`` is set). On
        KeyboardInterrupt the job in hand is handed back (``retrying``) and the
        interrupt goes on. Returns the number of jobs run.
        """
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            try:
                records = self.take(1, lease=lease, wait=wait)
            except ClientError as exc:
                if not store_unavailable(exc):
                    raise
                stop.wait(self._store_away(exc))
                continue
            except KeyboardInterrupt:
                log.info("interrupted while waiting for a job: no job to hand back")
                raise
            self._store_back()
            for record in records:
                self._run_one(handler, JobContext(record), lease, stop)
                done += 1
        return done

    def _store_away(self, exc: ClientError) -> float:
        """Log the start of an outage, drop what is queued, and say how long to wait."""
        delay, message = self._outage.failed(exc)
        if message is not None:
            log.warning(message)
        self.conn.reconnect()
        return delay

    def _store_back(self) -> None:
        message = self._outage.answered()
        if message is not None:
            log.warning(message)

    def _run_one(
        self,
        handler: Callable[[JobContext], Any],
        ctx: JobContext,
        lease: int,
        stop: threading.Event,
    ) -> None:
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["response"] = handler(ctx)
                outcome["status"] = "complete"
            except Exception as exc:
                outcome["status"], outcome["response"] = handler_outcome(exc)
                if isinstance(exc, SetupError):
                    outcome["setup"] = exc
                elif outcome["status"] == "failed":
                    log.exception("job %s failed", ctx.id)

        thread = threading.Thread(target=work, name=f"job-{ctx.id}", daemon=True)
        thread.start()
        renew_every = max(lease / 3000, 0.05)
        next_renew = time.monotonic() + renew_every
        try:
            while thread.is_alive():
                thread.join(0.05)
                progress = ctx._pop_progress()
                # Progress goes at once, but not while the store is away: then only when due.
                if time.monotonic() < next_renew and (progress is None or self._outage.down):
                    ctx._restore_progress(progress)
                    continue
                try:
                    ctx._renewed(self.report(ctx.id, "accepted", progress=progress, lease=lease))
                except ClientError as exc:
                    if not store_unavailable(exc):
                        raise
                    ctx._restore_progress(progress)
                    next_renew = time.monotonic() + self._store_away(exc)
                    continue
                self._store_back()
                next_renew = time.monotonic() + renew_every
            self._report_outcome(ctx.id, outcome["status"], outcome.get("response"), stop)
        except RequestFailed as exc:
            if exc.status != 409:
                raise
            log.warning("job %s changed under the driver and was not reported: %s", ctx.id, exc)
        except KeyboardInterrupt:
            self._interrupted(ctx, outcome)
            raise
        if "setup" in outcome:
            raise outcome["setup"]

    def _report_outcome(self, job: str, status: str, response: Any, stop: threading.Event) -> None:
        """Report how a job ended, again and again while the store is away, until it answers."""
        while True:
            try:
                self.report(job, status, response=response)
            except ClientError as exc:
                if not store_unavailable(exc):
                    raise
                if stop.wait(self._store_away(exc)):
                    log.warning(
                        "job %s ended %s, but the driver was stopped before the store answered "
                        "again: it goes back to the queue when its lease runs out",
                        job,
                        status,
                    )
                    return
                continue
            self._store_back()
            return

    def _interrupted(self, ctx: JobContext, outcome: dict[str, Any]) -> None:
        """Report a job in hand when the driver is interrupted: its outcome if the handler has
        finished, else hand it back; one try, and one line to say which."""
        status = outcome.get("status", "retrying")
        response = outcome.get("response") if "status" in outcome else "the driver was interrupted"
        try:
            self.report(ctx.id, status, response=response)
        except ClientError as exc:
            log.warning(
                "interrupted: job %s could not be reported %s (%s); it goes back to the queue "
                "when its lease runs out",
                ctx.id,
                status,
                exc,
            )
            return
        if status == "retrying":
            log.info("interrupted: job %s handed back to the queue (retrying)", ctx.id)
        else:
            log.info("interrupted: job %s reported %s", ctx.id, status)
