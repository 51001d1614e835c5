"""Driver: a server taking and running the jobs of one datasource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ...errors import ClientError, Conflict, SetupError
from ..decisions import Outage, Renewals, store_unavailable
from ..outcomes import JobContext
from ..requests import DriverRequests, Record, Token
from .concurrency import INTERRUPTED, Event, Interrupted, Work, wait_for_stop
from .session import Session
from .watch import Watch

log = logging.getLogger("jobstore.client")


class Driver(Session):
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
        super().__init__(endpoint, dsid, token, server_key, notify_endpoint, timeout)
        self._requests = DriverRequests(dsid)
        self._outage = Outage()

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

    async def retry(self, job: str, response: Any = None, *, delay: int | None = None) -> Record:
        """Hand the job back for another attempt, after ``delay`` ms when given (else after the
        datasource's backoff)."""
        return await self.report(job, "retrying", response=response, delay=delay)

    async def requeue(self, job: str, *, delay: int | None = None) -> Record:
        """Send a failed job back to the queue (attempts 0), after ``delay`` ms when given."""
        record: Record = await self.conn.call(*self._requests.requeue(job, delay))
        return record

    async def settings(self, **changes: Any) -> Record:
        """The datasource's queue settings, after changing those given (paused, backoff,
        max_backoff, max_attempts, lease)."""
        settings: Record = await self.conn.call(*self._requests.settings(changes or None))
        return settings

    async def pause(self) -> Record:
        """Stop takes from the datasource (submits and reports go on); returns the settings."""
        return await self.settings(paused=True)

    async def resume(self) -> Record:
        """Let takes from the datasource go on; returns the settings."""
        return await self.settings(paused=False)

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
        return self._watch(self._requests.subscription(), self.jobs, since, idle, timeout)

    async def run(
        self,
        handler: Callable[[JobContext], Any],
        *,
        lease: int = 30_000,
        wait: int = 1000,
        max_jobs: int | None = None,
        stop: Event | None = None,
    ) -> int:
        """Take jobs one at a time and run ``handler`` on each until ``stop`` is set.

        The sync driver runs ``handler(ctx)`` in a thread; the asyncio one takes an
        ``async def handler(ctx)`` (which must not block the event loop), or a plain
        function, which runs in a thread (so it may block). Its return value
        completes the job; an exception fails it with the error text in ``response``
        (JobCancelled, RetryJob and ForbidJob report those outcomes; SetupError hands
        the job back and ends ``run`` by raising it). The lease is renewed while the
        handler runs, and ``ctx.cancel_requested`` turns true when the client
        cancels. ``stop`` is checked between jobs, at least every ``wait`` ms. While
        the store does not answer, ``run`` logs it once and tries again with backoff
        (a job's outcome too, until the store takes it or ``stop`` is set). On
        KeyboardInterrupt (sync), or when the task running ``run`` is cancelled (as
        ``asyncio.run`` does on Ctrl-C), the job in hand is handed back
        (``retrying``) and the interrupt goes on. Returns the number of jobs run.
        """
        stop = stop or Event()
        done = 0
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            try:
                records = await self.take(1, lease=lease, wait=wait)
            except ClientError as exc:
                if not store_unavailable(exc):
                    raise
                await wait_for_stop(stop, await self._store_away(exc))
                continue
            except Interrupted:
                log.info("%s while waiting for a job: no job to hand back", INTERRUPTED)
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
        self, handler: Callable[[JobContext], Any], ctx: JobContext, lease: int, stop: Event
    ) -> None:
        work = Work(handler, ctx)
        renewals = Renewals(lease)
        setup: SetupError | None = None
        try:
            while not work.done():
                await work.wait(0.05)
                progress = ctx._pop_progress()
                if not renewals.due(progress is not None, self._outage.down):
                    ctx._restore_progress(progress)
                    continue
                try:
                    renewal = await self.report(ctx.id, "accepted", progress=progress, lease=lease)
                except ClientError as exc:
                    if not store_unavailable(exc):
                        raise
                    ctx._restore_progress(progress)
                    renewals.postpone(await self._store_away(exc))
                    continue
                self._store_back()
                ctx._renewed(renewal)
                renewals.renewed()
            status, response, setup = work.result()
            await self._report_outcome(ctx.id, status, response, stop)
        except Conflict as exc:
            log.warning("job %s changed under the driver and was not reported: %s", ctx.id, exc)
        except Interrupted:
            await self._interrupted(ctx, work)
            raise
        finally:
            work.cancel()  # the job is no longer this driver's to run (or run() was stopped)
        if setup is not None:
            raise setup

    async def _report_outcome(self, job: str, status: str, response: Any, stop: Event) -> None:
        """Report how a job ended, again and again while the store is away, until it answers."""
        while True:
            try:
                await self.report(job, status, response=response)
            except ClientError as exc:
                if not store_unavailable(exc):
                    raise
                if await wait_for_stop(stop, await self._store_away(exc)):
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

    async def _interrupted(self, ctx: JobContext, work: Work) -> None:
        """Report a job in hand when ``run`` is interrupted: its outcome if the handler has
        finished, else hand it back; one try, and one line to say which."""
        outcome = work.outcome()
        if outcome is not None:
            status, response, _ = outcome
        else:
            status, response = "retrying", f"the driver was {INTERRUPTED}"
        try:
            await self.report(ctx.id, status, response=response)
        except ClientError as exc:
            log.warning(
                "%s: job %s could not be reported %s (%s); it goes back to the queue "
                "when its lease runs out",
                INTERRUPTED,
                ctx.id,
                status,
                exc,
            )
            return
        if status == "retrying":
            log.info("%s: job %s handed back to the queue (retrying)", INTERRUPTED, ctx.id)
        else:
            log.info("%s: job %s reported %s", INTERRUPTED, ctx.id, status)
