"""The arbiter's client calls (docs/databox.md): a store's token secret, an app's macaroons.

Every failure is an :class:`ArbiterError`: :class:`ArbiterRefused` (also an
``Unauthorized``), :class:`ArbiterUnavailable` (also ``Unavailable``) or
:class:`ArbiterFailed` (also ``RequestFailed``), so a caller may catch the arbiter's
errors apart from the store's.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import zmq

from ..errors import ArbiterError, RequestFailed, Unauthorized, Unavailable
from ..protocol import zest


class ArbiterRefused(ArbiterError, Unauthorized):
    """The arbiter refused the call (129): a wrong token, no grant, an unregistered name."""


class ArbiterUnavailable(ArbiterError, Unavailable):
    """The arbiter did not answer in time, or could not be reached."""


class ArbiterFailed(ArbiterError, RequestFailed):
    """The arbiter answered with another error code."""


def fetch_store_secret(
    endpoint: str, server_key: str | None, arbiter_token: str, identity: str, timeout: float = 5.0
) -> bytes:
    """A store's start-up call (docs/databox.md): its token secret, the payload verbatim.

    ``server_key`` is the arbiter's Z85 public key (ZMQ_PUBLIC_KEY); None or "" talks plain.
    Raises ArbiterRefused on 129, ArbiterFailed on other refusals, and ArbiterUnavailable when no reply
    comes within ``timeout`` seconds.
    """
    frame = zest.encode_request(
        "GET", "/store/secret", token=arbiter_token, host=identity, content_format=zest.FORMAT_TEXT
    )
    return _ask(endpoint, server_key, frame, timeout, f"GET /store/secret as {identity!r}")


def request_token(
    endpoint: str,
    server_key: str | None,
    arbiter_token: str,
    *,
    target: str,
    path: str,
    method: str,
    observe: str | None = None,
    client: str | None = None,
    identity: str | None = None,
    timeout: float = 5.0,
) -> str:
    """An app's or driver's call: a macaroon for ``method path`` on store ``target``.

    ``identity`` (uri_host) is the caller's registered name, by default the hostname as the
    databox client libraries send it. Raises as :func:`fetch_store_secret` does.
    """
    body: dict[str, Any] = {"target": target, "path": path, "method": method}
    body["caveats"] = [{"observe": observe}] if observe else []
    if client is not None:
        body["client"] = client
    host = identity or socket.gethostname()
    payload = json.dumps(body).encode()
    frame = zest.encode_request("POST", "/token", token=arbiter_token, host=host, body=payload)
    what = f"POST /token for {method} {path} on {target!r}"
    return _ask(endpoint, server_key, frame, timeout, what).decode("utf-8", "replace")


def _ask(endpoint: str, server_key: str | None, frame: bytes, timeout: float, what: str) -> bytes:
    """One request on a fresh REQ socket: the reply's payload, or the error it stands for."""
    if server_key and len(server_key) != 40:
        raise ValueError("the arbiter's public key must be 40 characters of Z85 (ZMQ_PUBLIC_KEY)")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.sndtimeo = sock.rcvtimeo = max(1, int(timeout * 1000))
        if server_key:
            sock.curve_serverkey = server_key.encode()
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        try:
            sock.connect(endpoint)
            sock.send(frame)
            reply = zest.decode_reply(sock.recv())
        except zmq.Again:
            raise ArbiterUnavailable(
                f"the arbiter at {endpoint} did not answer {what} within {timeout:g} s: check "
                "DATABOX_ARBITER_ENDPOINT and that ZMQ_PUBLIC_KEY is its key (a wrong one is silent)"
            ) from None
        except zmq.ZMQError as exc:
            raise ArbiterUnavailable(f"cannot reach the arbiter at {endpoint!r}: {exc}") from None
    finally:
        ctx.destroy(linger=0)
    if reply.code in (zest.CONTENT, zest.CREATED):
        return reply.payload
    detail = reply.payload.decode("utf-8", "replace") or "no reason given"
    if reply.code == zest.UNAUTHORIZED:
        # The arbiter refuses a missing grant as it refuses a wrong token: only its words tell.
        if any(word in detail.lower() for word in ("grant", "permission", "caveat")):
            advice = "the container manager must grant this route to this container as asked"
        elif "has not fetched" in detail:
            advice = "start the store first: it fetches its secret as it starts"
        elif "not a registered store" in detail:
            advice = "check --target, the store's name"
        else:
            advice = "check ARBITER_TOKEN and the name this container asks as (--as)"
        raise ArbiterRefused(f"the arbiter refused {what}: {detail}; {advice}")
    status = (reply.code >> 5) * 100 + (reply.code & 0x1F)  # CoAP c.dd is HTTP-style cdd
    raise ArbiterFailed(status, f"the arbiter answered {what} with {reply.code}: {detail}")
