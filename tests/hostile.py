"""Hypothesis strategies for values a peer may put anywhere in a frame, and the reply oracle."""

from __future__ import annotations

import datetime
import json
from typing import Any

import cbor2
from hypothesis import strategies as st

from jobstore.protocol import Request, cbor, zest
from jobstore.store.engine import Outcome
from jobstore.store.frames import zest_push_payload

BIG = 10**5000  # str() of it raises ValueError: more than 4300 digits


def nested(levels: int, kind: str = "list") -> Any:
    """A value of ``levels`` nested arrays (or maps) around a 1."""
    value: Any = 1
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


# Integers around every limit: int64, uint64, and Python's 4300-digit str() limit.
# (Built by map: Hypothesis shows a strategy's constants, and str() of BIG raises.)
HUGE = st.builds(
    lambda digits, sign: sign * 10**digits, st.integers(4300, 6000), st.sampled_from([1, -1])
)
EDGE_INTS = (
    st.sampled_from(
        [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, -(2**64), 10**4299]
    )
    | HUGE
)
# What JSON cannot carry, in the forms cbor2 encodes and decodes.
NOT_JSON = st.one_of(
    EDGE_INTS,
    st.sampled_from([float("nan"), float("inf"), float("-inf"), cbor2.undefined]),
    st.binary(max_size=8),
    st.builds(cbor2.CBORTag, st.integers(6, 2**20), st.integers(0, 3) | st.text(max_size=3)),
    st.datetimes(timezones=st.just(datetime.UTC)),
    st.decimals(allow_nan=False, places=2),
    st.frozensets(st.integers(0, 3), max_size=2),
    st.builds(nested, st.integers(31, 40), st.sampled_from(["list", "map"])),
    st.dictionaries(st.integers(0, 3), st.integers(0, 3), min_size=1, max_size=2),
)
HOSTILE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | NOT_JSON,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
# Data that may follow a frame's CBOR map.
TRAILING = st.sampled_from(
    [b"", b"", b"\x00", b"\xa0", cbor2.dumps({"method": "GET"})]
) | st.binary(min_size=1, max_size=4)


def json_text(value: Any) -> bytes:
    """``value`` as JSON text a peer could send: infinities as 1e400, bytes as base64 (via str)."""
    try:
        text = json.dumps(value, default=str)
    except (ValueError, TypeError, RecursionError):
        return b'{"x":1e400,"y":-1e999,"z":' + b"9" * 5000 + b"}"
    return text.replace("-Infinity", "-1e400").replace("Infinity", "1e999").encode()


def assert_every_reply_encodes(requests: list[Request], outcomes: list[Outcome]) -> None:
    """The oracle: each reply encodes as native CBOR, Zest JSON and Zest CBOR, and each change
    as a Zest observe push of valid JSON (the store once exited when one of these raised)."""
    for request, outcome in zip(requests, outcomes, strict=True):
        if outcome.reply is not None:
            cbor.decode_reply(cbor.encode_reply(outcome.reply))
            for fmt in (zest.FORMAT_JSON, zest.FORMAT_CBOR):
                asked = request._replace(content_format=fmt, observe=None)
                reply = zest.decode_reply(zest.encode_reply(outcome.reply, asked))
                if outcome.reply.status < 400 and reply.payload and fmt == zest.FORMAT_JSON:
                    json.loads(reply.payload, parse_constant=_not_json)
        for change in outcome.changes:
            payload = zest_push_payload(change).split(b" ", 3)[3]
            json.loads(payload, parse_constant=_not_json)


def _not_json(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")
