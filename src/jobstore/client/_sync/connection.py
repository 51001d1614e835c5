"""The blocking socket glue, written by hand: one DEALER socket, one call at a time."""

from __future__ import annotations

import itertools
import time
from typing import Any

import zmq

from ...errors import request_failed
from ...protocol import cbor
from ..requests import Token, token_for
from ..sockets import no_reply, secure

Socket = zmq.Socket[bytes]
Poller = zmq.Poller


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

    def new_socket(self, kind: int) -> Socket:
        """A socket with this connection's security settings (CURVE when a server key is set)."""
        sock: Socket = self.context.socket(kind)
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
                raise request_failed(reply.status, reply.error or "(no error text)", reply.body)
            return reply.body

    def reconnect(self) -> None:
        """Replace the socket, dropping requests still queued for a store that is away: ZeroMQ
        would deliver them when it comes back, a take among them handing a job to nobody."""
        self.socket.close()
        self.socket = self.new_socket(zmq.DEALER)
        self.socket.connect(self.endpoint)

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()
