"""Coverage-guided fuzzing of the request path: frame -> codec -> service -> every reply codec.

    pip install atheris
    python fuzz/fuzz_frames.py -max_total_time=600 fuzz/corpus

Two kinds of input. Raw: the bytes are a request frame (native CBOR or Zest), mutated freely.
Built (first byte 0xFF): a well-formed request whose one body field holds a value the fuzzer
builds from the rest of the bytes: integers of any size (past 64 bits and past Python's
4300-digit str() limit), any float (NaN and infinities), bytes, CBOR tags, deep nesting, a
JSON number that overflows (1e400); sent as native CBOR, Zest JSON or Zest CBOR, with data
after the frame's map.

Any input must give a reply or a ProtocolError, and every reply must encode as native CBOR,
Zest JSON and Zest CBOR (and each change as a Zest push of valid JSON); anything else (an
exception, a 500, a terminal job changing) is a crash that atheris saves for a regression test.
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any

import atheris

with atheris.instrument_imports():
    import cbor2

    from jobstore.errors import ProtocolError
    from jobstore.protocol import Request, cbor, zest
    from jobstore.states import TERMINAL
    from jobstore.store.engine import Outcome
    from jobstore.store.frames import zest_push_payload
    from jobstore.store.operations import Service
    from jobstore.store.storage import Storage

STORAGE = Storage(tempfile.mkdtemp(prefix="jobstore-fuzz-"), map_size=1 << 26)
SERVICE = Service(STORAGE)
NOW = [1_000_000]
# When each job became terminal: it must not change again until retention may have purged it
# (then its id is free, and a new job may take it: a long run passes the 7 days of retention).
FINISHED: dict[tuple[str, str], int] = {}
BUILT = 0xFF  # first byte of a built input; no frame of either codec starts with it

# (method, path, base body, the body fields a built value goes into)
TARGETS = [
    ("POST", "/ds/job/", {"job": "j1", "client": "c1"}, ["request", "job", "client", "x"]),
    ("POST", "/server/ds/job/status", {"job": "j1", "status": "accepted"}, ["progress", "lease"]),
    ("POST", "/server/ds/job/status", {"job": "j1", "status": "complete"}, ["response", "status"]),
    ("POST", "/server/ds/job/take", {}, ["max", "lease", "wait"]),
    ("POST", "/server/ds/job/accept", {"job": "j1"}, ["lease", "job"]),
    ("GET", "/ds/job/", {"client": "c1"}, ["since", "limit", "job"]),
    ("GET", "/server/ds/job/", {}, ["status", "client", "since", "limit"]),
    ("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"}, ["job", "client"]),
    ("POST", "/cat", {"href": "h"}, ["item-metadata", "href"]),
]


def build_value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """A value of any kind a peer could send, hostile ones included."""
    kind = fdp.ConsumeIntInRange(0, 12)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:  # any size: up to 2,000 bytes is past the 4300-digit limit
        value = fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 2000))
        return value if value.bit_length() <= 64 or fdp.ConsumeBool() else 10**4301 * value
    if kind == 3:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16))
    if kind == 5:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
    if kind == 6:
        inner = build_value(fdp, depth + 1) if depth < 4 else 1
        return cbor2.CBORTag(fdp.ConsumeIntInRange(0, 70000), inner)
    if kind == 7 and depth == 0:  # deep: around the 32-level limit (once: cbor2.dumps of
        value: Any = build_value(fdp, 9)  # 10,000 levels overflows the C stack)
        for _ in range(fdp.ConsumeIntInRange(28, 40)):
            value = [value] if fdp.ConsumeBool() else {"k": value}
        return value
    if kind <= 8:
        return cbor2.undefined if fdp.ConsumeBool() else cbor2.CBORSimpleValue(99)
    if depth > 3:
        return 1
    if kind == 9:
        return [build_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 10:
        key = build_value(fdp, 9)  # a map key of any kind CBOR allows
        try:
            hash(key)
        except Exception:  # lists, and tags holding them (cbor2 raises RuntimeError)
            key = str(type(key))
        return {key: build_value(fdp, depth + 1)}
    return {
        fdp.ConsumeUnicodeNoSurrogates(4): build_value(fdp, depth + 1)
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    }


def built_frame(data: bytes) -> bytes:
    """A well-formed request with one hostile value, as native CBOR, Zest JSON or Zest CBOR."""
    fdp = atheris.FuzzedDataProvider(data)
    method, path, base, fields = TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)]
    body = dict(base)
    body[fields[fdp.ConsumeIntInRange(0, len(fields) - 1)]] = build_value(fdp)
    codec = fdp.ConsumeIntInRange(0, 2)
    try:
        if codec == 0:
            message = {"method": method, "path": path, "body": body, "id": 1}
            if fdp.ConsumeBool():  # or the value in a frame field instead of the body
                message[["method", "path", "id", "token"][fdp.ConsumeIntInRange(0, 3)]] = (
                    build_value(fdp)
                )
            return cbor2.dumps(message) + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4))
        if codec == 1:
            payload = cbor2.dumps(body) + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2))
            return zest.encode_request(method, path, body=payload, content_format=60)
        text = json.dumps(body, default=str).replace("Infinity", "1e400")
        return zest.encode_request(method, path, body=text.encode(), content_format=50)
    except (ValueError, TypeError, RecursionError, cbor2.CBOREncodeError):
        return b""  # a value no peer's encoder could send either


def check_replies(request: Request, outcome: Outcome) -> None:
    """The reply oracle: every reply encodes in every codec, every push is valid JSON."""
    if outcome.reply is not None:
        cbor.decode_reply(cbor.encode_reply(outcome.reply))
        for fmt in (zest.FORMAT_JSON, zest.FORMAT_CBOR):
            asked = request._replace(content_format=fmt, observe=None)
            reply = zest.decode_reply(zest.encode_reply(outcome.reply, asked))
            if fmt == zest.FORMAT_JSON and outcome.reply.status < 400 and reply.payload:
                json.loads(reply.payload, parse_constant=_not_json)
    for change in outcome.changes:
        json.loads(zest_push_payload(change).split(b" ", 3)[3], parse_constant=_not_json)


def _not_json(name: str) -> Any:
    raise AssertionError(f"{name} in a reply is not JSON")


def one_input(data: bytes) -> None:
    frame = built_frame(data[1:]) if data[:1] == bytes((BUILT,)) else data
    try:
        request = (
            zest.decode_request(frame)
            if frame[:1] in (b"\x01", b"\x02", b"\x04")
            else cbor.decode_request(frame)
        )
    except ProtocolError:
        return
    NOW[0] += 997
    expired, [outcome] = SERVICE.handle_batch([request], NOW[0], mono=NOW[0])
    if outcome.reply is not None and outcome.reply.status == 500:
        raise AssertionError(
            f"internal error for {request.method} {request.path}: {outcome.reply.error}"
        )
    check_replies(request, outcome)
    for change in [*expired, *outcome.changes]:
        key = (change.job.dsid, change.job.job)
        if key in FINISHED and FINISHED[key] >= NOW[0] - SERVICE.limits.retention_ms:
            raise AssertionError(f"terminal job {key} changed")
        if change.job.status in TERMINAL:
            FINISHED[key] = NOW[0]


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
