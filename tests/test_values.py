"""Values the store refuses at write, and messages that quote any value without failing."""

from __future__ import annotations

import datetime
import decimal
import fractions
import uuid
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstore.errors import ProtocolError
from jobstore.protocol import Reply, Request, shown, zest
from jobstore.protocol.cbor import decode_request, encode_request
from jobstore.store.validation import MAX_DEPTH, check_plain

from .test_service import Harness

BIG = 10**5000  # str() of it raises ValueError: more than 4300 digits

# Values JSON cannot carry back, each with what the refusal must say about it.
NOT_JSON = [
    (float("nan"), "NaN"),
    (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"),
    (b"\x00\x01", "bytes"),
    (2**63, "outside the 64-bit range"),
    (-(2**63) - 1, "outside the 64-bit range"),
    (2**64, "outside the 64-bit range"),
    (BIG, "an integer of 16610 bits"),
    (cbor2.CBORTag(4321, "x"), "CBORTag"),
    (datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), "datetime"),
    (decimal.Decimal("1.5"), "Decimal"),
    (fractions.Fraction(1, 3), "Fraction"),
    (uuid.UUID(int=1), "UUID"),
    (frozenset({1}), "frozenset"),
    (cbor2.undefined, "UndefinedType"),
    (cbor2.CBORSimpleValue(99), "CBORSimpleValue"),
    ({1: "x"}, "map key that is not text"),
]


def ident(value: Any) -> str:
    """A test id for any value (pytest's own str() fails on BIG)."""
    return shown(value, 30)


def nested(levels: int, kind: str = "list") -> Any:
    """A value of ``levels`` nested arrays (or maps) around a 1."""
    value: Any = 1
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "data")


def accepted_job(h: Harness) -> None:
    h.submit("j1")
    h.take()


@pytest.mark.parametrize(("value", "fragment"), NOT_JSON, ids=ident)
def test_a_request_json_cannot_carry_is_refused_naming_the_field(
    h: Harness, value: Any, fragment: str
) -> None:
    body = {"job": "j1", "client": "c1", "request": {"a": [0, value]}}
    error = h.error("POST", "/ds/job/", body, 400)
    assert error.startswith("request['a'][1] ") and fragment in error
    assert h.error("GET", "/ds/job/c1/j1", None, 404)  # nothing was stored


@pytest.mark.parametrize("field", ["response", "progress"])
@pytest.mark.parametrize(("value", "fragment"), NOT_JSON, ids=ident)
def test_a_report_json_cannot_carry_is_refused_naming_the_field(
    h: Harness, field: str, value: Any, fragment: str
) -> None:
    accepted_job(h)
    body = {"job": "j1", "status": "accepted", field: [value]}
    error = h.error("POST", "/server/ds/job/status", body, 400)
    assert error.startswith(f"{field}[0] ") and fragment in error
    assert field not in h.ok("GET", "/ds/job/c1/j1")


@pytest.mark.parametrize(
    "value",
    [None, True, -(2**63), 2**63 - 1, 0.1, -1e308, "", "text", [], {}, {"a": [1, {"b": None}]}],
)
def test_json_compatible_values_are_stored_and_read_back(h: Harness, value: Any) -> None:
    assert h.submit(request=value)["request"] == value
    h.take()
    record = h.report("j1", "accepted", progress=value, response=value)
    assert (record.get("progress"), record.get("response")) == (value, value)


@pytest.mark.parametrize("kind", ["list", "map"])
def test_nesting_of_32_levels_is_stored_and_33_refused_in_every_value_field(
    h: Harness, kind: str
) -> None:
    deepest, too_deep = nested(MAX_DEPTH, kind), nested(MAX_DEPTH + 1, kind)
    assert MAX_DEPTH == 32
    refused = h.error("POST", "/ds/job/", {"job": "j1", "client": "c1", "request": too_deep}, 400)
    assert "nested deeper than 32 levels" in refused and refused.startswith("request")
    assert h.submit(request=deepest)["request"] == deepest
    h.take()
    for field in ("progress", "response"):
        body = {"job": "j1", "status": "accepted", field: too_deep}
        assert "nested deeper than 32" in h.error("POST", "/server/ds/job/status", body, 400)
        assert h.report("j1", "accepted", **{field: deepest})[field] == deepest


def test_one_one_point_zero_and_true_are_different_requests(h: Harness) -> None:
    # Python says 1 == 1.0 == True; canonical CBOR tells them apart, and so must resubmit.
    h.submit("j1", request=1)
    for other in (1.0, True, [1.0], {"a": True}):
        body = {"job": "j1", "client": "c1", "request": other}
        assert "different request" in h.error("POST", "/ds/job/", body, 409)
    assert h.ok("POST", "/ds/job/", {"job": "j1", "client": "c1", "request": 1})["request"] == 1
    h.submit("j2", request={"a": [1]})
    body = {"job": "j2", "client": "c1", "request": {"a": [True]}}
    assert "different request" in h.error("POST", "/ds/job/", body, 409)


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("GET", "/ds/job/", {"client": "c", "limit": BIG}, "limit must be an integer"),
        ("GET", "/ds/job/", {"client": "c", "since": BIG}, "since must be an integer"),
        ("GET", "/ds/job/", {"client": "c", "since": "1"}, "since must be an integer"),
        ("GET", "/ds/job/", {"client": "c", "limit": [1]}, "limit must be an integer"),
        ("GET", "/ds/job/", {"client": BIG}, "client must be text"),
        ("GET", "/ds/job/", {"client": "c", "job": BIG}, "job must be text"),
        ("GET", "/server/ds/job/", {"status": BIG}, "status must be one of"),
        ("GET", "/server/ds/job/", {"status": ["done"]}, "status must be one of"),
        ("GET", "/server/ds/job/", {"status": {"a": 1}}, "status must be one of"),
        ("GET", "/server/ds/job/", {"client": 5}, "client must be text"),
        ("POST", "/server/ds/job/take", {"max": BIG}, "max must be an integer"),
        ("POST", "/server/ds/job/take", {"lease": BIG}, "lease must be an integer"),
        ("POST", "/server/ds/job/take", {"wait": BIG}, "wait must be an integer"),
        ("POST", "/server/ds/job/take", {"wait": 1.5}, "wait must be an integer"),
        ("POST", "/server/ds/job/take", {"max": True}, "max must be an integer"),
        ("POST", "/server/ds/job/accept", {"job": "j", "lease": BIG}, "lease must be"),
        ("POST", "/server/ds/job/status", {"job": "j", "status": BIG}, "status must be one of"),
        ("POST", "/server/ds/job/status", {"job": BIG, "status": "failed"}, "job must be text"),
        ("POST", "/ds/job/", {"job": "j", "client": "c", BIG: 1}, "unknown key an integer of"),
        ("POST", "/ds/job/", {"job": "j", "client": "c", (1, 2): 1}, "unknown key an array"),
        ("POST", "/ds/job/", [BIG], "body must be a map"),
    ],
    ids=ident,
)
def test_wrong_types_and_huge_integers_in_body_fields_are_400_naming_the_field(
    h: Harness, method: str, path: str, body: Any, fragment: str
) -> None:
    assert fragment in h.error(method, path, body, 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/cat/job/c1/j1"),
        ("GET", "/cat/job/c1"),
        ("POST", "/stats/job"),
        ("GET", "/stats/job/"),
        ("POST", "/server/job/cancel"),
        ("GET", "/sub/job/c1/since/3"),
        ("GET", "/server/stats/stats"),
        ("POST", "/sub/cat/job"),
        ("POST", "/server/sub/job/take"),
    ],
)
def test_a_reserved_word_as_datasource_is_400_naming_the_rule(
    h: Harness, method: str, path: str
) -> None:
    error = h.error(method, path, {"job": "j", "client": "c"}, 400)
    assert "is reserved: choose a name other than server, sub, cat, stats" in error


def test_a_datasource_named_job_still_reaches_the_server_routes(h: Harness) -> None:
    # /server/job/job could be "client path of datasource server": the real route wins.
    assert h.ok("GET", "/server/job/job/") == {"jobs": [], "next": None}


@pytest.mark.parametrize(("value", "fragment"), NOT_JSON[:9], ids=ident)
def test_a_catalogue_item_json_cannot_carry_is_refused(
    h: Harness, value: Any, fragment: str
) -> None:
    item = {
        "href": "tcp://store:5555/ds",
        "item-metadata": [
            {"rel": "urn:X-hypercat:rels:hasDescription:en", "val": "jobs"},
            {"rel": "urn:X-hypercat:rels:isContentType", "val": value},
        ],
    }
    error = h.error("POST", "/cat", item, 400)
    assert error.startswith("item['item-metadata'][1]['val'] ") and fragment in error
    assert h.ok("GET", "/cat")["items"] == []


def test_the_catalogue_is_bounded_in_bytes_and_a_post_past_it_is_413_writing_nothing(
    h: Harness,
) -> None:
    def item(n: int) -> dict[str, Any]:
        return {
            "href": f"tcp://store:5555/ds{n}",
            "item-metadata": [
                {"rel": "urn:X-hypercat:rels:hasDescription:en", "val": "x" * 100_000},
                {"rel": "urn:X-hypercat:rels:isContentType", "val": "application/json"},
            ],
        }

    stored = [h.ok("POST", "/cat", item(n)) for n in range(10)]  # about 1,000,000 bytes
    error = h.error("POST", "/cat", item(10), 413)
    assert "limit" in error and "same href replaces" in error
    assert h.ok("GET", "/cat")["items"] == stored[::-1]  # nothing written
    h.ok("POST", "/cat", item(3))  # replacing an item keeps the size: accepted


def test_a_zest_json_number_too_large_for_a_float_is_refused_at_write(h: Harness) -> None:
    payload = b'{"job":"j1","client":"c1","request":{"x":1e400}}'
    request = zest.decode_request(zest.encode_request("POST", "/ds/job/", body=payload))
    assert request.body["request"]["x"] == float("inf")  # what json.loads makes of it
    outcome = h.service.handle(request, h.now + 1)
    assert outcome.reply is not None and outcome.reply.status == 400
    assert outcome.reply.error is not None
    assert outcome.reply.error.startswith("request['x'] is Infinity")


# --- the native codec -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"method": BIG, "path": "/x"}, "method must be one of GET, POST, DELETE, got an integer"),
        ({"method": "GET", "path": BIG}, "path must be text starting with '/', got an integer"),
        ({"method": "GET", "path": "/x", "id": BIG}, "id must be an unsigned integer"),
        ({"method": "GET", "path": "/x", "id": 2**64}, "id must be an unsigned integer"),
        ({"method": "GET", "path": "/x", "id": True}, "id must be an unsigned integer"),
        ({"method": "GET", "path": "/x", BIG: 1}, "unknown key an integer of 16610 bits"),
        ({"method": [BIG], "path": "/x"}, "got an array of 1 item"),
    ],
    ids=ident,
)
def test_huge_integers_anywhere_in_a_frame_give_a_protocol_error(
    message: dict[Any, Any], fragment: str
) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        decode_request(cbor2.dumps(message))


def test_the_largest_id_is_echoed() -> None:
    assert decode_request(encode_request("GET", "/x", id=2**64 - 1)).id == 2**64 - 1


@pytest.mark.parametrize(
    ("tail", "fragment"),
    [
        (b"\x00", "1 bytes after its CBOR map"),
        (b"\xff\xff", "2 bytes after its CBOR map"),
        (cbor2.dumps({"method": "GET", "path": "/y"}), "after its CBOR map"),
    ],
)
def test_bytes_after_the_request_map_are_refused(tail: bytes, fragment: str) -> None:
    frame = encode_request("GET", "/x", id=3) + tail
    with pytest.raises(ProtocolError, match=fragment):
        decode_request(frame)


# --- quoting values in messages -----------------------------------------------------------


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class HostileList(list[Any]):
    def __len__(self) -> int:
        raise RuntimeError("no len for you")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (BIG, "an integer of 16610 bits"),
        (-(2**64), "an integer of 65 bits"),
        (2**64 - 1, "18446744073709551615"),
        ("x" * 1000, "'" + "x" * 56 + "..."),
        (b"ab", "b'ab'"),
        (float("nan"), "nan"),
        ([1, 2], "an array of 2 items"),
        ({"a": 1}, "a map of 1 entry"),
        (Hostile(), "a value of type Hostile"),
        (HostileList(), "a value of type HostileList"),
    ],
    ids=ident,
)
def test_shown_quotes_any_value_briefly_without_raising(value: Any, expected: str) -> None:
    assert shown(value) == expected


@given(st.recursive(st.integers() | st.floats() | st.binary() | st.text(), st.lists))
def test_shown_is_short_for_any_value(value: Any) -> None:
    assert len(shown(value)) <= 60


def test_check_plain_finds_the_refused_item_after_equal_valid_ones() -> None:
    # 2.0**64 == 2**64, but only the integer is refused: the place must be the integer's.
    with pytest.raises(Exception, match=r"^request\[1\] is an integer of 65 bits"):
        check_plain("request", [2.0**64, 2**64])


def test_a_reply_with_a_record_of_bytes_from_an_older_version_is_sent_as_base64() -> None:
    frame = zest.encode_reply(Reply(200, {"request": b"\x00\xff"}), Request("GET", "/x"))
    assert zest.decode_reply(frame).payload == b'{"request":"AP8="}'


@pytest.mark.parametrize("value", [float("nan"), float("inf"), BIG, cbor2.CBORTag(9, 1)], ids=ident)
def test_the_json_encoder_refuses_what_json_cannot_carry_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="JSON"):
        zest.encode_json({"request": value})
