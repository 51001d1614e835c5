"""JobClient: an app's view of one job queue (datasource) as one client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from ..ids import client_id
from ..requests import ClientRequests, Record, Token, notify_endpoint_for
from .connection import Connection
from .watch import Watch


class JobClient:
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
        self.conn = Connection(endpoint, token=token, server_key=server_key, timeout=timeout)
        self.dsid = dsid
        self.notify_endpoint = notify_endpoint
        self._requests = ClientRequests(dsid, self.client)

    async def __aenter__(self) -> JobClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (with asyncio, calls still waiting raise ClientError)."""
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
