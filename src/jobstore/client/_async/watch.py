"""A watch: every change of a topic after ``since``, caught up by listing, then followed live."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from typing import Any

import zmq

from ...protocol.sealed import open_sealed
from ..decisions import WatchCursor
from ..requests import Record, Subscription
from .connection import Connection, Poller, Socket


class Watch:
    """Every change of a topic after ``since``: caught up by listing, then followed live.

    It subscribes when started, so nothing after that is missed: the sync watch at
    once, the asyncio one when awaited, entered or first iterated. It lists with
    ``since`` on start, on a gap in ``prev``, on (re)connection, and when the topic
    has been quiet for ``idle`` seconds while the store's seq for it moved on (see
    :class:`~jobstore.client.decisions.WatchCursor`). Catching up yields each job's
    latest record, so intermediate states of a job may be skipped (its ``history``
    lists them), but never its last one. With ``timeout``, iteration raises Timeout
    (and the watch ends) when no change arrives for that many seconds. Close it (or
    use it as a context manager) to release its sockets; to stop an asyncio watch
    that another task is iterating, cancel that task.
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
        self._sub: Socket | None = None
        self._monitor: Socket | None = None
        self._records: AsyncGenerator[Record, None] | None = None
        # unasync: self.start()

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

    # unasync: begin async-only
    def __await__(self) -> Generator[Any, None, Watch]:
        return self.start().__await__()

    # unasync: end async-only
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
        self, key: bytes, sub: Socket, monitor: Socket
    ) -> AsyncGenerator[Record, None]:
        poller = Poller()
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
                # Everything that has arrived, for one poll, until a gap: they come in bursts.
                while not cursor.stale:
                    try:
                        _topic, sealed = await sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    record = cursor.notified(open_sealed(key, sealed))
                    if record is not None:
                        yield record
                        cursor.delivered()
            elif not events:
                cursor.quiet((await self._conn.call("POST", *self._subscribe))["seq"])
