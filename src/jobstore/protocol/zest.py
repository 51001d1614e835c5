"""The Zest codec: databox core-store (zestdb) frames <-> Request/Reply (docs/protocol.md, "Zest").

A frame is ``code:u8 | option count:u8 | token length:u16 BE | token | options | payload``
and each option is ``number:u16 BE | length:u16 BE | value``. This module is pure: bytes
in, values out, and any malformed request frame raises ProtocolError, never anything else.

Where neither zestdb nor docs/protocol.md decides, this codec chooses:

* A request without content_format (option 12) is JSON (50). zestdb fails such a
  request; JSON is what databox clients send, so defaulting is kinder than refusing.
* Integer option values are CoAP uints: big-endian, empty = 0, at most 2 bytes for
  content_format and 4 for max_age. The encoders always write 2 and 4 bytes, like zestdb.
* A repeated option: the last one wins (zestdb, which stores its options in reverse and
  takes the first match, behaves the same). Unknown option numbers are ignored, as there.
* observe (option 6) must be empty or ``data`` (mode ``data``), or ``notification`` (the mode
  lib-go-databox's function calls observe with). zestdb's ``audit`` is refused rather than
  silently served as ``data``.
* uri_path must be one option holding the whole path, starting with ``/`` (as zestdb
  sends it, and as the native codec requires).
* An empty payload is no body (``None``) in every content format. A CBOR payload is
  exactly one item. JSON is strict: no NaN/Infinity, no unpaired surrogate escapes
  (they could not be stored as CBOR text).
* Replies: any 2xx other than 201 maps like 200 (69 for GET, else 65); DELETE success is
  65 (zestdb answers 66, which databox's Python client treats as an error).
* An error reply (status >= 400) carries ``reply.error`` as UTF-8 text, content_format 0.
  zestdb sends a bare header; clients that ignore the payload are unaffected.
* A successful observe reply is text (content_format 0) whatever the request asked for:
  its payload is the observation UUID, as zestdb sends it.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cbor2

from ..errors import ProtocolError
from . import Reply, Request, cbor

# Request codes.
GET = 1
POST = 2
DELETE = 4

# Reply codes: CoAP class.detail packed as class << 5 | detail.
CREATED = 65
CONTENT = 69
BAD_REQUEST = 128
UNAUTHORIZED = 129
FORBIDDEN = 131
NOT_FOUND = 132
METHOD_NOT_ALLOWED = 133
CONFLICT = 137
REQUEST_ENTITY_TOO_LARGE = 141
TOO_MANY_REQUESTS = 157
INTERNAL_SERVER_ERROR = 160
SERVICE_UNAVAILABLE = 163

# Option numbers.
OPT_URI_HOST = 3
OPT_OBSERVE = 6
OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12
OPT_MAX_AGE = 14
OPT_OBSERVE_KEY = 2048  # the observe socket's public key (Z85 text), server to client

# Observe modes (option 6 values) this codec accepts.
OBSERVE_DATA = "data"
OBSERVE_NOTIFICATION = "notification"
_OBSERVE_MODES = {b"": OBSERVE_DATA, b"data": OBSERVE_DATA, b"notification": OBSERVE_NOTIFICATION}

# Content formats.
FORMAT_TEXT = 0
FORMAT_BINARY = 42
FORMAT_JSON = 50
FORMAT_CBOR = 60
FORMAT_NAMES = {
    FORMAT_TEXT: "text",
    FORMAT_BINARY: "binary",
    FORMAT_JSON: "JSON",
    FORMAT_CBOR: "CBOR",
}

METHOD_CODES = {"GET": GET, "POST": POST, "DELETE": DELETE}
_METHOD_NAMES = {code: name for name, code in METHOD_CODES.items()}

_ERROR_CODES = {
    400: BAD_REQUEST,
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    409: CONFLICT,
    413: REQUEST_ENTITY_TOO_LARGE,
    429: TOO_MANY_REQUESTS,
    500: INTERNAL_SERVER_ERROR,
    503: SERVICE_UNAVAILABLE,
    507: INTERNAL_SERVER_ERROR,
}

_HEADER = struct.Struct(">BBH")
_OPTION = struct.Struct(">HH")
_U16_MAX = 0xFFFF
_MAX_OPTIONS = 0xFF


@dataclass(frozen=True, slots=True)
class ZestReply:
    """A decoded reply or push frame; ``options`` keeps the last value of each number."""

    code: int
    options: dict[int, bytes] = field(default_factory=dict)
    payload: bytes = b""


def status_to_code(status: int, method: str) -> int:
    """The Zest reply code for an HTTP-style ``status`` answering ``method``."""
    if status == 201:
        return CREATED
    if 200 <= status < 300:
        return CONTENT if method == "GET" else CREATED
    if status in _ERROR_CODES:
        return _ERROR_CODES[status]
    if 400 <= status < 500:
        return BAD_REQUEST
    if status >= 500:
        return INTERNAL_SERVER_ERROR
    raise ValueError(f"status {status} has no Zest reply code; use a 2xx, 4xx or 5xx status")


def decode_request(frame: bytes) -> Request:
    """Decode one Zest request frame, or raise ProtocolError saying what is wrong with it."""
    code, token, options, payload = _split(bytes(frame))
    method = _METHOD_NAMES.get(code)
    if method is None:
        raise ProtocolError(
            f"Zest code {code} is not a request; use 1 (GET), 2 (POST) or 4 (DELETE)"
        )
    opts = dict(options)
    raw_path = opts.get(OPT_URI_PATH)
    if raw_path is None:
        raise ProtocolError(
            "Zest request has no uri_path (option 11); send the whole path, "
            "e.g. /<DSID>/job, in one option"
        )
    path = _text(raw_path, "uri_path (option 11)")
    if not path.startswith("/"):
        raise ProtocolError(f"Zest uri_path must start with '/', got {path!r:.60}")
    raw_format = opts.get(OPT_CONTENT_FORMAT)
    fmt = FORMAT_JSON if raw_format is None else _uint(raw_format, 2, "content_format (option 12)")
    if fmt not in FORMAT_NAMES:
        raise ProtocolError(
            f"Zest content_format {fmt} is not supported; "
            "use 50 (JSON), 0 (text), 42 (binary) or 60 (CBOR)"
        )
    raw_observe = opts.get(OPT_OBSERVE)
    observe = None if raw_observe is None else _OBSERVE_MODES.get(raw_observe)
    if raw_observe is not None and observe is None:
        mode = raw_observe.decode("utf-8", "replace")
        raise ProtocolError(
            f"Zest observe mode {mode!r:.40} is not supported; send 'data' (or an empty value) "
            "to observe jobs, or 'notification' to serve function calls"
        )
    raw_max_age = opts.get(OPT_MAX_AGE, b"")
    return Request(
        method=method,
        path=path,
        token=_text(token, "token") or None,
        body=_decode_body(payload, fmt),
        observe=observe,
        max_age=_uint(raw_max_age, 4, "max_age (option 14)"),
        content_format=fmt,
        host=_text(opts.get(OPT_URI_HOST, b""), "uri_host (option 3)") or None,
    )


def encode_reply(reply: Reply, request: Request) -> bytes:
    """Encode ``reply`` to ``request`` as a Zest reply frame (no token)."""
    code = status_to_code(reply.status, request.method)
    fmt = FORMAT_JSON if request.content_format is None else request.content_format
    if reply.status >= 400:
        fmt, payload = FORMAT_TEXT, (reply.error or "").encode("utf-8", "replace")
    elif request.observe is not None:
        fmt, payload = FORMAT_TEXT, _encode_body(reply.body, FORMAT_TEXT)
    else:
        payload = _encode_body(reply.body, fmt)
    options = {OPT_CONTENT_FORMAT: _uint_bytes(fmt, 2, "content_format")} if payload else {}
    options.update(reply.options)
    return _frame(code, options.items(), payload)


def encode_request(
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes = b"",
    content_format: int | None = FORMAT_JSON,
    observe: str | None = None,
    max_age: int | None = None,
    host: str | None = None,
) -> bytes:
    """Encode a Zest request frame; ``body`` is the already-encoded payload.

    Options left as ``None`` are not sent. Raises ValueError for a method other than
    GET, POST or DELETE, or for values too large for the frame.
    """
    code = METHOD_CODES.get(method)
    if code is None:
        raise ValueError(f"method must be GET, POST or DELETE, got {method!r}")
    options = [(OPT_URI_PATH, path.encode())]
    if host is not None:
        options.append((OPT_URI_HOST, host.encode()))
    if content_format is not None:
        options.append((OPT_CONTENT_FORMAT, _uint_bytes(content_format, 2, "content_format")))
    if observe is not None:
        options.append((OPT_OBSERVE, observe.encode()))
    if max_age is not None:
        options.append((OPT_MAX_AGE, _uint_bytes(max_age, 4, "max_age")))
    return _frame(code, options, body, (token or "").encode())


def decode_reply(frame: bytes) -> ZestReply:
    """Decode a Zest reply or push frame, or raise ProtocolError when it is malformed."""
    code, _token, options, payload = _split(bytes(frame))
    return ZestReply(code, dict(options), payload)


def encode_push(payload: bytes, content_format: int = FORMAT_JSON) -> bytes:
    """An observe push: code 69 (content), option 12, then ``payload``."""
    fmt = _uint_bytes(content_format, 2, "content_format")
    return _frame(CONTENT, [(OPT_CONTENT_FORMAT, fmt)], payload)


def encode_bare(code: int) -> bytes:
    """A header-only frame, e.g. 163 (service unavailable) when an observation ends."""
    return _frame(code, [])


def _split(frame: bytes) -> tuple[int, bytes, list[tuple[int, bytes]], bytes]:
    if len(frame) < _HEADER.size:
        raise ProtocolError(
            f"Zest frame truncated: the header needs 4 bytes but the frame has {len(frame)}"
        )
    code, count, token_length = _HEADER.unpack_from(frame)
    pos = _HEADER.size
    if token_length > len(frame) - pos:
        raise ProtocolError(
            f"Zest frame truncated: token length is {token_length} "
            f"but {len(frame) - pos} bytes follow the header"
        )
    token = frame[pos : pos + token_length]
    pos += token_length
    options = []
    for index in range(1, count + 1):
        remain = len(frame) - pos
        if remain < _OPTION.size:
            raise ProtocolError(
                f"Zest frame truncated: option {index} of {count} needs a 4-byte header "
                f"but {remain} bytes remain"
            )
        number, length = _OPTION.unpack_from(frame, pos)
        pos += _OPTION.size
        if length > remain - _OPTION.size:
            raise ProtocolError(
                f"Zest frame truncated: option {index} (number {number}) declares "
                f"{length} bytes but {remain - _OPTION.size} remain"
            )
        options.append((number, frame[pos : pos + length]))
        pos += length
    return code, token, options, frame[pos:]


def _frame(
    code: int, options: Iterable[tuple[int, bytes]], payload: bytes = b"", token: bytes = b""
) -> bytes:
    opts = list(options)
    if not 0 <= code <= 0xFF:
        raise ValueError(f"Zest code must fit in one byte, got {code}")
    if len(opts) > _MAX_OPTIONS:
        raise ValueError(f"a Zest frame holds at most 255 options, got {len(opts)}")
    if len(token) > _U16_MAX:
        raise ValueError(f"a Zest token holds at most 65535 bytes, got {len(token)}")
    parts = [_HEADER.pack(code, len(opts), len(token)), token]
    for number, value in opts:
        if not 0 <= number <= _U16_MAX:
            raise ValueError(f"Zest option numbers must fit in 16 bits, got {number}")
        if len(value) > _U16_MAX:
            raise ValueError(f"Zest option {number} holds at most 65535 bytes, got {len(value)}")
        parts += (_OPTION.pack(number, len(value)), value)
    parts.append(payload)
    return b"".join(parts)


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"Zest {what} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


def _uint(value: bytes, size: int, what: str) -> int:
    if len(value) > size:
        raise ProtocolError(
            f"Zest {what} must be an unsigned integer of at most {size} bytes, got {len(value)}"
        )
    return int.from_bytes(value, "big")


def _uint_bytes(value: int, size: int, what: str) -> bytes:
    try:
        return value.to_bytes(size, "big")
    except OverflowError:
        raise ValueError(f"{what} must fit in {size} unsigned bytes, got {value}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_body(payload: bytes, fmt: int) -> Any:
    if not payload:
        return None
    if fmt == FORMAT_BINARY:
        return payload
    if fmt == FORMAT_CBOR:
        return _decode_cbor(payload)
    text = _text(payload, f"{FORMAT_NAMES[fmt]} payload (content_format {fmt})")
    if fmt == FORMAT_TEXT:
        return text
    try:
        value = _DECODER.decode(text)
        if "\\u" in text:  # only escapes can produce unpaired surrogates
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(
            "Zest JSON payload (content_format 50) contains an unpaired surrogate escape"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"Zest payload is not valid JSON (content_format 50): {exc}") from None
    return value


def _decode_cbor(payload: bytes) -> Any:
    value, extra = cbor.decode_one(payload, "Zest payload is not valid CBOR (content_format 60)")
    if extra:
        raise ProtocolError(
            f"Zest CBOR payload has {extra} bytes after its first item; send exactly one item"
        )
    return value


def _encode_body(body: Any, fmt: int) -> bytes:
    if body is None:
        return b""
    if fmt == FORMAT_CBOR:
        return cbor2.dumps(body)
    if fmt == FORMAT_TEXT and isinstance(body, str):
        return body.encode("utf-8", "replace")
    if fmt == FORMAT_BINARY and isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if fmt in FORMAT_NAMES:
        return encode_json(body)
    raise ValueError(f"content_format {fmt} is not one jobstore can encode")


def encode_json(value: Any) -> bytes:
    """Compact, strict JSON, or ValueError saying why ``value`` cannot be sent as JSON.

    Bytes, which records written by older versions may hold, become standard base64 text.
    NaN, infinities, tags and the like raise: the store refuses them at write.
    """
    try:
        return _ENCODER.encode(value).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot be sent as JSON: {exc}") from None


def _json_default(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


# Built once: json.dumps and json.loads build a new coder for every call given options.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
