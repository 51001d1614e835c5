"""zestdb notification RPC frames, byte for byte as zestdb, goZestClient and lib-go-databox use them."""

from __future__ import annotations

import base64
import json

import pytest

from jobstore.errors import BadRequest, ProtocolError
from jobstore.protocol import notification as nt
from jobstore.protocol import zest

from .test_zest_codec import raw_frame

KEY = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # a 40-character Z85 public key
UUID = "3d9c1e0a-8f5b-4c57-9f0a-2b7d1c4e5f60"


def test_observe_with_notification_mode_decodes_as_notification() -> None:
    # goZestClient's Observe: options 11, 3, 6, 12, 14 in that order.
    frame = raw_frame(
        zest.GET,
        [
            (11, b"/notification/request/*"),
            (3, b"driver-host"),
            (6, b"notification"),
            (12, b"\x00\x32"),
            (14, b"\x00\x00\x00\x00"),
        ],
        token=b"MDAx",
    )
    got = zest.decode_request(frame)
    assert (got.method, got.path, got.observe, got.content_format, got.max_age, got.host) == (
        "GET",
        "/notification/request/*",
        "notification",
        50,
        0,
        "driver-host",
    )


def test_observe_mode_audit_is_still_refused() -> None:
    with pytest.raises(ProtocolError, match="observe mode 'audit' is not supported"):
        zest.decode_request(zest.encode_request("GET", "/p", observe="audit"))


def test_observe_ack_is_zestdbs_bytes() -> None:
    expected = (
        bytes.fromhex("45020000")
        + bytes.fromhex("000c00020000")
        + bytes.fromhex("08000028")
        + KEY
        + UUID.encode()
    )
    assert nt.observe_ack(KEY, UUID) == expected


def test_notify_ack_is_65_with_only_the_key() -> None:
    assert nt.notify_ack(KEY) == bytes.fromhex("41010000") + bytes.fromhex("08000028") + KEY


def test_notify_ack_with_curve_off_carries_an_empty_key() -> None:
    assert nt.notify_ack(b"") == bytes.fromhex("41010000") + bytes.fromhex("08000000")


def test_call_push_to_driver_is_zestdbs_line() -> None:
    request = nt.call_request({"on": True}, zest.FORMAT_JSON, "callerHost")
    frame = nt.call_push(1534675126283, "light", UUID, request)
    line = f"1534675126283 callerHost /notification/response/light/{UUID} json " + '{"on":true}'
    assert frame == bytes.fromhex("45010000") + bytes.fromhex("000c00020032") + line.encode()


@pytest.mark.parametrize(
    ("fmt", "body", "ct", "option", "payload"),
    [
        (zest.FORMAT_TEXT, "hello world", "text", b"\x00\x00", b"hello world"),
        (zest.FORMAT_BINARY, b"\x00\xff ", "binary", b"\x00\x2a", b"\x00\xff "),
    ],
)
def test_call_push_keeps_text_and_binary_payloads_as_sent(
    fmt: int, body: object, ct: str, option: bytes, payload: bytes
) -> None:
    request = nt.call_request(body, fmt, "h")
    frame = nt.call_push(7, "f", "c", request)
    head = f"7 h /notification/response/f/c {ct} ".encode()
    assert frame == bytes.fromhex("45010000") + b"\x00\x0c\x00\x02" + option + head + payload


def test_binary_call_is_stored_as_base64_text() -> None:
    assert nt.call_request(b"\x00\xff", zest.FORMAT_BINARY, "h") == {
        "format": "binary",
        "payload": "AP8=",
        "host": "h",
    }


def test_call_without_payload_ends_its_line_after_the_content_type() -> None:
    line = nt.call_line(1, "f", "c", nt.call_request(None, zest.FORMAT_JSON, None))
    assert line == b"1 - /notification/response/f/c json "
    assert nt.parse_call_line(line).payload == b""


def test_driver_splits_the_line_as_lib_go_databox() -> None:
    request = nt.call_request("a b c", zest.FORMAT_TEXT, "host")
    got = nt.parse_call_line(nt.call_line(5, "fn", "J1", request))
    assert got == nt.CallLine(5, "host", "/notification/response/fn/J1", "text", b"a b c")
    assert got.response_path.split("/")[3] == "fn"  # lib-go-databox's function name


def test_cbor_call_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"JSON \(50\), text \(0\) or binary \(42\), got 60"):
        nt.call_request({}, zest.FORMAT_CBOR, "h")


def test_uri_host_with_white_space_is_refused() -> None:
    with pytest.raises(BadRequest, match="uri_host 'a b' holds white space"):
        nt.call_request({}, zest.FORMAT_JSON, "a b")


def test_response_push_to_caller_is_zestdbs_line() -> None:
    body = b'{"Status":0,"Response":"eyJvayI6dHJ1ZX0="}'
    frame = nt.response_push(1534675126290, "light", UUID, body)
    line = f"1534675126290 /notification/response/light/{UUID} json ".encode() + body
    assert frame == bytes.fromhex("45010000") + bytes.fromhex("000c00020032") + line


def test_func_response_is_what_go_json_marshal_writes() -> None:
    assert nt.func_response(0, b'{"ok":true}') == b'{"Status":0,"Response":"eyJvayI6dHJ1ZX0="}'
    assert nt.func_response(99, None) == b'{"Status":99,"Response":null}'


@pytest.mark.parametrize(
    "body",
    [
        {"Status": 0, "Response": "eyJvayI6dHJ1ZX0="},
        '{"Status":0,"Response":"eyJvayI6dHJ1ZX0="}',  # posted in the call's text format
        b'{"Status":0,"Response":"eyJvayI6dHJ1ZX0="}',  # posted in the call's binary format
    ],
)
def test_func_response_parses_in_every_format_a_driver_posts(body: object) -> None:
    assert nt.parse_func_response(body) == {"Status": 0, "Response": "eyJvayI6dHJ1ZX0="}


def test_func_response_with_null_response_parses() -> None:
    assert nt.parse_func_response({"Status": 99, "Response": None}) == {
        "Status": 99,
        "Response": None,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "which is not JSON"),
        ([0], "must be the JSON map"),
        ({"Response": None}, "must be the JSON map"),
        ({"Status": 0, "Response": None, "extra": 1}, "must be the JSON map"),
        ({"Status": "0"}, "Status must be an integer"),
        ({"Status": True}, "Status must be an integer"),
        ({"Status": 1 << 63}, "Status must be an integer"),
        ({"Status": 0, "Response": 5}, "Response must be base64 text or null"),
        ({"Status": 0, "Response": "no base64!"}, "Response must be standard base64"),
    ],
)
def test_malformed_func_response_is_400_saying_why(body: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        nt.parse_func_response(body)
    assert caught.value.status == 400
    assert zest.status_to_code(caught.value.status, "POST") == zest.BAD_REQUEST


def test_native_complete_becomes_status_0_with_the_response_in_the_calls_format() -> None:
    json_call = nt.call_request({"x": 1}, zest.FORMAT_JSON, "h")
    text_call = nt.call_request("x", zest.FORMAT_TEXT, "h")
    binary_call = nt.call_request(b"x", zest.FORMAT_BINARY, "h")
    assert json.loads(nt.response_for_caller("complete", {"on": 1}, json_call)) == {
        "Status": 0,
        "Response": base64.b64encode(b'{"on":1}').decode(),
    }
    assert (
        json.loads(nt.response_for_caller("complete", "done", text_call))["Response"] == "ZG9uZQ=="
    )
    assert json.loads(nt.response_for_caller("complete", "AP8=", binary_call))["Response"] == "AP8="


def test_native_failure_becomes_status_99_with_the_error_text() -> None:
    request = nt.call_request({}, zest.FORMAT_JSON, "h")
    body = json.loads(nt.response_for_caller("failed", {"error": "lamp unplugged"}, request))
    assert body["Status"] == 99
    assert base64.b64decode(body["Response"]) == b"lamp unplugged"
    cancelled = json.loads(nt.response_for_caller("cancelled", None, request))
    assert base64.b64decode(cancelled["Response"]) == b"the call ended cancelled without a response"


def test_zest_drivers_response_goes_back_as_posted() -> None:
    posted = {"Status": 99, "Response": "Ym9vbQ=="}
    request = nt.call_request({}, zest.FORMAT_JSON, "h")
    assert (
        nt.response_for_caller("failed", posted, request) == b'{"Status":99,"Response":"Ym9vbQ=="}'
    )


def test_function_item_is_what_register_datasource_posts() -> None:
    item = nt.function_item("tcp://driver-core-store:5555", "acme", "light")
    expected = (
        '{"item-metadata":[{"rel":"urn:X-hypercat:rels:hasDescription:en","val":"A function"},'
        '{"rel":"urn:X-hypercat:rels:isContentType","val":"JSON"},'
        '{"rel":"urn:X-databox:rels:hasVendor","val":"acme"},'
        '{"rel":"urn:X-databox:rels:hasType","val":"acme:func:light"},'
        '{"rel":"urn:X-databox:rels:hasDatasourceid","val":"light"},'
        '{"rel":"urn:X-databox:rels:hasStoreType","val":"notification/request"},'
        '{"rel":"urn:X-databox:rels:isFunc","val":true}],'
        '"href":"tcp://driver-core-store:5555/request/light"}'
    )
    assert zest.encode_json(item).decode() == expected


def test_function_item_names_its_function_and_other_items_none() -> None:
    assert nt.registered_function(nt.function_item("tcp://s:5555", "v", "light")) == "light"
    item = nt.function_item("tcp://s:5555", "v", "light")
    item["item-metadata"][-1]["val"] = "true"  # a string is not Go's bool: not a function
    assert nt.registered_function(item) is None
    assert nt.registered_function({"href": "x"}) is None


def test_function_item_round_trips_through_a_zest_json_post() -> None:
    item = nt.function_item("tcp://s:5555", "v", "light")
    frame = zest.encode_request("POST", "/cat", body=zest.encode_json(item))
    got = zest.decode_request(frame).body
    assert got["item-metadata"][-1]["val"] is True


def test_call_paths_parse_and_name_checks_apply() -> None:
    assert nt.parse_path(f"/notification/request/light/{UUID}") == nt.CallPath(
        "request", "light", UUID
    )
    assert nt.parse_path("/light/job") is None
    with pytest.raises(BadRequest, match="is not /notification/request/<function>/<call id>"):
        nt.parse_path("/notification/request/light")
    with pytest.raises(BadRequest, match="function name: dsid 'server' is reserved"):
        nt.parse_path("/notification/request/server/j")
    with pytest.raises(BadRequest, match="call id 'a b' is not a valid name"):
        nt.parse_path("/notification/response/light/a b")
