"""The Zest codec: round trips, status mapping, and ProtocolError for every malformed frame."""

from __future__ import annotations

import json
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstore.errors import BadRequest, ProtocolError
from jobstore.protocol import Reply, Request, zest
from jobstore.store.validation import check_plain

from .hostile import HOSTILE, TRAILING, json_text


def raw_frame(
    code: int, options: list[tuple[int, bytes]], payload: bytes = b"", token: bytes = b""
) -> bytes:
    """Build a frame byte by byte, independently of the codec under test."""
    out = struct.pack(">BBH", code, len(options), len(token)) + token
    for number, value in options:
        out += struct.pack(">HH", number, len(value)) + value
    return out + payload


def decode_or_protocol_error(frame: bytes) -> None:
    """The core invariant: a Request or a ProtocolError with a message, nothing else."""
    try:
        assert isinstance(zest.decode_request(frame), Request)
    except ProtocolError as exc:
        assert exc.message
    try:
        assert isinstance(zest.decode_reply(frame), zest.ZestReply)
    except ProtocolError as exc:
        assert exc.message


SAMPLE_BODIES: dict[int, tuple[bytes, Any]] = {
    zest.FORMAT_JSON: (b'{"job":"a1","n":[1,2.5,null]}', {"job": "a1", "n": [1, 2.5, None]}),
    zest.FORMAT_TEXT: ("héllo".encode(), "héllo"),
    zest.FORMAT_BINARY: (b"\x00\xff\x10", b"\x00\xff\x10"),
    zest.FORMAT_CBOR: (cbor2.dumps({"job": "a1", "blob": b"\x00"}), {"job": "a1", "blob": b"\x00"}),
}


def request(
    method: str = "GET", content_format: int | None = 50, observe: str | None = None
) -> Request:
    """The decoded request a reply answers."""
    return Request(method, "/ds/job/app", content_format=content_format, observe=observe)


# --- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("fmt", sorted(SAMPLE_BODIES))
def test_request_round_trips_every_method_and_format(method: str, fmt: int) -> None:
    payload, body = SAMPLE_BODIES[fmt]
    frame = zest.encode_request(method, "/ds/job/app", body=payload, content_format=fmt)
    assert zest.decode_request(frame) == Request(
        method, "/ds/job/app", body=body, content_format=fmt
    )


def test_request_round_trips_token_host_observe_and_max_age() -> None:
    frame = zest.encode_request(
        "GET", "/ds/job/app", token="MDAx.mac", observe="data", max_age=3600, host="app-host"
    )
    got = zest.decode_request(frame)
    assert (got.token, got.host, got.observe, got.max_age) == ("MDAx.mac", "app-host", "data", 3600)


def test_absent_token_host_observe_and_max_age_decode_as_defaults() -> None:
    got = zest.decode_request(zest.encode_request("GET", "/ds/job/app"))
    assert (got.token, got.host, got.observe, got.max_age) == (None, None, None, 0)


def test_absent_content_format_means_json() -> None:
    got = zest.decode_request(zest.encode_request("POST", "/p", body=b"[1]", content_format=None))
    assert (got.content_format, got.body) == (zest.FORMAT_JSON, [1])


@pytest.mark.parametrize("fmt", sorted(SAMPLE_BODIES))
def test_empty_payload_is_no_body_in_every_format(fmt: int) -> None:
    assert zest.decode_request(zest.encode_request("POST", "/p", content_format=fmt)).body is None


def test_observe_with_empty_value_means_data() -> None:
    assert zest.decode_request(zest.encode_request("GET", "/p", observe="")).observe == "data"


def test_observe_mode_other_than_data_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="observe mode 'audit' is not supported"):
        zest.decode_request(zest.encode_request("GET", "/p", observe="audit"))


def test_short_max_age_is_a_big_endian_uint() -> None:
    frame = raw_frame(zest.GET, [(11, b"/p"), (14, b"\x01\x00")])
    assert zest.decode_request(frame).max_age == 256


def test_max_age_longer_than_four_bytes_is_rejected() -> None:
    frame = raw_frame(zest.GET, [(11, b"/p"), (14, b"\x00" * 5)])
    with pytest.raises(ProtocolError, match=r"max_age \(option 14\) must be .* at most 4 bytes"):
        zest.decode_request(frame)


def test_unknown_content_format_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="content_format 41 is not supported"):
        zest.decode_request(zest.encode_request("GET", "/p", content_format=41))


def test_missing_uri_path_is_rejected() -> None:
    with pytest.raises(ProtocolError, match=r"no uri_path \(option 11\)"):
        zest.decode_request(raw_frame(zest.GET, [(12, b"\x00\x32")]))


def test_uri_path_without_leading_slash_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="must start with '/'"):
        zest.decode_request(zest.encode_request("GET", "ds/job"))


def test_reply_code_in_request_position_is_rejected() -> None:
    with pytest.raises(ProtocolError, match=r"Zest code 69 is not a request; use 1 \(GET\)"):
        zest.decode_request(raw_frame(zest.CONTENT, [(11, b"/p")]))


def test_unknown_options_are_ignored() -> None:
    frame = raw_frame(zest.GET, [(99, b"junk"), (11, b"/p"), (2048, b"key")])
    assert zest.decode_request(frame) == Request("GET", "/p", content_format=zest.FORMAT_JSON)


def test_repeated_option_last_one_wins() -> None:
    assert zest.decode_request(raw_frame(zest.GET, [(11, b"/a"), (11, b"/b")])).path == "/b"


@pytest.mark.parametrize(
    ("fmt", "payload", "message"),
    [
        (50, b"{not json", r"not valid JSON \(content_format 50\)"),
        (50, b"NaN", r"not valid JSON"),
        (50, b'"\\ud800"', "unpaired surrogate"),
        (50, b"[" * 100_000 + b"]" * 100_000, r"not valid JSON"),
        (0, b"\xff\xfe", r"text payload \(content_format 0\) is not valid UTF-8"),
        (60, b"\x5b\xff", r"not valid CBOR \(content_format 60\)"),
        (60, b"\x01\x02", "1 bytes after its first item"),
    ],
)
def test_undecodable_payload_names_the_format(fmt: int, payload: bytes, message: str) -> None:
    frame = zest.encode_request("POST", "/p", body=payload, content_format=fmt)
    with pytest.raises(ProtocolError, match=message):
        zest.decode_request(frame)


def test_token_that_is_not_utf8_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="token is not valid UTF-8"):
        zest.decode_request(raw_frame(zest.GET, [(11, b"/p")], token=b"\xc3"))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "the header needs 4 bytes but the frame has 0"),
        (b"\x01\x01\x00", "the header needs 4 bytes but the frame has 3"),
        (b"\x01\x00\x00\x28abc", "token length is 40 but 3 bytes follow the header"),
        (b"\x01\x02\x00\x00\x00\x0b\x00\x02/p\x00", "option 2 of 2 needs a 4-byte header but 1"),
        (b"\x01\x01\x00\x00\x00\x0b\x00\x28/pa", r"option 1 \(number 11\) declares 40 bytes but 3"),
    ],
)
def test_truncated_frame_says_what_is_missing(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=f"Zest frame truncated: {message}"):
        zest.decode_request(frame)


# --- replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "method", "code"),
    [
        (200, "GET", 69),
        (200, "POST", 65),
        (200, "DELETE", 65),
        (201, "POST", 65),
        (400, "GET", 128),
        (401, "GET", 129),
        (403, "GET", 131),
        (404, "GET", 132),
        (405, "GET", 133),
        (409, "POST", 137),
        (413, "POST", 141),
        (429, "POST", 157),
        (500, "GET", 160),
        (503, "GET", 163),
        (507, "POST", 160),
        (418, "GET", 128),
        (502, "GET", 160),
    ],
)
def test_status_maps_to_zest_code(status: int, method: str, code: int) -> None:
    assert zest.status_to_code(status, method) == code
    frame = zest.encode_reply(Reply(status, error="e" if status >= 400 else None), request(method))
    assert zest.decode_reply(frame).code == code


def test_status_outside_2xx_4xx_5xx_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="status 302 has no Zest reply code"):
        zest.status_to_code(302, "GET")


@pytest.mark.parametrize("fmt", sorted(SAMPLE_BODIES))
def test_reply_payload_uses_the_request_format(fmt: int) -> None:
    payload, body = SAMPLE_BODIES[fmt]
    got = zest.decode_reply(zest.encode_reply(Reply(200, body), request(content_format=fmt)))
    assert got == zest.ZestReply(zest.CONTENT, {12: fmt.to_bytes(2, "big")}, payload)


def test_reply_to_native_request_is_json() -> None:
    got = zest.decode_reply(zest.encode_reply(Reply(200, {"a": 1}), request(content_format=None)))
    assert (got.options[12], got.payload) == (b"\x00\x32", b'{"a":1}')


@pytest.mark.parametrize("fmt", [zest.FORMAT_TEXT, zest.FORMAT_BINARY])
def test_reply_body_that_does_not_fit_the_format_is_sent_as_json_text(fmt: int) -> None:
    frame = zest.encode_reply(Reply(200, {"id": "a1"}), request(content_format=fmt))
    assert zest.decode_reply(frame).payload == b'{"id":"a1"}'


def test_reply_without_body_is_a_bare_header() -> None:
    assert zest.encode_reply(Reply(201), request("POST")) == b"\x41\x00\x00\x00"


def test_error_reply_payload_is_the_error_text() -> None:
    reply = Reply(404, body={"ignored": True}, error='no job "x" for client app')
    got = zest.decode_reply(zest.encode_reply(reply, request(content_format=zest.FORMAT_CBOR)))
    assert got == zest.ZestReply(zest.NOT_FOUND, {12: b"\x00\x00"}, b'no job "x" for client app')


def test_observe_reply_is_text_and_carries_the_observe_key() -> None:
    reply = Reply(200, "6f1c8a52-0c1e-4b7e-9d1a-3f7d2b9e8c41", options={2048: b"Z85key"})
    got = zest.decode_reply(zest.encode_reply(reply, request(observe="data")))
    assert got.code == zest.CONTENT
    assert got.options == {12: b"\x00\x00", 2048: b"Z85key"}
    assert got.payload == b"6f1c8a52-0c1e-4b7e-9d1a-3f7d2b9e8c41"


def test_reply_options_are_carried_on_error_replies_too() -> None:
    got = zest.decode_reply(
        zest.encode_reply(Reply(503, error="busy", options={2048: b""}), request())
    )
    assert got.options[2048] == b""


def test_push_frame_is_content_with_format() -> None:
    frame = zest.encode_push(b'1 /ds/job/app/a1 json {"id":"a1"}')
    assert zest.decode_reply(frame) == zest.ZestReply(
        69, {12: b"\x00\x32"}, b'1 /ds/job/app/a1 json {"id":"a1"}'
    )


def test_bare_frame_is_header_only() -> None:
    assert zest.encode_bare(zest.SERVICE_UNAVAILABLE) == b"\xa3\x00\x00\x00"


def test_decode_reply_rejects_truncated_frame() -> None:
    with pytest.raises(ProtocolError, match="option 1 of 1 needs a 4-byte header"):
        zest.decode_reply(b"\x45\x01\x00\x00")


# --- encoder guards ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "t" * 65536}, "token holds at most 65535 bytes"),
        ({"host": "h" * 65536}, "option 3 holds at most 65535 bytes"),
        ({"max_age": 2**32}, "max_age must fit in 4 unsigned bytes"),
        ({"max_age": -1}, "max_age must fit in 4 unsigned bytes"),
        ({"content_format": 65536}, "content_format must fit in 2 unsigned bytes"),
    ],
)
def test_encode_request_rejects_values_too_large_for_the_frame(kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zest.encode_request("GET", "/p", **kwargs)


def test_encode_request_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="method must be GET, POST or DELETE"):
        zest.encode_request("PUT", "/p")


def test_encode_reply_rejects_more_than_255_options() -> None:
    reply = Reply(200, options={n: b"" for n in range(3000, 3256)})
    with pytest.raises(ValueError, match="at most 255 options, got 256"):
        zest.encode_reply(reply, request())


# --- properties -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)

valid_frames = st.builds(
    zest.encode_request,
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.text(max_size=20).map(lambda s: "/" + s),
    token=st.none() | st.text(max_size=20),
    body=st.binary(max_size=40),
    content_format=st.sampled_from([None, 0, 42, 50, 60, 7]),
    observe=st.sampled_from([None, "", "data", "audit"]),
    max_age=st.none() | st.integers(0, 2**32 - 1),
    host=st.none() | st.text(max_size=10),
)

any_option = st.tuples(
    st.sampled_from([3, 6, 11, 12, 14, 2048]) | st.integers(0, 0xFFFF), st.binary(max_size=8)
)


@given(json_values, st.text(max_size=30), st.sampled_from(["GET", "POST", "DELETE"]))
def test_any_json_body_round_trips(body: Any, path: str, method: str) -> None:
    payload = json.dumps(body).encode()
    got = zest.decode_request(zest.encode_request(method, "/" + path, body=payload))
    assert (got.method, got.path, got.body) == (method, "/" + path, body)


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    decode_or_protocol_error(frame)


@given(
    st.sampled_from([1, 2, 4]),
    st.lists(any_option, max_size=6),
    st.binary(max_size=30),
    st.binary(max_size=6),
)
def test_well_formed_frames_with_arbitrary_options_decode_or_raise_protocol_error(
    code: int, options: list[tuple[int, bytes]], payload: bytes, token: bytes
) -> None:
    decode_or_protocol_error(raw_frame(code, options, payload, token))


@given(valid_frames, st.data())
def test_mutated_valid_frames_decode_or_raise_protocol_error(
    frame: bytes, data: st.DataObject
) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "insert"]))
        at = data.draw(st.integers(0, len(mutated)))
        if kind == "flip" and at < len(mutated):
            mutated[at] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del mutated[at:]
        elif kind == "extend":
            mutated += data.draw(st.binary(min_size=1, max_size=8))
        else:
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    decode_or_protocol_error(bytes(mutated))


@given(HOSTILE, st.sampled_from([zest.FORMAT_JSON, zest.FORMAT_CBOR]), TRAILING)
def test_hostile_bodies_give_a_request_or_a_protocol_error_and_accepted_ones_encode_as_json(
    body: Any, fmt: int, tail: bytes
) -> None:
    payload = (json_text(body) if fmt == zest.FORMAT_JSON else cbor2.dumps(body)) + tail
    frame = zest.encode_request("POST", "/ds/job/", body=payload, content_format=fmt)
    try:
        request = zest.decode_request(frame)
    except ProtocolError as exc:
        assert exc.message and len(exc.message) < 400
        return
    try:
        check_plain("request", request.body)
    except BadRequest as exc:
        assert exc.message.startswith("request") and len(exc.message) < 400
    else:
        json.loads(zest.encode_json(request.body))
