"""Random and mutated requests, through both codecs, into the service: invariants hold."""

from __future__ import annotations

import tempfile
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobstore.errors import ProtocolError
from jobstore.protocol import Request, cbor, zest
from jobstore.states import TERMINAL, TRANSITIONS, Status
from jobstore.store.operations import Limits, Service
from jobstore.store.storage import Storage

from .hostile import HOSTILE, HUGE, NOT_JSON, TRAILING, assert_every_reply_encodes, json_text

NAMES = st.sampled_from(["j1", "j2", "j3", "c1", "c2", "ds", "d2", "", "a b", "x" * 130, "server"])
VALUES = st.one_of(
    st.none() | st.booleans() | st.integers(-5, 2**64) | st.text(max_size=8),
    st.lists(st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False), max_size=3),
    NOT_JSON,
    HOSTILE,
)
BODY_KEYS = st.sampled_from(
    [
        "job",
        "client",
        "request",
        "status",
        "response",
        "progress",
        "lease",
        "max",
        "wait",
        "since",
        "limit",
        "x",
    ]
)
STATUSES = st.sampled_from([s.value for s in Status] + ["done", 3])
BODIES = st.one_of(
    st.dictionaries(BODY_KEYS, st.one_of(NAMES, VALUES, STATUSES), max_size=6),
    VALUES,
    st.lists(VALUES, max_size=3),
)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/ds/job/",
            "/ds/job/cancel",
            "/ds/job/c1",
            "/ds/job/c1/j1",
            "/ds/job/c2/j2",
            "/ds/job/c1/since/2",
            "/server/ds/job/",
            "/server/ds/job/take",
            "/server/ds/job/accept",
            "/server/ds/job/status",
            "/sub/ds/job",
            "/sub/server/ds/job",
            "/cat",
            "/d2/job/",
        ]
    ),
    st.text(max_size=20).map(lambda s: "/" + s),
)
RANDOM = st.builds(
    lambda method, path, body: Request(method, path, body=body, id=1),
    st.sampled_from(["GET", "POST", "DELETE"]),
    PATHS,
    BODIES,
)
DS, JOB, CLIENT = (
    st.sampled_from(["ds", "d2"]),
    st.sampled_from(["j1", "j2", "j3"]),
    st.sampled_from(["c1", "c2"]),
)
LEASE = st.integers(1, 30_000)


def post(path: str, **body: Any) -> Request:
    return Request("POST", path, body=body, id=1)


# Well-formed operations, so sequences reach every status; RANDOM covers the malformed rest.
OPERATIONS = st.one_of(
    st.builds(
        lambda d, j, c, r: post(f"/{d}/job/", job=j, client=c, request=r), DS, JOB, CLIENT, VALUES
    ),
    st.builds(lambda d, j, c: post(f"/{d}/job/cancel", job=j, client=c), DS, JOB, CLIENT),
    st.builds(
        lambda d, n, lease: post(f"/server/{d}/job/take", max=n, lease=lease),
        DS,
        st.integers(1, 3),
        LEASE,
    ),
    st.builds(
        lambda d, j, lease: post(f"/server/{d}/job/accept", job=j, lease=lease), DS, JOB, LEASE
    ),
    st.builds(
        lambda d, j, status, r, a: post(
            f"/server/{d}/job/status", job=j, status=status, response=r, attempt=a
        ),
        DS,
        JOB,
        STATUSES,
        VALUES,
        st.one_of(st.none(), st.integers(0, 3)),  # a driver's attempt, right or stale
    ),
    st.builds(lambda d, c, j: Request("GET", f"/{d}/job/{c}/{j}", id=1), DS, CLIENT, JOB),
    st.builds(
        lambda d, c, since: Request("GET", f"/{d}/job/{c}/since/{since}", id=1),
        DS,
        CLIENT,
        st.integers(0, 9),
    ),
)
# Well-formed requests with one body field (or an extra key) holding a hostile value.
FIELDS = [
    ("GET", "/ds/job/", {"client": "c1"}, ["since", "limit", "client", "job"]),
    ("GET", "/server/ds/job/", {}, ["status", "client", "since", "limit"]),
    ("POST", "/server/ds/job/take", {}, ["max", "lease", "wait"]),
    ("POST", "/server/ds/job/accept", {"job": "j1"}, ["lease", "job"]),
    ("POST", "/server/ds/job/status", {"job": "j1", "status": "accepted"}, ["status", "lease"]),
    (
        "POST",
        "/server/ds/job/status",
        {"job": "j1", "status": "complete"},
        ["response", "progress"],
    ),
    ("POST", "/ds/job/", {"job": "j1", "client": "c1"}, ["request", "job", "client"]),
    ("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"}, ["job", "client"]),
    ("POST", "/sub/ds/job", {}, ["client"]),
    ("POST", "/cat", {"href": "h", "item-metadata": []}, ["href", "item-metadata"]),
]
ONE_BAD_FIELD = st.sampled_from(FIELDS).flatmap(
    lambda target: st.builds(
        lambda key, value: Request(target[0], target[1], body={**target[2], key: value}, id=1),
        st.sampled_from(target[3]) | HUGE | st.just("x"),
        HUGE | NOT_JSON | HOSTILE,
    )
)
REQUESTS = st.one_of(OPERATIONS, OPERATIONS, OPERATIONS, RANDOM, ONE_BAD_FIELD)
ALLOWED = {(source, target) for (source, _), target in TRANSITIONS.items()}
STATUS_CODES = {200, 201, 400, 403, 404, 405, 409, 413, 429, 500, 507}


def run(batches: list[tuple[int, list[Request]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(tmp, map_size=1 << 22)
        service = Service(storage, limits=Limits(max_active_per_client=50, max_attempts=2))
        seen: dict[tuple[str, str], Status] = {}
        now = 1_000_000
        try:
            for step, requests in batches:
                now += step
                expired, outcomes = service.handle_batch(requests, now, mono=now)
                assert len(outcomes) == len(requests)
                assert_every_reply_encodes(requests, outcomes)
                changes = list(expired)
                for request, outcome in zip(requests, outcomes, strict=True):
                    assert (outcome.reply is None) == (outcome.wait is not None)
                    if outcome.reply is not None:
                        assert outcome.reply.status in STATUS_CODES, outcome.reply
                        assert outcome.reply.status != 500, outcome.reply.error
                        assert (outcome.reply.error is not None) == (outcome.reply.status >= 400)
                    attempt = (
                        request.body.get("attempt") if isinstance(request.body, dict) else None
                    )
                    if request.path.endswith("/job/status") and type(attempt) is int:
                        # A report for another attempt than the job's changes nothing.
                        assert all(c.job.attempts == attempt for c in outcome.changes)
                    changes += outcome.changes
                for change in changes:
                    job = change.job
                    assert job.created <= job.updated, job
                    key = (job.dsid, job.job)
                    before = seen.get(key)
                    assert before not in TERMINAL, f"terminal job {key} changed"
                    if before is not None and before is not job.status:
                        assert (before, job.status) in ALLOWED, (before, job.status)
                    seen[key] = job.status
        finally:
            storage.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 40_000), st.lists(REQUESTS, min_size=1, max_size=6)), max_size=12
    )
)
def test_random_request_sequences_keep_every_invariant(
    batches: list[tuple[int, list[Request]]],
) -> None:
    run(batches)


def as_frame(request: Request, codec: str, tail: bytes) -> bytes:
    """The request as a native frame (``tail`` after its map), or Zest with a JSON or CBOR body."""
    if codec == "native":
        return cbor.encode_request(request.method, request.path, request.body, id=request.id) + tail
    if codec == "zest-cbor":
        payload = b"" if request.body is None else cbor2.dumps(request.body) + tail
        fmt = zest.FORMAT_CBOR
    else:
        payload = b"" if request.body is None else json_text(request.body)
        fmt = zest.FORMAT_JSON
    return zest.encode_request(request.method, request.path, body=payload, content_format=fmt)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            REQUESTS,
            st.sampled_from(["native", "zest-json", "zest-cbor"]),
            TRAILING,
            st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_mutated_frames_of_both_codecs_keep_every_invariant(
    items: list[tuple[Request, str, bytes, list[tuple[int, int]]]],
) -> None:
    requests: list[Request] = []
    for request, codec, tail, flips in items:
        try:
            frame = bytearray(as_frame(request, codec, tail))
        except ValueError:
            continue  # the encoder refuses what no frame can carry (an over-long path)
        for index, byte in flips:
            frame[index % len(frame)] = byte
        decode: Any = zest.decode_request if frame[0] in (1, 2, 4) else cbor.decode_request
        try:
            requests.append(decode(bytes(frame)))
        except ProtocolError:
            continue
    run([(1, requests)] if requests else [])
