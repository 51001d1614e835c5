"""What both flavours' sockets share: their security settings, and the error for no reply."""

from __future__ import annotations

from typing import Any

import zmq

from ..errors import Timeout


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
