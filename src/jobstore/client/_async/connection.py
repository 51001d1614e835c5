"""The asyncio socket glue, written by hand: one DEALER socket shared by concurrent calls."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import zmq
import zmq.asyncio

from ...errors import ClientError, ProtocolError, request_failed
from ...protocol import Reply, cbor
from ..requests import Token, token_for
from ..sockets import no_reply, secure

log = logging.getLogger("jobstore.aio")

Socket = zmq.asyncio.Socket
Poller = zmq.asyncio.Poller


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

    def new_socket(self, kind: int) -> Socket:
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
            raise request_failed(reply.status, reply.error or "(no error text)", reply.body)
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
