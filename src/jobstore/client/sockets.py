"""What both flavours' sockets share: a connection's settings, request frames and reply
answers, socket security, and the error for no reply."""

from __future__ import annotations

import itertools
from typing import Any, Generic, TypeVar

import zmq

from ..errors import Timeout, request_failed
from ..protocol import Reply, cbor
from .requests import RefreshableToken, Token, token_for

SocketT = TypeVar("SocketT", bound="zmq.Socket[Any]")


def secure(sock: zmq.Socket[Any], server_key: bytes | None) -> None:
    """Set linger 0 and, with a server key, make the socket a CURVE client with a fresh keypair."""
    sock.linger = 0
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret


def no_reply(method: str, path: str, endpoint: str, limit: float) -> Timeout:
    """The Timeout for a request that got no reply."""
    return Timeout(
        f"no reply to {method} {path} from {endpoint} within {limit:g} s: "
        "is the store running there (and is the server key right)?"
    )


class BaseConnection(Generic[SocketT]):
    """One DEALER socket to the store's request endpoint: the part of each flavour's
    ``Connection`` that does not wait, written once."""

    def __init__(
        self,
        endpoint: str,
        *,
        token: Token = None,
        server_key: bytes | str | None = None,
        timeout: float = 5.0,
        context: zmq.Context[SocketT] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.token = token
        self.server_key = server_key.encode() if isinstance(server_key, str) else server_key
        self.timeout = timeout
        self.context = context or self.default_context()
        self._ids = itertools.count(1)
        self.socket = self.new_dealer()

    def default_context(self) -> zmq.Context[SocketT]:
        """The flavour's shared context, for a connection not given one."""
        raise NotImplementedError

    def new_socket(self, kind: int) -> SocketT:
        """A socket with this connection's security settings (CURVE when a server key is set)."""
        sock = self.context.socket(kind)
        secure(sock, self.server_key)
        return sock

    def new_dealer(self) -> SocketT:
        """A fresh DEALER socket, connected to the store's request endpoint."""
        sock = self.new_socket(zmq.DEALER)
        sock.connect(self.endpoint)
        return sock

    def request(self, method: str, path: str, body: Any) -> tuple[int, bytes, str | None]:
        """A new request id, the request's frame, and the token for its method and path that
        the frame carries."""
        rid = next(self._ids)
        token = token_for(self.token, method, path)
        return rid, cbor.encode_request(method, path, body, token=token, id=rid), token

    def stale_token(self, reply: Reply, method: str, path: str, token: str | None) -> bool:
        """Whether to send a request once more, with a fresh token: the store refused (401)
        ``token``, a macaroon from a :class:`RefreshableToken` (which now forgets it). A
        restarted Databox store has a new secret, so the macaroons cached for it are refused;
        a 401 means the store did nothing, so sending again is safe."""
        source = self.token
        if reply.status != 401 or token is None or not isinstance(source, RefreshableToken):
            return False
        source.forget(method, path, token)
        return True


def reply_body(reply: Reply) -> Any:
    """A reply's body; RequestFailed of the status's class for an error status."""
    if reply.status >= 400:
        raise request_failed(reply.status, reply.error or "(no error text)", reply.body)
    return reply.body
