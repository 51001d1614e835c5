"""The blocking socket glue, written by hand: one DEALER socket, one call at a time."""

from __future__ import annotations

import time
from typing import Any

import zmq

from ...protocol import Reply, cbor
from ..sockets import BaseConnection, no_reply, reply_body

Socket = zmq.Socket[bytes]
Poller = zmq.Poller


class Connection(BaseConnection[Socket]):
    """One DEALER socket to the store's request endpoint, matching replies by id."""

    def default_context(self) -> zmq.Context[Socket]:
        """The process's shared context."""
        return zmq.Context.instance()

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return the reply body; raise RequestFailed on an error status.
        A 401 to a refreshable token's macaroon is sent once more with a fresh one (stale_token)."""
        reply, token = self._exchange(method, path, body, timeout)
        if self.stale_token(reply, method, path, token):
            reply, _ = self._exchange(method, path, body, timeout)
        return reply_body(reply)

    def _exchange(
        self, method: str, path: str, body: Any, timeout: float | None
    ) -> tuple[Reply, str | None]:
        """Send one request; its reply, and the token the request carried."""
        rid, frame, token = self.request(method, path, body)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        # A send to a store that is down blocks once the queue fills: bound it by the timeout too.
        if not self.socket.poll(max(1, int(limit * 1000)), zmq.POLLOUT):
            raise no_reply(method, path, self.endpoint, limit)
        self.socket.send(frame, zmq.NOBLOCK)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(int(left * 1000) + 1):
                raise no_reply(method, path, self.endpoint, limit)
            reply = cbor.decode_reply(self.socket.recv())
            if reply.id == rid:
                return reply, token
            # Another id: the late answer to a call that already timed out.

    def reconnect(self) -> None:
        """Replace the socket, dropping requests still queued for a store that is away: ZeroMQ
        would deliver them when it comes back, a take among them handing a job to nobody."""
        self.socket.close()
        self.socket = self.new_dealer()

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()
