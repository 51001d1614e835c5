"""The native codec: one CBOR map per request frame and per reply frame (docs/protocol.md, "Native frames")."""

from __future__ import annotations

import io
from typing import Any

import cbor2

from ..errors import ProtocolError
from . import METHODS, Reply, Request, shown

REQUEST_KEYS = frozenset({"method", "path", "token", "body", "id"})
MAX_ID = (1 << 64) - 1  # an id is a CBOR unsigned integer (major type 0) or text
_STATUS, _BODY, _ERROR, _ID, _JOBS = (
    cbor2.dumps(k) for k in ("status", "body", "error", "id", "jobs")
)


def head(major: int, n: int) -> bytes:
    """The initial bytes of a CBOR item: ``major`` type (0 uint, 4 array, 5 map) and argument ``n``."""
    if n < 24:
        return bytes((major << 5 | n,))
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | info,)) + n.to_bytes(size, "big")
    raise ValueError(f"{n} does not fit a CBOR head")


def jobs_body(records: list[bytes]) -> bytes:
    """The encoding of ``{"jobs": [records]}`` from records already encoded."""
    return b"\xa1" + _JOBS + head(4, len(records)) + b"".join(records)


def is_native(frame: bytes) -> bool:
    """True when the first byte announces a CBOR map (major type 5)."""
    return bool(frame) and 0xA0 <= frame[0] <= 0xBF


def decode_one(data: bytes, invalid: str) -> tuple[Any, int]:
    """The first CBOR item in ``data`` and how many bytes follow it (the caller says whether
    any may); ProtocolError starting with ``invalid`` when there is no valid item."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types for garbage; all mean the same here
        raise ProtocolError(f"{invalid}: {exc}") from None
    return value, len(data) - stream.tell()


def decode_request(frame: bytes) -> Request:
    """Decode one request frame, or raise ProtocolError saying what is wrong with it."""
    msg, extra = decode_one(frame, "request frame is not valid CBOR")
    if not isinstance(msg, dict):
        raise ProtocolError(f"request frame must be a CBOR map, got {type(msg).__name__}")
    if extra:
        raise ProtocolError(
            f"request frame has {extra} bytes after its CBOR map; send exactly one map per frame"
        )
    rid = msg.get("id")
    if rid is not None and not (isinstance(rid, str) or (type(rid) is int and 0 <= rid <= MAX_ID)):
        raise ProtocolError(
            f"request id must be an unsigned integer (below 2^64) or text, got {shown(rid)}"
        )
    try:
        return _fields(msg, rid)
    except ProtocolError as exc:
        exc.id = rid
        raise


def _fields(msg: dict[Any, Any], rid: int | str | None) -> Request:
    unknown = [k for k in msg if k not in REQUEST_KEYS]
    if unknown:
        raise ProtocolError(
            f"request has unknown key {shown(unknown[0])}; allowed keys are method, path, token, body, id"
        )
    method = msg.get("method")
    if method not in METHODS:
        raise ProtocolError(f"request method must be one of GET, POST, DELETE, got {shown(method)}")
    path = msg.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ProtocolError(f"request path must be text starting with '/', got {shown(path)}")
    token = msg.get("token")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("request token bytes must be an ASCII macaroon") from None
    elif token is not None and not isinstance(token, str):
        raise ProtocolError(f"request token must be text or bytes, got {type(token).__name__}")
    return Request(method, path, token or None, msg.get("body"), rid)


def encode_reply(reply: Reply) -> bytes:
    """Encode a reply map: status, and body, error and id when present."""
    if reply.encoded_body is not None and reply.body is not None:
        parts = [_STATUS, head(0, reply.status), _BODY, reply.encoded_body]
        if reply.error is not None:
            parts += [_ERROR, cbor2.dumps(reply.error)]
        if reply.id is not None:
            parts += [_ID, cbor2.dumps(reply.id)]
        return head(5, len(parts) // 2) + b"".join(parts)
    out: dict[str, Any] = {"status": reply.status}
    if reply.body is not None:
        out["body"] = reply.body
    if reply.error is not None:
        out["error"] = reply.error
    if reply.id is not None:
        out["id"] = reply.id
    return cbor2.dumps(out)


def encode_request(
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    id: int | str | None = None,
) -> bytes:
    """Encode a request map (used by the client libraries)."""
    out: dict[str, Any] = {"method": method, "path": path}
    if body is not None:
        out["body"] = body
    if token is not None:
        out["token"] = token
    if id is not None:
        out["id"] = id
    return cbor2.dumps(out)


def decode_reply(frame: bytes) -> Reply:
    """Decode a reply map, or raise ProtocolError when it is not one."""
    try:
        msg = cbor2.loads(frame)
    except Exception as exc:
        raise ProtocolError(f"reply frame is not valid CBOR: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("status"), int):
        raise ProtocolError("reply frame must be a CBOR map with an integer status")
    return Reply(msg["status"], msg.get("body"), msg.get("error"), msg.get("id"))
