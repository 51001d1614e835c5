"""JobClient: an app's view of one job queue (datasource) as one client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from ..ids import client_id
from ..requests import ClientRequests, Record, Token
from .session import Session
from .watch import Watch


class JobClient(Session):
    """An app's view of one job queue (datasource) as one client.

    Every call returns at once with the store's answer (or raises
    :class:`~jobstore.errors.RequestFailed` of the reply's status class, or
    :class:`~jobstore.errors.Timeout`); the work happens in a driver.
    """

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
        # ``client_file`` keeps a generated secret id (see ids.load_or_create_client_id).
        self.client = client_id(client, client_file)
        super().__init__(endpoint, dsid, token, server_key, notify_endpoint, timeout)
        self._requests = ClientRequests(dsid, self.client)

    async def submit(
        self,
        request: Any,
        job: str | None = None,
        *,
        priority: int | None = None,
        delay: int | None = None,
        not_before: int | None = None,
        expires: int | None = None,
    ) -> Record:
        """Submit a job (a fresh GUID unless ``job`` is given); returns the record at once.

        ``priority`` (-100 to 100, default 0) orders the queue; ``delay`` (ms from now) or
        ``not_before`` (ms since the epoch) hold the job back; a job still queued at ``expires``
        (ms since the epoch) fails.
        """
        options = {"priority": priority, "delay": delay, "not_before": not_before}
        options["expires"] = expires
        record: Record = await self.conn.call(*self._requests.submit(request, job, options))
        return record

    async def submit_batch(self, jobs: list[Record]) -> list[Record]:
        """Submit up to 1000 jobs in one request and one commit. Each item is a map with
        ``request`` and any of ``job`` (a fresh GUID when absent), ``priority``, ``delay``,
        ``not_before`` and ``expires``; the results are in item order, each the record or
        ``{job, status, error}`` for an item refused. Past 4 MiB of records of jobs submitted
        before, those come without their payloads, marked ``truncated`` (docs/protocol.md)."""
        items = [
            self._requests.item(
                item.get("request"),
                item.get("job"),
                {k: v for k, v in item.items() if k not in ("job", "request")},
            )
            for item in jobs
        ]
        reply = await self.conn.call(*self._requests.batch(items))
        results: list[Record] = reply["results"]
        return results

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
        """One page of this client's jobs changed after ``since``, and the ``since`` of the next
        (None after the last page). A page may hold fewer than ``limit`` jobs while more follow
        (the store caps a page in bytes too): go on while the next is not None."""
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
        return self._watch(self._requests.subscription(), self.jobs, since, idle, timeout)
