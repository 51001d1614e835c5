"""asyncio versions of :class:`JobClient` and :class:`Driver`, on ``zmq.asyncio``.

They take the same arguments, have the same methods (as coroutines), build the
same requests and raise the same errors as those of :mod:`jobstore.client`.
Many coroutines may call through one client at once: requests share one DEALER
socket and a reader task hands each reply to the call waiting for its ``id``.

    async with JobClient("tcp://127.0.0.1:5555", "sensor-jobs", "app1") as app:
        jobs = await asyncio.gather(*(app.submit({"n": n}) for n in range(10)))
        async with app.watch(timeout=30) as watch:
            async for record in watch:
                ...
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from typing import Any

import zmq
import zmq.asyncio

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
    Subscription,
    Token,
    WatchCursor,
    client_id,
    handler_outcome,
    no_reply,
    notify_endpoint_for,
    secure,
    store_unavailable,
    token_for,
)
from .errors import ClientError, ProtocolError, RequestFailed
from .protocol import Reply, cbor
from .protocol.sealed import open_sealed

__all__ = [
    "Connection",
    "Driver",
    "ForbidJob",
    "JobCancelled",
    "JobClient",
    "JobContext",
    "RetryJob",
    "SetupError",
    "Watch",
]

log = logging.getLogger(__name__)


class Connection:
    """One DEALER socket to the store's request endpoint, shared by concurrent calls.

    Each call waits on a future of its own; one reader task receives every reply
    and resolves the future of the call with the reply's ``id``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token: Token = None,
        server_key: bytes | str | None = None,
        timeout: float = 5.0,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.token = token
        self.server_key = server_key.encode() if isinstance(server_key, str) else server_key
        self.timeout = timeout
        self.context = context or zmq.asyncio.Context.instance()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.socket = self.new_socket(zmq.DEALER)
        self.socket.connect(endpoint)

    def new_socket(self, kind: int) -> zmq.asyncio.Socket:
        """A socket with this connection's security settings (CURVE when a server key is set)."""
        sock = self.context.socket(kind)
        secure(sock, self.server_key)
        return sock

    async def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return the reply body; raise RequestFailed on an error status."""
        if self._closed:
            raise ClientError(f"the connection to {self.endpoint} is closed: make a new client")
        rid = next(self._ids)
        frame = cbor.encode_request(
            method, path, body, token=token_for(self.token, method, path), id=rid
        )
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Reply] = loop.create_future()
        self._pending[rid] = answer
        if self._reader is None or self._reader.done() or self._reader.get_loop() is not loop:
            self._reader = loop.create_task(self._read(), name=f"jobstore-reader {self.endpoint}")
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                await self.socket.send(frame)
                reply = await answer
        except TimeoutError:
            raise no_reply(method, path, self.endpoint, limit) from None
        finally:
            self._pending.pop(rid, None)
        if reply.status >= 400:
            raise RequestFailed(reply.status, reply.error or "(no error text)", reply.body)
        return reply.body

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.socket.recv()
                try:
                    reply = cbor.decode_reply(frame)
                except ProtocolError as exc:
                    # Without an id it cannot be matched: its call will time out.
                    log.warning("ignored a reply from %s: %s", self.endpoint, exc)
                    continue
                # No future: the late answer to a call that already timed out.
                answer = self._pending.get(reply.id) if isinstance(reply.id, int) else None
                if answer is not None and not answer.done():
                    answer.set_result(reply)
        except zmq.ZMQError as exc:
            self._fail_pending(f"the socket to {self.endpoint} failed: {exc}")

    def _fail_pending(self, why: str) -> None:
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ClientError(why))

    async def reconnect(self) -> None:
        """Replace the socket, dropping requests still queued for a store that is away: ZeroMQ
        would deliver them when it comes back, a take among them handing a job to nobody.
        Calls still waiting get no reply and time out."""
        await self._stop_reader()
        self.socket.close()
        self.socket = self.new_socket(zmq.DEALER)
        self.socket.connect(self.endpoint)

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        # A reader left in another (finished) event loop cannot be touched from this one.
        if reader is not None and reader.get_loop() is asyncio.get_running_loop():
            reader.cancel()
            await asyncio.wait({reader})

    async def close(self) -> None:
        """Close the socket; calls still waiting for a reply raise ClientError."""
        self._closed = True
        await self._stop_reader()
        self._fail_pending(f"the client of {self.endpoint} was closed while a call waited")
        self.socket.close()


class Watch:
    """Every change of a topic after ``since``: caught up by listing, then followed live.

    The asyncio form of :class:`jobstore.client.Watch`, with the same gap-free logic
    (:class:`~jobstore.client.WatchCursor`). It subscribes when started: by
    ``await client.watch()``, on entering ``async with client.watch() as watch``, or
    on the first ``async for``. With ``timeout``, iteration raises Timeout (and the
    watch ends) when no change arrives for that many seconds. Close it (or use
    ``async with``) to release its sockets; to stop a watch that another task is
    iterating, cancel that task.
    """

    def __init__(
        self,
        conn: Connection,
        notify_endpoint: str,
        subscribe: Subscription,
        catch_up: Callable[[int], AsyncIterator[Record]],
        since: int,
        idle: float,
        timeout: float | None = None,
    ) -> None:
        self._conn, self._notify_endpoint = conn, notify_endpoint
        self._subscribe, self._catch_up = subscribe, catch_up
        self._cursor = WatchCursor(since, idle, timeout)
        self._sub: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._records: AsyncGenerator[Record, None] | None = None

    @property
    def last(self) -> int:
        """The seq of the last record yielded (``since`` until then)."""
        return self._cursor.last

    async def start(self) -> Watch:
        """Subscribe, if not done yet: changes from now on reach this watch."""
        await self._started()
        return self

    async def _started(self) -> AsyncGenerator[Record, None]:
        if self._records is None:
            info = await self._conn.call("POST", *self._subscribe)
            sub = self._conn.new_socket(zmq.SUB)
            # A unique address: a socket's FD (pyzmq's default name) is reused once it is closed.
            monitor = sub.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED,
                addr=f"inproc://watch-{uuid.uuid4().hex}",
            )
            sub.setsockopt(zmq.SUBSCRIBE, info["topic"].encode())
            sub.connect(self._notify_endpoint)
            self._sub, self._monitor = sub, monitor
            self._records = self._follow(info["key"], sub, monitor)
        return self._records

    def __await__(self) -> Generator[Any, None, Watch]:
        return self.start().__await__()

    async def __aenter__(self) -> Watch:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Record:
        return await anext(await self._started())

    async def close(self) -> None:
        """Release the watch's sockets; iteration ends."""
        if self._records is not None:
            await self._records.aclose()
        if self._sub is not None and self._monitor is not None:
            self._sub.disable_monitor()
            self._monitor.close()
            self._sub.close()
            self._sub = self._monitor = None

    async def _follow(
        self, key: bytes, sub: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket
    ) -> AsyncGenerator[Record, None]:
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        cursor = self._cursor
        while True:
            if cursor.stale:
                async for listed in self._catch_up(cursor.last):
                    if cursor.listed(listed):
                        yield listed
                        cursor.delivered()
                cursor.stale = False
            events = dict(await poller.poll(max(1, int(cursor.wait() * 1000))))
            if monitor in events:
                await monitor.recv_multipart()
                cursor.connected()
            if sub in events:
                _topic, sealed = await sub.recv_multipart()
                record = cursor.notified(open_sealed(key, sealed))
                if record is not None:
                    yield record
                    cursor.delivered()
            elif not events:
                cursor.quiet((await self._conn.call("POST", *self._subscribe))["seq"])


class JobClient:
    """An app's view of one job queue (datasource) as one client, for asyncio."""

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

    async def __aenter__(self) -> JobClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; calls still waiting raise ClientError."""
        await self.conn.close()

    async def submit(self, request: Any, job: str | None = None) -> Record:
        """Submit a job (a fresh GUID unless ``job`` is given); returns the record at once."""
        record: Record = await self.conn.call(*self._requests.submit(request, job))
        return record

    async def status(self, job: str) -> Record:
        """The job's current record."""
        record: Record = await self.conn.call(*self._requests.status(job))
        return record

    async def cancel(self, job: str) -> Record:
        """Cancel a job: at once when queued; as a request to the server once accepted."""
        record: Record = await self.conn.call(*self._requests.cancel(job))
        return record

    async def page(
        self, since: int = 0, limit: int | None = None
    ) -> tuple[list[Record], int | None]:
        """One page of this client's jobs changed after ``since``, and the ``since`` of the next."""
        reply = await self.conn.call(*self._requests.page(since, limit))
        return reply["jobs"], reply["next"]

    async def jobs(self, since: int = 0) -> AsyncIterator[Record]:
        """Every job of this client changed after ``since``, oldest change first, across pages."""
        cursor: int | None = since
        while cursor is not None:
            page, cursor = await self.page(cursor)
            for record in page:
                yield record

    def watch(self, since: int = 0, *, idle: float = 1.0, timeout: float | None = None) -> Watch:
        """Every change to this client's jobs after ``since``, then live changes (see :class:`Watch`)."""
        endpoint = self.notify_endpoint or notify_endpoint_for(self.conn.endpoint)
        subscribe = self._requests.subscription()
        return Watch(self.conn, endpoint, subscribe, self.jobs, since, idle, timeout)


class Driver:
    """A server (driver) taking and running jobs of one datasource, for asyncio."""

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

    async def __aenter__(self) -> Driver:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; calls still waiting raise ClientError."""
        await self.conn.close()

    async def register(self, description: str, href: str | None = None) -> Record:
        """Add this job datasource to the store's hypercat catalogue (store type job, an actuator).

        ``href`` defaults to ``<request endpoint>/<dsid>``, the form Databox apps resolve.
        """
        call = self._requests.register(self.conn.endpoint, description, href)
        record: Record = await self.conn.call(*call)
        return record

    async def take(self, max: int = 1, *, lease: int | None = None, wait: int = 0) -> list[Record]:
        """Take up to ``max`` queued jobs (now accepted), waiting up to ``wait`` ms for one."""
        timeout = self.conn.timeout + wait / 1000
        reply = await self.conn.call(*self._requests.take(max, lease, wait), timeout=timeout)
        jobs: list[Record] = reply["jobs"]
        self._requests.handed(jobs)
        return jobs

    async def accept(self, job: str, *, lease: int | None = None) -> Record:
        """Accept one named job."""
        record: Record = await self.conn.call(*self._requests.accept(job, lease))
        self._requests.handed([record])
        return record

    async def report(self, job: str, status: str, **fields: Any) -> Record:
        """Report a status (with ``response``, ``progress`` or ``lease``) for a job.

        The report carries the attempt this driver was handed the job with, so it is refused
        (409) once the job's lease has run out and it was handed out again.
        """
        record: Record = await self.conn.call(*self._requests.report(job, status, fields))
        return record

    async def progress(self, job: str, progress: Any, *, lease: int | None = None) -> Record:
        """Report progress and renew the lease."""
        return await self.report(job, "accepted", progress=progress, lease=lease)

    async def complete(self, job: str, response: Any = None) -> Record:
        """Report the job complete with ``response``."""
        return await self.report(job, "complete", response=response)

    async def fail(self, job: str, response: Any = None) -> Record:
        """Report the job failed."""
        return await self.report(job, "failed", response=response)

    async def retry(self, job: str, response: Any = None) -> Record:
        """Hand the job back for another attempt."""
        return await self.report(job, "retrying", response=response)

    async def forbid(self, job: str, response: Any = None) -> Record:
        """Report the job forbidden."""
        return await self.report(job, "forbidden", response=response)

    async def cancelled(self, job: str, response: Any = None) -> Record:
        """Report the job cancelled."""
        return await self.report(job, "cancelled", response=response)

    async def jobs(self, since: int = 0, **filters: Any) -> AsyncIterator[Record]:
        """Every job of the datasource changed after ``since`` (filters: status, client)."""
        cursor: int | None = since
        while cursor is not None:
            reply = await self.conn.call(*self._requests.page(cursor, filters))
            for record in reply["jobs"]:
                yield record
            cursor = reply["next"]

    def watch(self, since: int = 0, *, idle: float = 1.0, timeout: float | None = None) -> Watch:
        """Every change in the datasource after ``since``, then live changes (see :class:`Watch`)."""
        endpoint = self.notify_endpoint or notify_endpoint_for(self.conn.endpoint)
        subscribe = self._requests.subscription()
        return Watch(self.conn, endpoint, subscribe, self.jobs, since, idle, timeout)

    async def run(
        self,
        handler: Callable[[JobContext], Any],
        *,
        lease: int = 30_000,
        wait: int = 1000,
        max_jobs: int | None = None,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Take jobs one at a time and run ``handler`` on each until ``stop`` is set.

        ``handler`` is an ``async def handler(ctx)``, or a plain function, which runs
        in a thread (so it may block). Its return value completes the job; an
        exception fails it with the error text in ``response`` (JobCancelled,
        RetryJob and ForbidJob report those outcomes; SetupError hands the job back
        and ends ``run`` by raising it). The lease is renewed while the handler
        runs, so an async handler must not block the event loop; and
        ``ctx.cancel_requested`` turns true when the client cancels. ``stop`` is
        checked between jobs, at least every ``wait`` ms. While the store does not
        answer, ``run`` logs it once and tries again with backoff (a job's outcome
        too, until the store takes it or ``stop`` is set). When the task running
        ``run`` is cancelled (as ``asyncio.run`` does on Ctrl-C), the job in hand is
        handed back (``retrying``) before the cancellation goes on. Returns the
        number of jobs run.
        """
        stop = stop or asyncio.Event()
        done = 0
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            try:
                records = await self.take(1, lease=lease, wait=wait)
            except ClientError as exc:
                if not store_unavailable(exc):
                    raise
                await _wait(stop, await self._store_away(exc))
                continue
            except asyncio.CancelledError:
                log.info("cancelled while waiting for a job: no job to hand back")
                raise
            self._store_back()
            for record in records:
                await self._run_one(handler, JobContext(record), lease, stop)
                done += 1
        return done

    async def _store_away(self, exc: ClientError) -> float:
        """Log the start of an outage, drop what is queued, and say how long to wait."""
        delay, message = self._outage.failed(exc)
        if message is not None:
            log.warning(message)
        await self.conn.reconnect()
        return delay

    def _store_back(self) -> None:
        message = self._outage.answered()
        if message is not None:
            log.warning(message)

    async def _run_one(
        self, handler: Callable[[JobContext], Any], ctx: JobContext, lease: int, stop: asyncio.Event
    ) -> None:
        work = asyncio.create_task(_outcome(handler, ctx), name=f"job-{ctx.id}")
        renew_every = max(lease / 3000, 0.05)
        next_renew = time.monotonic() + renew_every
        setup: SetupError | None = None
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=0.05)
                progress = ctx._pop_progress()
                # Progress goes at once, but not while the store is away: then only when due.
                if time.monotonic() < next_renew and (progress is None or self._outage.down):
                    ctx._restore_progress(progress)
                    continue
                try:
                    renewal = await self.report(ctx.id, "accepted", progress=progress, lease=lease)
                except ClientError as exc:
                    if not store_unavailable(exc):
                        raise
                    ctx._restore_progress(progress)
                    next_renew = time.monotonic() + await self._store_away(exc)
                    continue
                self._store_back()
                ctx._renewed(renewal)
                next_renew = time.monotonic() + renew_every
            status, response, setup = work.result()
            await self._report_outcome(ctx.id, status, response, stop)
        except RequestFailed as exc:
            if exc.status != 409:
                raise
            log.warning("job %s changed under the driver and was not reported: %s", ctx.id, exc)
        except asyncio.CancelledError:
            await self._cancelled(ctx, work)
            raise
        finally:
            # The job is no longer this driver's to run (or run() was cancelled): stop the handler.
            work.cancel()
        if setup is not None:
            raise setup

    async def _report_outcome(
        self, job: str, status: str, response: Any, stop: asyncio.Event
    ) -> None:
        """Report how a job ended, again and again while the store is away, until it answers."""
        while True:
            try:
                await self.report(job, status, response=response)
            except ClientError as exc:
                if not store_unavailable(exc):
                    raise
                if await _wait(stop, await self._store_away(exc)):
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

    async def _cancelled(self, ctx: JobContext, work: asyncio.Task[Outcome]) -> None:
        """Report a job in hand when ``run`` is cancelled: its outcome if the handler has
        finished, else hand it back; one try, and one line to say which."""
        if work.done() and not work.cancelled():
            status, response, _ = work.result()
        else:
            status, response = "retrying", "the driver was cancelled"
        try:
            await self.report(ctx.id, status, response=response)
        except ClientError as exc:
            log.warning(
                "cancelled: job %s could not be reported %s (%s); it goes back to the queue "
                "when its lease runs out",
                ctx.id,
                status,
                exc,
            )
            return
        if status == "retrying":
            log.info("cancelled: job %s handed back to the queue (retrying)", ctx.id)
        else:
            log.info("cancelled: job %s reported %s", ctx.id, status)


# What a handler's run comes to: the status and response to report, and a SetupError to raise.
Outcome = tuple[str, Any, SetupError | None]


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; whether it is set."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
    return stop.is_set()


async def _outcome(handler: Callable[[JobContext], Any], ctx: JobContext) -> Outcome:
    """Run the handler and say what to report: ``complete`` with its result, or per its error."""
    try:
        if inspect.iscoroutinefunction(handler):
            response = await handler(ctx)
        else:
            response = await asyncio.to_thread(handler, ctx)
            # A callable object or a lambda may still hand back a coroutine to run here.
            if inspect.isawaitable(response):
                response = await response
        return "complete", response, None
    except Exception as exc:
        status, response = handler_outcome(exc)
        if isinstance(exc, SetupError):
            return status, response, exc
        if status == "failed":
            log.exception("job %s failed", ctx.id)
        return status, response, None
