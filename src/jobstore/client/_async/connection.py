"""The asyncio socket glue, written by hand: one DEALER socket shared by concurrent calls."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import zmq
import zmq.asyncio

from ...errors import ClientError, ProtocolError
from ...protocol import Reply, cbor
from ..sockets import BaseConnection, no_reply, reply_body

log = logging.getLogger("jobstore.aio")

Socket = zmq.asyncio.Socket
Poller = zmq.asyncio.Poller


class Connection(BaseConnection[Socket]):
    """One DEALER socket to the store's request endpoint, shared by concurrent calls.

    Each call waits on a future of its own; one reader task receives every reply
    and resolves the future of the call with the reply's ``id``.
    """

    _reader: asyncio.Task[None] | None = None
    _closed = False

    @functools.cached_property
    def _pending(self) -> dict[int, asyncio.Future[Reply]]:
        """The calls waiting for a reply, by request id."""
        return {}

    def default_context(self) -> zmq.asyncio.Context:
        """The process's shared asyncio context."""
        return zmq.asyncio.Context.instance()

    async def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return the reply body; raise RequestFailed on an error status.
        A 401 to a refreshable token's macaroon is sent once more with a fresh one (stale_token)."""
        reply, token = await self._exchange(method, path, body, timeout)
        if self.stale_token(reply, method, path, token):
            reply, _ = await self._exchange(method, path, body, timeout)
        return reply_body(reply)

    async def _exchange(
        self, method: str, path: str, body: Any, timeout: float | None
    ) -> tuple[Reply, str | None]:
        """Send one request; its reply, and the token the request carried."""
        if self._closed:
            raise ClientError(f"the connection to {self.endpoint} is closed: make a new client")
        rid, frame, token = self.request(method, path, body)
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
        return reply, token

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
        self.socket = self.new_dealer()

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
