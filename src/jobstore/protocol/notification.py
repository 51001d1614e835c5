"""Frames of zestdb's notification RPC, the one lib-go-databox's ``Func`` calls ride on.

Pure: names, paths, lines and bodies in, bytes out (and back). The frame-level facts come
from zestdb's server (the push lines), goZestClient (the acks it accepts) and lib-go-databox
(how a driver splits a call line, the ``FuncResponse`` body and the catalogue item):

* A driver observes ``/notification/request/*`` with observe mode ``notification``; the ack
  is code 69, content format 0, option 2048 (the observe socket's key), the UUID payload.
* A caller's Notify (a GET of ``/notification/response/F/J`` without option 6) is answered
  65 with option 2048 and no payload; its DEALER's identity is that path.
* A call pushed to a driver is ``<ms> <uri_host> /notification/response/F/J <ct> <payload>``
  with option 12 = the call's content format; ``ct`` is ``json``, ``text`` or ``binary``.
* A response pushed to the caller is ``<ms> /notification/response/F/J json <body>`` where
  body is ``{"Status": n, "Response": <base64 or null>}`` as Go's json.Marshal writes it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, NamedTuple

from ..errors import BadRequest
from ..records import check_dsid, check_name
from . import Reply, Request, shown, zest

REQUEST_PREFIX = "/notification/request/"
RESPONSE_PREFIX = "/notification/response/"
# The client id every function call's job is stored under.
CALL_CLIENT = "notification"

STATUS_OK = 0  # lib-go-databox FuncStatusOK
STATUS_ERROR = 99  # FuncStatusError: Response holds the error text
_GO_INT = (-(1 << 63), (1 << 63) - 1)  # FuncStatus is a Go int

# Content formats a call may have, by the name a call line carries (zestdb's prov.re).
CT_NAMES = {zest.FORMAT_JSON: "json", zest.FORMAT_TEXT: "text", zest.FORMAT_BINARY: "binary"}
CT_FORMATS = {name: fmt for fmt, name in CT_NAMES.items()}


class CallPath(NamedTuple):
    """A function-call path: ``side`` is ``request`` or ``response``, F the function, J the call."""

    side: str
    function: str
    call: str


def parse_path(path: str) -> CallPath | None:
    """The call a ``/notification/request|response/F/J`` path names; None when the path is not
    under ``/notification/``; BadRequest when it is but F or J is not a valid name."""
    if not path.startswith("/notification/"):
        return None
    parts = path.split("/")
    if len(parts) != 5 or parts[2] not in ("request", "response"):
        raise BadRequest(
            f"function-call path {path[:200]!r} is not /notification/request/<function>/<call id> "
            "or /notification/response/<function>/<call id>"
        )
    return CallPath(parts[2], check_function(parts[3]), check_call(parts[4]))


def check_function(name: Any) -> str:
    """A function name is a datasource id (its calls are that datasource's jobs)."""
    try:
        return check_dsid(name)
    except BadRequest as exc:
        raise BadRequest(f"function name: {exc.message}") from None


def check_call(name: Any) -> str:
    """A call id is a job id (lib-go-databox makes it a UUID)."""
    return check_name("call id", name)


def request_path(function: str, call: str) -> str:
    return f"{REQUEST_PREFIX}{function}/{call}"


def response_path(function: str, call: str) -> str:
    """Also the identity of the caller's DEALER (goZestClient's Notify)."""
    return f"{RESPONSE_PREFIX}{function}/{call}"


def observe_ack(key: bytes, ident: str) -> bytes:
    """Reply to an observe: 69, content format 0, option 2048 = ``key``, payload the UUID."""
    request = Request("GET", REQUEST_PREFIX + "*", observe=zest.OBSERVE_NOTIFICATION)
    reply = Reply(200, ident, options={zest.OPT_OBSERVE_KEY: key})
    return zest.encode_reply(reply, request._replace(content_format=zest.FORMAT_TEXT))


def notify_ack(key: bytes) -> bytes:
    """Reply to a Notify: 65 with option 2048 = ``key`` and nothing else (goZestClient needs 2048)."""
    reply = Reply(201, None, options={zest.OPT_OBSERVE_KEY: key})
    return zest.encode_reply(reply, Request("GET", RESPONSE_PREFIX))


# --- the call, as stored and as pushed --------------------------------------------------


def call_request(body: Any, content_format: int, host: str | None) -> dict[str, Any]:
    """The job request a call is stored as: ``{format, payload, host}``.

    ``payload`` is the call's payload decoded per its format: a JSON value, text, or base64
    text for binary (stored values hold no bytes); null when the call sent none. ``host`` is
    the caller's uri_host, which the call line carries to the driver.
    """
    name = CT_NAMES.get(content_format)
    if name is None:
        raise BadRequest(
            f"a function call's content format must be JSON (50), text (0) or binary (42), "
            f"got {content_format}: lib-go-databox drivers serve no other"
        )
    if host is not None and (not host or any(c.isspace() for c in host)):
        raise BadRequest(
            f"uri_host {shown(host)} holds white space; the call line a driver splits on spaces "
            "carries it: send the caller's hostname"
        )
    if name == "binary" and body is not None:
        body = base64.b64encode(body).decode()
    return {"format": name, "payload": body, "host": host or "-"}


def call_format(request: Any) -> int:
    """The content format of a stored call (JSON for a record that is not one)."""
    name = request.get("format") if isinstance(request, dict) else None
    return CT_FORMATS.get(name, zest.FORMAT_JSON) if isinstance(name, str) else zest.FORMAT_JSON


def call_payload(request: Any) -> bytes:
    """The payload bytes of a stored call, as the caller sent them (JSON re-encoded compactly)."""
    fmt, payload = (
        call_format(request),
        request.get("payload") if isinstance(request, dict) else None,
    )
    if payload is None:
        return b""
    if fmt == zest.FORMAT_BINARY and isinstance(payload, str):
        return base64.b64decode(payload)
    if fmt == zest.FORMAT_TEXT and isinstance(payload, str):
        return payload.encode()
    return zest.encode_json(payload)


def call_line(ms: int, function: str, call: str, request: Any) -> bytes:
    """What a driver receives: ``<ms> <uri_host> /notification/response/F/J <ct> <payload>``."""
    host = request.get("host") if isinstance(request, dict) else None
    ct = CT_NAMES[call_format(request)]
    head = f"{ms} {host if isinstance(host, str) else '-'} {response_path(function, call)} {ct} "
    return head.encode() + call_payload(request)


def call_push(ms: int, function: str, call: str, request: Any) -> bytes:
    """The push frame to a driver's DEALER: 69, option 12 = the call's format, the call line."""
    return zest.encode_push(call_line(ms, function, call, request), call_format(request))


class CallLine(NamedTuple):
    """A call line split as lib-go-databox splits it (SplitN on spaces, 5 parts)."""

    ms: int
    host: str
    response_path: str
    content_type: str
    payload: bytes


def parse_call_line(line: bytes) -> CallLine:
    """Split a call line; ValueError when it has fewer than 4 fields or a non-numeric time."""
    parts = line.split(b" ", 4)
    if len(parts) < 4:
        raise ValueError(f"a call line has at least 4 space-separated fields, got {len(parts)}")
    payload = parts[4] if len(parts) == 5 else b""
    return CallLine(int(parts[0]), parts[1].decode(), parts[2].decode(), parts[3].decode(), payload)


# --- the response ------------------------------------------------------------------------


def func_response(status: int, response: bytes | None) -> bytes:
    """A ``FuncResponse`` body as Go's json.Marshal writes it: bytes as base64, nil as null."""
    encoded = None if response is None else base64.b64encode(response).decode()
    return json.dumps({"Status": status, "Response": encoded}, separators=(",", ":")).encode()


def parse_func_response(body: Any) -> dict[str, Any]:
    """The ``{"Status", "Response"}`` map a driver posted, checked, as it is stored.

    ``body`` is the response POST's payload as the Zest codec decoded it: a map for JSON,
    text or bytes for the other formats (lib-go-databox posts the JSON in the call's format).
    Raises BadRequest (400, Zest 128) saying what is wrong.
    """
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(_RESPONSE_SHAPE + f"; got {shown(body)}, which is not JSON") from None
    if not isinstance(body, dict) or set(body) - {"Status", "Response"} or "Status" not in body:
        raise BadRequest(_RESPONSE_SHAPE + f"; got {shown(body)}")
    status, response = body["Status"], body.get("Response")
    if type(status) is not int or not _GO_INT[0] <= status <= _GO_INT[1]:
        raise BadRequest(f"Status must be an integer (0 for success), got {shown(status)}")
    if response is not None:
        if not isinstance(response, str):
            raise BadRequest(f"Response must be base64 text or null, got {shown(response)}")
        try:
            base64.b64decode(response, validate=True)
        except binascii.Error:
            raise BadRequest(f"Response must be standard base64, got {shown(response)}") from None
    return {"Status": status, "Response": response}


_RESPONSE_SHAPE = (
    'a function response must be the JSON map {"Status": <integer>, "Response": <base64 or null>}'
)


def is_func_response(value: Any) -> bool:
    """Whether a stored response already is a ``FuncResponse`` map (a Zest driver posted it)."""
    try:
        parse_func_response(value if isinstance(value, dict) else None)
    except BadRequest:
        return False
    return True


def response_for_caller(status: str, response: Any, request: Any) -> bytes:
    """The ``FuncResponse`` body the caller gets for a call that ended with ``status``.

    A response a Zest driver posted goes back as posted. A native driver's ``complete``
    response becomes Status 0 with the response encoded in the call's format (base64, as Go
    expects); any other end (failed, forbidden, cancelled) Status 99 with the error text.
    """
    if is_func_response(response):
        return zest.encode_json(response)
    if status == "complete":
        fmt = call_format(request)
        if response is None:
            return func_response(STATUS_OK, None)
        if fmt != zest.FORMAT_JSON and isinstance(response, str):
            data = base64.b64decode(response) if fmt == zest.FORMAT_BINARY else response.encode()
            return func_response(STATUS_OK, data)
        return func_response(STATUS_OK, zest.encode_json(response))
    return func_response(STATUS_ERROR, error_text(status, response).encode())


def error_text(status: str, response: Any) -> str:
    """The error a caller reads for a call that did not complete."""
    if isinstance(response, dict) and isinstance(response.get("error"), str):
        return str(response["error"])
    if isinstance(response, str):
        return response
    if response is None:
        return f"the call ended {status} without a response"
    return zest.encode_json(response).decode()


def response_line(ms: int, function: str, call: str, body: bytes) -> bytes:
    """What the caller's DEALER receives: ``<ms> /notification/response/F/J json <body>``."""
    return f"{ms} {response_path(function, call)} json ".encode() + body


def response_push(ms: int, function: str, call: str, body: bytes) -> bytes:
    """The push frame to the caller's DEALER: 69, option 12 = 50, the response line."""
    return zest.encode_push(response_line(ms, function, call, body), zest.FORMAT_JSON)


# --- the catalogue -----------------------------------------------------------------------


def function_item(href_base: str, vendor: str, function: str) -> dict[str, Any]:
    """The item lib-go-databox's Register posts to ``/cat`` (href ends ``/request/F``)."""
    return {
        "item-metadata": [
            {"rel": "urn:X-hypercat:rels:hasDescription:en", "val": "A function"},
            {"rel": "urn:X-hypercat:rels:isContentType", "val": "JSON"},
            {"rel": "urn:X-databox:rels:hasVendor", "val": vendor},
            {"rel": "urn:X-databox:rels:hasType", "val": f"{vendor}:func:{function}"},
            {"rel": "urn:X-databox:rels:hasDatasourceid", "val": function},
            {"rel": "urn:X-databox:rels:hasStoreType", "val": "notification/request"},
            {"rel": "urn:X-databox:rels:isFunc", "val": True},
        ],
        "href": f"{href_base}/request/{function}",
    }


def registered_function(item: Any) -> str | None:
    """The function a catalogue item registers (isFunc true), or None for any other item."""
    if not isinstance(item, dict) or not isinstance(item.get("item-metadata"), list):
        return None
    rels = {
        pair.get("rel"): pair.get("val") for pair in item["item-metadata"] if isinstance(pair, dict)
    }
    name = rels.get("urn:X-databox:rels:hasDatasourceid")
    if rels.get("urn:X-databox:rels:isFunc") is not True or not isinstance(name, str):
        return None
    return name
