import json
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobstore.errors import BadRequest, ProtocolError
from jobstore.protocol import Reply, Request, zest
from jobstore.protocol.cbor import (
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    head,
    is_native,
    jobs_body,
)
from jobstore.store.validation import check_plain

from .hostile import HOSTILE, HUGE, NOT_JSON, TRAILING

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
ids = st.none() | st.integers(0, 2**64 - 1) | st.text(max_size=20)


@given(
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.text(max_size=30).map(lambda s: "/" + s),
    plain,
    ids,
    st.none() | st.text(min_size=1, max_size=40),
)
def test_request_round_trips(
    method: str, path: str, body: object, rid: object, token: object
) -> None:
    frame = encode_request(method, path, body, token=token, id=rid)  # type: ignore[arg-type]
    assert is_native(frame)
    assert decode_request(frame) == Request(method, path, token, body, rid)  # type: ignore[arg-type]


@given(st.integers(100, 599), plain, st.none() | st.text(max_size=40), ids)
def test_reply_round_trips(status: int, body: object, error: object, rid: object) -> None:
    reply = Reply(status, body, error, rid)  # type: ignore[arg-type]
    assert decode_reply(encode_reply(reply)) == reply


@given(st.binary(max_size=200))
def test_garbage_bytes_decode_to_a_request_or_a_protocol_error(frame: bytes) -> None:
    try:
        assert isinstance(decode_request(frame), Request)
    except ProtocolError as exc:
        assert exc.message


@given(st.binary(min_size=1, max_size=60), st.integers(0, 59), st.integers(0, 255))
def test_mutated_frames_decode_to_a_request_or_a_protocol_error(
    tail: bytes, index: int, byte: int
) -> None:
    frame = bytearray(encode_request("POST", "/ds/job/", {"job": "j", "client": "c"}, id=7) + tail)
    frame[index % len(frame)] = byte
    try:
        assert isinstance(decode_request(bytes(frame)), Request)
    except ProtocolError as exc:
        assert exc.message


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (["a list"], "must be a CBOR map"),
        ({"path": "/x"}, "method must be one of"),
        ({"method": "PUT", "path": "/x"}, "method must be one of"),
        ({"method": "GET"}, "path must be text"),
        ({"method": "GET", "path": "relative"}, "path must be text starting with '/'"),
        ({"method": "GET", "path": "/x", "token": 5}, "token must be text or bytes"),
        ({"method": "GET", "path": "/x", "id": -1}, "id must be an unsigned integer"),
        ({"method": "GET", "path": "/x", "id": 1.5}, "id must be an unsigned integer"),
        ({"method": "GET", "path": "/x", "bdy": {}}, "unknown key 'bdy'"),
    ],
)
def test_malformed_request_names_what_is_wrong(message: object, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        decode_request(cbor2.dumps(message))


def test_error_in_a_request_with_an_id_keeps_the_id() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(cbor2.dumps({"method": "PUT", "path": "/x", "id": 42}))
    assert info.value.id == 42


def test_truncated_cbor_is_a_protocol_error() -> None:
    frame = encode_request("GET", "/ds/job/", {"client": "c"})
    with pytest.raises(ProtocolError, match="not valid CBOR"):
        decode_request(frame[:-3])


def test_token_given_as_ascii_bytes_becomes_text() -> None:
    frame = cbor2.dumps({"method": "GET", "path": "/x", "token": b"abc"})
    assert decode_request(frame).token == "abc"


@given(st.integers(100, 599), plain, st.none() | st.text(max_size=40), ids)
def test_reply_with_a_preencoded_body_encodes_as_the_plain_reply(
    status: int, body: object, error: object, rid: object
) -> None:
    plain_reply = Reply(status, body, error, rid)  # type: ignore[arg-type]
    spliced = Reply(status, body, error, rid, encoded_body=cbor2.dumps(body))  # type: ignore[arg-type]
    assert cbor2.loads(encode_reply(spliced)) == cbor2.loads(encode_reply(plain_reply))


@given(st.lists(plain, max_size=30))
def test_jobs_body_is_a_map_of_the_encoded_records(records: list[object]) -> None:
    assert cbor2.loads(jobs_body([cbor2.dumps(r) for r in records])) == {"jobs": records}


@given(st.integers(0, 2**64 - 1))
def test_head_of_a_uint_is_its_encoding(n: int) -> None:
    assert head(0, n) == cbor2.dumps(n)


@given(st.integers(0, 300))
def test_head_of_an_array_starts_its_encoding(n: int) -> None:
    assert head(4, n) + b"\x00" * n == cbor2.dumps([0] * n)


def test_head_refuses_what_cbor_cannot_hold() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        head(0, 2**64)


@given(
    st.sampled_from(["method", "path", "token", "body", "id", "other"]) | HUGE,
    HUGE | NOT_JSON | HOSTILE,
    TRAILING,
)
@settings(max_examples=300)
def test_hostile_values_anywhere_in_a_frame_give_a_request_or_a_protocol_error(
    key: Any, value: Any, tail: bytes
) -> None:
    message = {"method": "POST", "path": "/ds/job/", "id": 1, key: value}
    try:
        request = decode_request(cbor2.dumps(message) + tail)
    except ProtocolError as exc:
        assert exc.message and len(exc.message) < 400
        return
    assert not tail
    try:
        check_plain("body", request.body)
    except BadRequest as exc:
        assert exc.message.startswith("body") and len(exc.message) < 400
    else:
        json.loads(zest.encode_json(request.body))  # what is accepted can be sent back as JSON
