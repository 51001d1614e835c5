"""Scheduling and queue control through the store's sockets, over native CBOR and Zest JSON:
priority and fair takes, delayed jobs and waiting takes, expiry, retry delay and backoff, requeue,
queue settings, batch submit and the stats' delayed and paused."""

from __future__ import annotations

import json
from typing import Any

import pytest
import zmq

from jobstore.protocol import zest
from jobstore.protocol.cbor import decode_reply, encode_request
from jobstore.store.auth import Authoriser, mint
from jobstore.store.operations import Limits

from .conftest import Clocks, RunningStore, StoreFactory, recv

HOUR = 3_600_000
_ZEST_STATUS = {zest.CONTENT: 200, zest.CREATED: 201, zest.BAD_REQUEST: 400, zest.NOT_FOUND: 404}
_ZEST_STATUS.update({zest.CONFLICT: 409, zest.UNAUTHORIZED: 401, zest.FORBIDDEN: 403})
TOKEN_SECRET = b"scheduling-test-secret"


class Peer:
    """One DEALER on the request socket speaking native CBOR or Zest JSON, with a token if given."""

    def __init__(
        self, ctx: zmq.Context[Any], store: RunningStore, codec: str, token: str | None = None
    ) -> None:
        self.codec = codec
        self.token = token
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(store.endpoint)

    def send(self, method: str, path: str, body: Any = None) -> None:
        if self.codec == "native":
            self.sock.send(encode_request(method, path, body, id=1, token=self.token))
        else:
            payload = b"" if body is None else json.dumps(body).encode()
            self.sock.send(zest.encode_request(method, path, body=payload, token=self.token))

    def receive(self) -> tuple[int, Any, str]:
        """(status, body, error); a Zest success is 201 for any POST, as its codes say no more."""
        frame = recv(self.sock)[-1]
        if self.codec == "native":
            reply = decode_reply(frame)
            return reply.status, reply.body, reply.error or ""
        got = zest.decode_reply(frame)
        status = _ZEST_STATUS[got.code]
        if status >= 400:
            return status, None, got.payload.decode()
        return status, json.loads(got.payload) if got.payload else None, ""

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        self.send(method, path, body)
        return self.receive()

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply, error = self.call(method, path, body)
        assert status in (200, 201), error
        return reply

    def submit(self, job: str, client: str = "a", **options: Any) -> Any:
        return self.ok(
            "POST", "/ds/job/", {"job": job, "client": client, "request": job, **options}
        )

    def take(self, **body: Any) -> list[str]:
        return [job["job"] for job in self.ok("POST", "/server/ds/job/take", body)["jobs"]]

    def record(self, job: str, client: str = "a") -> Any:
        return self.ok("GET", f"/ds/job/{client}/{job}")

    def stats(self) -> Any:
        return self.ok("GET", "/server/ds/stats")


def _until_waiting(peer: Peer, takes: int) -> None:
    """Return once the store has ``takes`` takes waiting (its /stats says so), or fail."""
    for _ in range(1000):
        if peer.ok("GET", "/stats")["waiting_takes"] == takes:
            return
    raise AssertionError(f"the store never had {takes} waiting takes")


@pytest.fixture(params=["native", "zest"])
def peer(request: pytest.FixtureRequest, ctx: zmq.Context[Any], store: RunningStore) -> Peer:
    return Peer(ctx, store, request.param)


@pytest.fixture
def native(ctx: zmq.Context[Any], store: RunningStore) -> Peer:
    return Peer(ctx, store, "native")


def test_a_take_serves_the_highest_priority_first_then_clients_in_turn(peer: Peer) -> None:
    for job, client in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("b2", "b")]:
        peer.submit(job, client)
    peer.submit("c1", "c", priority=-1)
    urgent = peer.submit("z1", "z", priority=100)
    assert (urgent["priority"], urgent["not_before"], urgent["expires"]) == (100, None, None)
    assert urgent["requeued"] == 0
    assert peer.take(max=2) == ["z1", "a1"]
    assert peer.take() == ["b1"]
    assert peer.take(max=10) == ["a2", "b2", "a3", "c1"]


def test_a_delayed_job_waits_until_due_and_a_waiting_take_gets_it(
    peer: Peer, clocks: Clocks
) -> None:
    record = peer.submit("later", delay=HOUR)
    assert record["not_before"] == record["created"] + HOUR
    peer.submit("now", "b")
    assert peer.take(max=5) == ["now"]
    assert (peer.stats()["delayed"], peer.take()) == (1, [])
    peer.send("POST", "/server/ds/job/take", {"wait": 60_000})
    clocks.wall += HOUR  # the store wakes at the job's due time, with no request to prompt it
    status, body, error = peer.receive()
    assert status in (200, 201), error
    assert [job["job"] for job in body["jobs"]] == ["later"]
    assert peer.stats()["delayed"] == 0


def test_a_waiting_take_is_handed_a_delayed_job_once_due_and_not_before(native: Peer) -> None:
    record = native.submit("soon", delay=300)
    native.send("POST", "/server/ds/job/take", {"wait": 60_000})
    status, body, error = native.receive()
    assert status == 200, error
    [taken] = body["jobs"]
    assert taken["job"] == "soon" and taken["updated"] >= record["not_before"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"priority": 101}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"delay": -1}, "delay"),
        ({"not_before": -5}, "not_before"),
        ({"delay": 10, "not_before": 10}, "delay and not_before"),
        ({"expires": 1}, "expires"),
        ({"not_before": 5000, "expires": 5000}, "expires"),
    ],
)
def test_bad_submit_options_are_400_naming_the_field_and_write_nothing(
    peer: Peer, options: dict[str, Any], field: str
) -> None:
    status, _, error = peer.call(
        "POST", "/ds/job/", {"job": "j", "client": "a", "request": 1, **options}
    )
    assert status == 400 and error.startswith(field), error
    assert peer.call("GET", "/ds/job/a/j")[0] == 404


def test_a_resubmit_with_another_priority_or_time_is_409_and_the_same_one_idempotent(
    peer: Peer,
) -> None:
    first = peer.submit("j", priority=3, delay=HOUR, expires=2**52)
    assert peer.submit("j", priority=3, delay=HOUR, expires=2**52) == first
    for other in ({"priority": 3, "expires": 2**52}, {"priority": 2, "delay": HOUR}):
        status, _, error = peer.call(
            "POST", "/ds/job/", {"job": "j", "client": "a", "request": "j", **other}
        )
        assert status == 409 and "another priority, delay, not_before or expires" in error


def test_a_queued_job_still_queued_at_its_expiry_fails_and_is_notified(
    store: RunningStore, native: Peer, clocks: Clocks
) -> None:
    with store.client("a") as app:
        watch = app.watch(timeout=10)
        native.submit("stale", expires=native.submit("fresh", "b")["created"] + 60_000)
        assert next(watch)["status"] == "submitted"
        clocks.wall += 60_000
        expired = next(watch)
    assert expired["job"] == "stale" and expired["status"] == "failed"
    assert expired["response"] == {"error": "expired before it was taken"}
    assert native.take(max=5) == ["fresh"]


def test_a_retrying_report_with_a_delay_holds_the_job_back(peer: Peer, clocks: Clocks) -> None:
    peer.submit("j")
    assert peer.take() == ["j"]
    report = {"job": "j", "status": "retrying", "delay": HOUR}
    record = peer.ok("POST", "/server/ds/job/status", report)
    assert record["status"] == "retrying" and record["not_before"] == record["updated"] + HOUR
    assert peer.take() == []
    clocks.wall += HOUR
    peer.send("POST", "/server/ds/job/take", {"wait": 60_000})
    status, body, error = peer.receive()
    assert status in (200, 201) and [job["job"] for job in body["jobs"]] == ["j"], error


def test_a_delay_on_a_report_other_than_retrying_is_400(peer: Peer) -> None:
    peer.submit("j")
    peer.take()
    status, _, error = peer.call(
        "POST", "/server/ds/job/status", {"job": "j", "status": "complete", "delay": 5}
    )
    assert status == 400 and error.startswith("delay is for a retrying report"), error


def test_a_lease_that_runs_out_sends_the_job_back_after_the_backoff(
    native: Peer, clocks: Clocks
) -> None:
    native.ok("POST", "/server/ds/job/settings", {"backoff": 10_000})
    native.submit("j")
    assert native.take(lease=1000) == ["j"]
    clocks.mono += 1000
    retrying = native.record("j")  # the batch that answers this sends the job back first
    assert retrying["status"] == "retrying" and retrying["attempts"] == 1
    assert 8_000 <= retrying["not_before"] - retrying["updated"] <= 12_000
    assert native.take() == []
    native.send("POST", "/server/ds/job/take", {"wait": 60_000})
    clocks.wall += 12_001  # past the longest backoff with jitter: 10 s x 1.2
    status, body, error = native.receive()
    assert status == 200, error
    [again] = body["jobs"]
    assert again["job"] == "j" and again["attempts"] == 2


def test_requeue_sends_a_failed_job_back_with_attempts_0(peer: Peer) -> None:
    peer.submit("j")
    peer.take()
    peer.ok("POST", "/server/ds/job/status", {"job": "j", "status": "failed", "response": "x"})
    requeued = peer.ok("POST", "/server/ds/job/requeue", {"job": "j"})
    assert (requeued["status"], requeued["attempts"], requeued["requeued"]) == ("retrying", 0, 1)
    assert peer.take() == ["j"]
    status, _, error = peer.call("POST", "/server/ds/job/requeue", {"job": "j"})
    assert status == 409 and "cannot take event 'requeue'" in error
    assert peer.call("POST", "/server/ds/job/requeue", {"job": "nope"})[0] == 404


def test_requeue_with_a_delay_sets_not_before(native: Peer) -> None:
    native.submit("j")
    native.take()
    native.ok("POST", "/server/ds/job/status", {"job": "j", "status": "failed"})
    record = native.ok("POST", "/server/ds/job/requeue", {"job": "j", "delay": HOUR})
    assert record["not_before"] == record["updated"] + HOUR
    assert native.take() == [] and native.stats()["delayed"] == 1


def test_settings_read_back_after_a_restart_and_unknown_keys_are_400(
    ctx: zmq.Context[Any], start_store: StoreFactory
) -> None:
    store = start_store(Limits(max_attempts=7, lease_ms=9000))
    for codec in ("native", "zest"):
        peer = Peer(ctx, store, codec)
        defaults = peer.ok("GET", "/server/ds/job/settings")
        assert defaults == {
            "paused": False,
            "backoff": 0,
            "max_backoff": 300_000,
            "max_attempts": 7,
            "lease": 9000,
        }
    peer = Peer(ctx, store, "zest")
    changed = peer.ok("POST", "/server/ds/job/settings", {"backoff": 50, "max_attempts": 2})
    assert changed == {**defaults, "backoff": 50, "max_attempts": 2}
    status, _, error = peer.call("POST", "/server/ds/job/settings", {"paused": True, "pace": 1})
    assert status == 400 and "unknown setting 'pace'" in error
    store.stop()
    peer = Peer(ctx, start_store(Limits(max_attempts=7, lease_ms=9000)), "native")
    assert peer.ok("GET", "/server/ds/job/settings") == changed


def test_a_paused_queue_takes_nothing_until_resumed_and_resuming_wakes_a_waiting_take(
    peer: Peer, ctx: zmq.Context[Any], store: RunningStore
) -> None:
    assert peer.ok("POST", "/server/ds/job/settings", {"paused": True})["paused"] is True
    peer.submit("j")
    assert peer.take() == [] and peer.stats()["paused"] is True
    driver = Peer(ctx, store, peer.codec)
    driver.send("POST", "/server/ds/job/take", {"wait": 60_000})
    _until_waiting(peer, 1)
    peer.ok("POST", "/server/ds/job/settings", {"paused": False})
    status, body, error = driver.receive()
    assert status in (200, 201) and [job["job"] for job in body["jobs"]] == ["j"], error


def test_the_settings_lease_and_max_attempts_apply_to_takes_without_a_lease(
    native: Peer, clocks: Clocks
) -> None:
    native.ok("POST", "/server/ds/job/settings", {"lease": 100_000, "max_attempts": 1})
    native.submit("j")
    assert native.take() == ["j"]
    clocks.mono += 90_000  # a lease of the store default (30 s) would have run out
    assert native.record("j")["status"] == "accepted"
    clocks.mono += 10_000
    failed = native.record("j")
    assert failed["status"] == "failed"  # one attempt allowed, and its lease ran out
    assert failed["response"] == {"error": "lease ran out 1 times; giving up"}


def test_a_batch_commits_the_good_items_and_reports_each_bad_one(peer: Peer) -> None:
    peer.submit("taken-id", client="other")
    jobs = [
        {"job": "b1", "request": 1, "priority": 5},
        {"job": "b2", "request": 2, "priority": 500},
        {"job": "taken-id", "request": 3},
        {"job": "b3", "request": 4, "delay": HOUR},
        {"job": "b1", "request": 1, "priority": 5},
    ]
    results = peer.ok("POST", "/ds/job/batch", {"client": "a", "jobs": jobs})["results"]
    assert [r["job"] for r in results] == ["b1", "b2", "taken-id", "b3", "b1"]
    assert results[0]["status"] == "submitted" and results[4] == results[0]
    assert results[1]["status"] == 400 and results[1]["error"].startswith("priority")
    assert results[2]["status"] == 409
    assert results[3]["not_before"] == results[3]["created"] + HOUR
    assert peer.call("GET", "/ds/job/a/b2")[0] == 404
    assert peer.take(max=5) == ["b1", "taken-id"]


@pytest.mark.parametrize("jobs", [[], [{"job": "j"}] * 1001, "j"])
def test_an_empty_or_oversized_batch_is_400(peer: Peer, jobs: Any) -> None:
    status, _, error = peer.call("POST", "/ds/job/batch", {"client": "a", "jobs": jobs})
    assert status == 400 and error.startswith("jobs must be an array of 1 to 1000"), error


@pytest.mark.parametrize("codec", ["native", "zest"])
def test_the_new_paths_need_tokens_with_their_path_method_and_client_caveats(
    ctx: zmq.Context[Any], start_store: StoreFactory, codec: str
) -> None:
    store = start_store(auth=Authoriser(TOKEN_SECRET, "me"))

    def peer(*caveats: str) -> Peer:
        return Peer(ctx, store, codec, mint(TOKEN_SECRET, ["target = me", *caveats]))

    driver = peer("path = /server/ds/*")
    app = peer("path = /ds/*", "client = a")
    batch = {"client": "a", "jobs": [{"job": "j", "request": 1}]}
    assert app.ok("POST", "/ds/job/batch", batch)["results"][0]["status"] == "submitted"
    assert app.call("POST", "/ds/job/batch", {**batch, "client": "b"})[0] in (401, 403)
    assert driver.take() == ["j"]
    driver.ok("POST", "/server/ds/job/status", {"job": "j", "status": "failed"})
    assert driver.ok("POST", "/server/ds/job/requeue", {"job": "j"})["requeued"] == 1
    assert driver.ok("POST", "/server/ds/job/settings", {"backoff": 5})["backoff"] == 5
    reader = peer("path = /server/ds/job/settings", "method = GET")
    assert reader.ok("GET", "/server/ds/job/settings")["backoff"] == 5
    status, _, error = reader.call("POST", "/server/ds/job/settings", {"paused": True})
    assert status in (401, 403) and "method" in error
    for path in ("/server/ds/job/requeue", "/server/ds/job/settings"):
        status, _, error = app.call("POST", path, {"job": "j"})
        assert status in (401, 403) and "path" in error
