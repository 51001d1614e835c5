"""What JobClient and Driver share: a connection to the store for one datasource."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Self

from ..requests import Record, Subscription, Token, notify_endpoint_for
from .connection import Connection
from .watch import Watch


class Session:
    """A connection to the store's request endpoint for datasource ``dsid``, closed on leaving
    ``async with``; its watches subscribe at ``notify_endpoint``."""

    def __init__(
        self,
        endpoint: str,
        dsid: str,
        token: Token,
        server_key: bytes | str | None,
        notify_endpoint: str | None,
        timeout: float,
    ) -> None:
        self.conn = Connection(endpoint, token=token, server_key=server_key, timeout=timeout)
        self.dsid = dsid
        self.notify_endpoint = notify_endpoint

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (with asyncio, calls still waiting raise ClientError)."""
        await self.conn.close()

    def _watch(
        self,
        subscribe: Subscription,
        catch_up: Callable[[int], AsyncIterator[Record]],
        since: int,
        idle: float,
        timeout: float | None,
    ) -> Watch:
        # Without a notify endpoint named, the request endpoint's tcp port + 2.
        endpoint = self.notify_endpoint or notify_endpoint_for(self.conn.endpoint)
        return Watch(self.conn, endpoint, subscribe, catch_up, since, idle, timeout)
