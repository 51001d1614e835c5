"""The service without sockets: every row of contract sections 3-5."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from jobstore.protocol import Request
from jobstore.store import routes
from jobstore.store.context import Context
from jobstore.store.operations import Limits, Outcome, Service
from jobstore.store.storage import Storage

T0 = 1_700_000_000_000


class Harness:
    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.storage = Storage(path)
        self.service = Service(self.storage, limits=limits)
        self.now = T0
        self.stepped = 0  # how far the wall clock has been stepped: the monotonic clock was not

    def step_wall_clock(self, ms: int) -> None:
        """Set the wall clock ``ms`` forward (back if negative), as NTP does; no time passes."""
        self.now += ms
        self.stepped += ms

    def call(self, method: str, path: str, body: Any = None, now: int | None = None) -> Outcome:
        self.now = now if now is not None else self.now + 1
        request = Request(method, path, body=body, id=1)
        return self.service.handle(request, self.now, mono=self.now - self.stepped)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        outcome = self.call(method, path, body)
        assert outcome.reply is not None
        assert outcome.reply.status == status, outcome.reply.error
        return outcome.reply.body

    def error(self, method: str, path: str, body: Any, status: int) -> str:
        reply = self.call(method, path, body).reply
        assert reply is not None
        assert reply.status == status, reply
        assert reply.error
        return reply.error

    def submit(self, job: str = "j1", client: str = "c1", request: Any = "r") -> Any:
        return self.ok("POST", "/ds/job/", {"job": job, "client": client, "request": request}, 201)

    def take(self, **body: Any) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.ok("POST", "/server/ds/job/take", body)["jobs"]
        return jobs

    def report(self, job: str, status: str, **fields: Any) -> Any:
        return self.ok("POST", "/server/ds/job/status", {"job": job, "status": status, **fields})


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "data")


def test_submit_creates_a_submitted_record_with_every_field(h: Harness) -> None:
    record = h.submit(request={"x": [1, 2]})
    assert record == {
        "job": "j1",
        "client": "c1",
        "request": {"x": [1, 2]},
        "status": "submitted",
        "cancel_requested": False,
        "attempts": 0,
        "created": h.now,
        "updated": h.now,
        "seq": 1,
        "priority": 0,
        "not_before": None,
        "expires": None,
        "requeued": 0,
        "history": [{"status": "submitted", "at": h.now}],
    }


def test_submitting_the_same_job_again_is_idempotent(h: Harness) -> None:
    first = h.submit()
    assert h.ok("POST", "/ds/job/", {"job": "j1", "client": "c1", "request": "r"}, 200) == first


def test_reusing_a_job_id_with_another_request_is_a_conflict(h: Harness) -> None:
    h.submit()
    error = h.error("POST", "/ds/job/", {"job": "j1", "client": "c1", "request": "other"}, 409)
    assert "different request" in error


def test_reusing_a_job_id_of_another_client_is_a_conflict_that_shows_nothing(h: Harness) -> None:
    h.submit()
    reply = h.call("POST", "/ds/job/", {"job": "j1", "client": "c2", "request": "r"}).reply
    assert reply is not None and reply.status == 409 and reply.body is None
    assert "another client" in (reply.error or "")


def test_status_by_body_and_by_path_agree(h: Harness) -> None:
    record = h.submit()
    assert h.ok("GET", "/ds/job/", {"job": "j1", "client": "c1"}) == record
    assert h.ok("GET", "/ds/job/c1/j1") == record


def test_status_of_unknown_job_is_404(h: Harness) -> None:
    assert "no job" in h.error("GET", "/ds/job/c1/nope", None, 404)


def test_status_of_another_clients_job_is_403(h: Harness) -> None:
    h.submit()
    assert "another client" in h.error("GET", "/ds/job/c2/j1", None, 403)


def test_jobs_live_per_datasource(h: Harness) -> None:
    h.submit()
    h.error("GET", "/other/job/c1/j1", None, 404)


def test_cancel_of_a_queued_job_cancels_it_at_once(h: Harness) -> None:
    h.submit()
    record = h.ok("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"})
    assert record["status"] == "cancelled" and record["cancel_requested"] is True
    assert h.take() == []


def test_cancel_of_an_accepted_job_asks_the_server(h: Harness) -> None:
    h.submit()
    h.take()
    record = h.ok("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"})
    assert record["status"] == "accepted" and record["cancel_requested"] is True


def test_a_second_cancel_of_an_accepted_job_changes_nothing(h: Harness) -> None:
    h.submit()
    h.take()
    first = h.ok("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"})
    outcome = h.call("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"})
    assert outcome.reply is not None and outcome.reply.body == first and outcome.changes == []


@pytest.mark.parametrize("handed_back", ["server reports retrying", "lease runs out"])
def test_a_cancel_of_a_job_handed_back_after_a_cancel_request_cancels_it(
    h: Harness, handed_back: str
) -> None:
    h.submit()
    h.take(lease=100)
    h.ok("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"})
    if handed_back == "lease runs out":
        h.now += 100
    else:
        h.report("j1", "retrying")
    queued = h.ok("GET", "/ds/job/c1/j1")
    # Back in the queue, and the client's request still stands (the next driver sees it).
    assert queued["status"] == "retrying" and queued["cancel_requested"] is True
    record = h.ok("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"})
    assert record["status"] == "cancelled" and record["seq"] > queued["seq"]
    assert h.take() == []


def test_cancel_of_a_terminal_job_returns_the_last_record_unchanged(h: Harness) -> None:
    h.submit()
    h.take()
    done = h.report("j1", "complete", response=42)
    assert h.ok("POST", "/ds/job/cancel", {"job": "j1", "client": "c1"}) == done


def test_cancel_of_another_clients_job_is_403(h: Harness) -> None:
    h.submit()
    h.error("POST", "/ds/job/cancel", {"job": "j1", "client": "c2"}, 403)


def test_cancel_of_unknown_job_is_404(h: Harness) -> None:
    h.error("POST", "/ds/job/cancel", {"job": "j9", "client": "c1"}, 404)


def test_listing_pages_by_seq_with_next(h: Harness) -> None:
    for i in range(5):
        h.submit(job=f"j{i}")
    h.submit(job="other", client="c2")
    page = h.ok("GET", "/ds/job/", {"client": "c1", "limit": 2})
    assert [r["job"] for r in page["jobs"]] == ["j0", "j1"]
    page = h.ok("GET", "/ds/job/", {"client": "c1", "since": page["next"], "limit": 2})
    assert [r["job"] for r in page["jobs"]] == ["j2", "j3"]
    page = h.ok("GET", "/ds/job/", {"client": "c1", "since": page["next"], "limit": 2})
    assert [r["job"] for r in page["jobs"]] == ["j4"] and page["next"] is None


def test_listing_shows_each_job_once_at_its_last_change(h: Harness) -> None:
    h.submit(job="a")
    h.submit(job="b")
    h.ok("POST", "/ds/job/cancel", {"job": "a", "client": "c1"})
    page = h.ok("GET", "/ds/job/c1")
    assert [(r["job"], r["status"]) for r in page["jobs"]] == [
        ("b", "submitted"),
        ("a", "cancelled"),
    ]


def test_listing_by_path_since(h: Harness) -> None:
    h.submit(job="a")
    h.submit(job="b")
    assert [r["job"] for r in h.ok("GET", "/ds/job/c1/since/1")["jobs"]] == ["b"]


def test_a_client_named_cancel_can_list_its_jobs(h: Harness) -> None:
    h.submit(client="cancel")
    assert len(h.ok("GET", "/ds/job/cancel")["jobs"]) == 1


def test_take_accepts_the_oldest_queued_jobs_first(h: Harness) -> None:
    for i in range(3):
        h.submit(job=f"j{i}")
    taken = h.take(max=2, lease=1000)
    assert [(r["job"], r["status"], r["attempts"]) for r in taken] == [
        ("j0", "accepted", 1),
        ("j1", "accepted", 1),
    ]
    assert [r["job"] for r in h.take(max=5)] == ["j2"]


def test_take_with_nothing_queued_and_no_wait_returns_no_jobs(h: Harness) -> None:
    assert h.take() == []


def test_take_with_wait_and_nothing_queued_waits(h: Harness) -> None:
    outcome = h.call("POST", "/server/ds/job/take", {"wait": 500})
    assert outcome.reply is None and outcome.wait is not None
    assert outcome.wait.dsid == "ds" and outcome.wait.ms == 500


def test_accept_takes_a_named_job(h: Harness) -> None:
    h.submit()
    record = h.ok("POST", "/server/ds/job/accept", {"job": "j1"})
    assert record["status"] == "accepted" and record["attempts"] == 1


def test_accepting_an_accepted_job_is_409_with_the_record(h: Harness) -> None:
    h.submit()
    h.take()
    reply = h.call("POST", "/server/ds/job/accept", {"job": "j1"}).reply
    assert reply is not None and reply.status == 409
    assert reply.body["status"] == "accepted"


def test_progress_updates_progress_and_keeps_accepted(h: Harness) -> None:
    h.submit()
    h.take()
    record = h.report("j1", "accepted", progress={"done": 1, "total": 3})
    assert record["status"] == "accepted" and record["progress"] == {"done": 1, "total": 3}


@pytest.mark.parametrize("outcome", ["complete", "cancelled", "retrying", "failed", "forbidden"])
def test_server_reports_from_accepted(h: Harness, outcome: str) -> None:
    h.submit()
    h.take()
    record = h.report("j1", outcome, response={"r": outcome})
    assert record["status"] == outcome and record["response"] == {"r": outcome}


@pytest.mark.parametrize("outcome", ["failed", "forbidden"])
def test_server_may_refuse_a_queued_job(h: Harness, outcome: str) -> None:
    h.submit()
    assert h.report("j1", outcome)["status"] == outcome
    assert h.take() == []


@pytest.mark.parametrize("outcome", ["complete", "cancelled", "retrying", "accepted"])
def test_reports_that_need_an_accepted_job_are_409_on_a_queued_one(
    h: Harness, outcome: str
) -> None:
    h.submit()
    reply = h.call("POST", "/server/ds/job/status", {"job": "j1", "status": outcome}).reply
    assert reply is not None and reply.status == 409 and reply.body["status"] == "submitted"


def test_a_terminal_record_never_changes(h: Harness) -> None:
    h.submit()
    h.take()
    done = h.report("j1", "complete")
    for status in ("accepted", "complete", "failed", "retrying"):
        reply = h.call("POST", "/server/ds/job/status", {"job": "j1", "status": status}).reply
        assert reply is not None and reply.status == 409 and reply.body == done


def test_reporting_submitted_is_409(h: Harness) -> None:
    h.submit()
    assert "cannot set status 'submitted'" in h.error(
        "POST", "/server/ds/job/status", {"job": "j1", "status": "submitted"}, 409
    )


def test_unknown_status_name_is_400(h: Harness) -> None:
    h.submit()
    h.error("POST", "/server/ds/job/status", {"job": "j1", "status": "done"}, 400)


def test_a_retried_job_goes_back_in_the_queue(h: Harness) -> None:
    h.submit()
    h.take()
    h.report("j1", "retrying")
    [again] = h.take()
    assert again["job"] == "j1" and again["attempts"] == 2


def test_lease_expiry_sends_an_accepted_job_back_to_retrying(h: Harness) -> None:
    h.submit()
    h.take(lease=100)
    outcome = h.call("GET", "/ds/job/c1/j1", now=h.now + 101)
    assert outcome.reply is not None and outcome.reply.body["status"] == "retrying"
    assert [c.job.status.value for c in outcome.changes] == ["retrying"]


def test_progress_renews_the_lease(h: Harness) -> None:
    h.submit()
    h.take(lease=100)
    h.now += 90
    h.report("j1", "accepted", progress=1, lease=100)
    assert h.call("GET", "/ds/job/c1/j1", now=h.now + 50).reply.body["status"] == "accepted"  # type: ignore[union-attr]


def test_lease_expiry_fails_the_job_at_the_attempt_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data", Limits(max_attempts=2))
    h.submit()
    for attempt in (1, 2):
        [job] = h.take(lease=10)
        assert job["attempts"] == attempt
        h.now += 11
    record = h.ok("GET", "/ds/job/c1/j1")
    assert record["status"] == "failed" and "lease ran out 2 times" in record["response"]["error"]


def test_seq_increases_strictly_across_changes(h: Harness) -> None:
    seqs = [h.submit(job=f"j{i}")["seq"] for i in range(3)]
    seqs += [r["seq"] for r in h.take(max=3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_server_listing_sees_every_client_and_filters(h: Harness) -> None:
    h.submit(job="a", client="c1")
    h.submit(job="b", client="c2")
    h.take()
    every = h.ok("GET", "/server/ds/job/", {})["jobs"]
    assert sorted(r["job"] for r in every) == ["a", "b"]
    queued = h.ok("GET", "/server/ds/job/", {"status": "submitted"})["jobs"]
    assert [r["job"] for r in queued] == ["b"]
    mine = h.ok("GET", "/server/ds/job/", {"client": "c1"})["jobs"]
    assert [r["job"] for r in mine] == ["a"]


def test_subscribe_returns_topic_key_and_last_seq(h: Harness) -> None:
    h.submit()
    sub = h.ok("POST", "/sub/ds/job", {"client": "c1"})
    assert len(sub["topic"]) == 32 and len(sub["key"]) == 32 and sub["seq"] == 1
    other = h.ok("POST", "/sub/ds/job", {"client": "c2"})
    assert other["topic"] != sub["topic"] and other["key"] != sub["key"] and other["seq"] == 0
    server = h.ok("POST", "/sub/server/ds/job", {})
    assert server["seq"] == 1 and server["topic"] not in (sub["topic"], other["topic"])


def test_each_change_names_the_previous_seq_on_each_topic(h: Harness) -> None:
    first = h.call("POST", "/ds/job/", {"job": "a", "client": "c1"}).changes[0]
    second = h.call("POST", "/ds/job/", {"job": "b", "client": "c2"}).changes[0]
    assert first.prev == {"job/ds/c1": 0, "server/ds": 0}
    assert second.prev == {"job/ds/c2": 0, "server/ds": first.job.seq}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("GET", "/nowhere", None, 404, "no such path"),
        ("DELETE", "/ds/job/", None, 405, "use POST or GET"),
        ("GET", "/ds/job/cancel/x/y/z", None, 404, "no such path"),
        ("POST", "/server/job/", {"job": "j", "client": "c"}, 400, "dsid 'server' is reserved"),
        ("POST", "/bad name/job/", {"job": "j", "client": "c"}, 400, "dsid"),
        ("POST", "/ds/job/", "text", 400, "body must be a map"),
        ("POST", "/ds/job/", {"client": "c"}, 400, "missing 'job'"),
        ("POST", "/ds/job/", {"job": "j", "client": "c", "extra": 1}, 400, "unknown key 'extra'"),
        ("POST", "/ds/job/", {"job": "j" * 129, "client": "c"}, 400, "job"),
        ("POST", "/ds/job/", {"job": "a b", "client": "c"}, 400, "not a valid name"),
        ("POST", "/ds/job/", {"job": 7, "client": "c"}, 400, "job must be text"),
        ("POST", "/ds/job/", {"job": "j", "client": ""}, 400, "client"),
        ("POST", "/server/ds/job/take", {"max": 0}, 400, "max must be an integer from 1"),
        ("POST", "/server/ds/job/take", {"max": "2"}, 400, "max must be an integer"),
        ("POST", "/server/ds/job/take", {"wait": -1}, 400, "wait must be"),
        ("GET", "/ds/job/", {"client": "c", "limit": 0}, 400, "limit"),
        ("GET", "/ds/job/c/since/x", None, 400, "since must be"),
        ("GET", "/ds/job/", {"client": "c", "job": "j", "since": 1}, 400, "not both"),
    ],
)
def test_bad_requests_say_what_is_wrong(
    h: Harness, method: str, path: str, body: Any, status: int, fragment: str
) -> None:
    assert fragment in h.error(method, path, body, status)


def test_a_request_value_with_a_non_text_map_key_is_refused(h: Harness) -> None:
    assert "map key" in h.error(
        "POST", "/ds/job/", {"job": "j", "client": "c", "request": {1: 2}}, 400
    )


def test_reserved_dsid_is_refused(h: Harness) -> None:
    assert h.call("POST", "/stats/job/", {"job": "j", "client": "c"}).reply.status in (400, 404)  # type: ignore[union-attr]


def test_a_failing_request_in_a_batch_leaves_the_others_applied(h: Harness) -> None:
    good = Request("POST", "/ds/job/", body={"job": "a", "client": "c"})
    bad = Request("POST", "/ds/job/", body={"job": "a", "client": "other"})
    later = Request("POST", "/ds/job/", body={"job": "b", "client": "c"})
    _, outcomes = h.service.handle_batch([good, bad, later], T0)
    assert [o.reply.status for o in outcomes if o.reply] == [201, 409, 201]
    assert h.ok("GET", "/ds/job/c/b")["seq"] == 2


def _break_after_writing(monkeypatch: pytest.MonkeyPatch, shape: tuple[str, ...]) -> None:
    """Make the POST handler of a route raise after its writes, as a bug or a full map would."""
    [methods] = [m for route, m in routes.ROUTES if route == shape]
    handler = methods["POST"]

    def broken(ctx: Context, *args: Any) -> Outcome:
        handler(ctx, *args)
        raise RuntimeError("a bug after writing")

    monkeypatch.setitem(methods, "POST", broken)


def _wake_once(take: Request) -> tuple[list[Mapping[str, int]], Any]:
    """A server's wake: the parked ``take`` is handed out once, as unparking does."""
    calls: list[Mapping[str, int]] = []

    def wake(queued: Mapping[str, int]) -> list[Request]:
        calls.append(queued)
        return [take] if len(calls) == 1 else []

    return calls, wake


def test_a_request_failing_after_it_wrote_is_rolled_back_alone(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.submit(job="a", client="c")
    _break_after_writing(monkeypatch, ("D", "job", "cancel"))
    before = Request("POST", "/ds/job/", body={"job": "b", "client": "c"})
    cancel = Request("POST", "/ds/job/cancel", body={"job": "a", "client": "c"})
    after = Request("POST", "/ds/job/", body={"job": "d", "client": "c"})
    _, outcomes = h.service.handle_batch([before, cancel, after], T0)
    assert [o.reply.status for o in outcomes if o.reply] == [201, 500, 201]
    assert "internal error" in (outcomes[1].reply.error or "")  # type: ignore[union-attr]
    assert outcomes[1].changes == []
    assert h.ok("GET", "/ds/job/c/a")["status"] == "submitted"
    assert [h.ok("GET", f"/ds/job/c/{j}")["seq"] for j in "bd"] == [2, 3]
    assert h.ok("GET", "/server/ds/stats")["by_status"] == {"submitted": 3}


def test_a_batch_run_again_still_wakes_a_waiting_take(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.submit(job="a", client="c")
    _break_after_writing(monkeypatch, ("D", "job", "cancel"))
    submit = Request("POST", "/ds/job/", body={"job": "b", "client": "c"})
    cancel = Request("POST", "/ds/job/cancel", body={"job": "a", "client": "c"})
    take = Request("POST", "/server/ds/job/take", body={"max": 5, "wait": 1000})
    calls, wake = _wake_once(take)
    _, outcomes = h.service.handle_batch([submit, cancel], T0, wake)
    assert calls == [{"ds": 1}]  # the first run failed before it woke anything
    assert [o.reply.status for o in outcomes if o.reply] == [201, 500, 200]
    assert [j["job"] for j in outcomes[2].reply.body["jobs"]] == ["a", "b"]  # type: ignore[union-attr]


def test_a_take_woken_before_its_batch_is_run_again_is_answered_once(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break_after_writing(monkeypatch, ("server", "D", "job", "take"))
    submit = Request("POST", "/ds/job/", body={"job": "a", "client": "c"})
    take = Request("POST", "/server/ds/job/take", body={"wait": 1000})
    calls, wake = _wake_once(take)
    _, outcomes = h.service.handle_batch([submit], T0, wake)
    assert [o.reply.status for o in outcomes if o.reply] == [201, 500]
    assert len(calls) == 2  # the second run may wake more, and here finds none
    assert h.ok("GET", "/ds/job/c/a")["status"] == "submitted"


def test_records_indexes_and_seq_survive_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data")
    h.submit(job="a")
    h.submit(job="b")
    h.take(lease=50)
    h.storage.close()
    again = Harness(tmp_path / "data")
    again.now = h.now
    assert again.ok("GET", "/ds/job/c1/a")["status"] == "accepted"
    assert [r["job"] for r in again.take()] == ["b"]
    assert again.submit(job="c")["seq"] == 5
    assert again.ok("POST", "/sub/ds/job", {"client": "c1"})["seq"] == 5
    # the lease of "a" is remembered too
    assert again.call("GET", "/ds/job/c1/a", now=again.now + 100).reply.body["status"] == "retrying"  # type: ignore[union-attr]


def test_a_client_over_its_unfinished_job_limit_gets_429(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data", Limits(max_active_per_client=2))
    h.submit(job="a")
    h.submit(job="b")
    assert "unfinished jobs" in h.error("POST", "/ds/job/", {"job": "c", "client": "c1"}, 429)
    h.submit(job="x", client="c2")  # other clients are not held back
    h.ok("POST", "/ds/job/cancel", {"job": "a", "client": "c1"})
    h.submit(job="c")  # a finished job frees its place


def test_a_datasource_over_its_unfinished_job_limit_gets_429(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data", Limits(max_active_per_datasource=2))
    h.submit(job="a", client="c1")
    h.submit(job="b", client="c2")
    assert "datasource 'ds'" in h.error("POST", "/ds/job/", {"job": "c", "client": "c3"}, 429)
    h.ok("POST", "/other/job/", {"job": "c", "client": "c3"}, 201)


def test_every_status_change_is_kept_in_a_bounded_history(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data", Limits(history_length=3))
    h.submit()
    h.take()
    h.report("j1", "accepted", progress=1)  # not a status change
    h.report("j1", "retrying")
    record = h.take()[0]
    assert [e["status"] for e in record["history"]] == ["accepted", "retrying", "accepted"]
    assert record["history"][-1]["at"] == record["updated"]


def test_terminal_jobs_are_purged_after_retention_from_record_and_listings(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data", Limits(retention_ms=1000, purge_batch=2))
    for job in ("a", "b", "c"):
        h.submit(job=job)
        h.ok("POST", "/ds/job/cancel", {"job": job, "client": "c1"})
    h.submit(job="live")
    last_seq = h.ok("GET", "/ds/job/c1/live")["seq"]
    h.now += 1000
    h.ok("GET", "/ds/job/c1/live")  # one batch purges two
    with h.storage.read() as txn:
        assert [txn.get("ds", job) is None for job in ("a", "b", "c")] == [True, True, False]
    h.ok("GET", "/ds/job/c1/live")  # the next batch purges the third
    assert [r["job"] for r in h.ok("GET", "/ds/job/c1")["jobs"]] == ["live"]
    assert [r["job"] for r in h.ok("GET", "/server/ds/job/", {})["jobs"]] == ["live"]
    assert h.submit(job="d")["seq"] == last_seq + 1  # seq is never reused


def test_a_full_store_refuses_submits_but_keeps_cancels_reports_and_reads(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data", Limits(full_at=0.5))
    h.storage.max_map_size = h.storage.used() * 8
    h.submit(job="running")
    h.submit(job="queued")
    assert h.take(max=1)[0]["job"] == "running"
    blob = "x" * 4000
    for i in range(200):
        reply = h.call(
            "POST", "/ds/job/", {"job": f"fill{i}", "client": "c1", "request": blob}
        ).reply
        assert reply is not None
        if reply.status == 507:
            assert "store is full" in (reply.error or "")
            break
    else:
        raise AssertionError("the store never filled up")
    assert h.ok("POST", "/ds/job/cancel", {"job": "running", "client": "c1"})["cancel_requested"]
    assert h.report("queued", "failed")["status"] == "failed"
    assert h.ok("GET", "/ds/job/c1/running")["status"] == "accepted"


def test_the_map_grows_before_it_fills(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data", map_size=1 << 16, max_map_size=1 << 24)
    service = Service(storage)
    for i in range(100):
        body = {"job": f"j{i}", "client": "c", "request": "x" * 2000}
        outcome = service.handle(Request("POST", "/ds/job/", body=body), T0)
        assert outcome.reply is not None and outcome.reply.status == 201, outcome.reply
    assert storage.env.info()["map_size"] > 1 << 16


def test_stats_queue_age_counts_due_jobs_only_from_when_they_fell_due(h: Harness) -> None:
    job = h.ok("POST", "/ds/job/", {"job": "later", "client": "c1", "delay": 1000}, 201)
    assert h.ok("GET", "/server/ds/stats")["oldest_queued_ms"] is None  # nothing is due yet
    h.now = job["not_before"] + 499  # the stats call is 1 ms later
    assert h.ok("GET", "/server/ds/stats")["oldest_queued_ms"] == 500


def test_stats_queue_age_is_never_negative_after_the_wall_clock_is_set_back(h: Harness) -> None:
    h.submit()
    h.step_wall_clock(-60_000)
    assert h.ok("GET", "/server/ds/stats")["oldest_queued_ms"] == 0


def test_datasource_stats_count_statuses_queue_age_and_recent_activity(h: Harness) -> None:
    for job in ("a", "b", "c", "d"):
        h.submit(job=job)
    h.take(max=2, lease=10)
    h.report("a", "complete")
    h.now += 11  # b's lease runs out
    h.submit(job="other", client="c2")
    stats = h.ok("GET", "/server/ds/stats")
    assert stats["by_status"] == {"submitted": 3, "complete": 1, "retrying": 1}
    assert stats["unfinished"] == 4
    assert stats["oldest_queued_ms"] == h.now - T0 - 3  # c, submitted third, heads the queue
    assert stats["last_minute"] == {"taken": 2, "finished": 1, "lease_expired": 1}
    h.now += 60_000
    assert h.ok("GET", "/server/ds/stats")["last_minute"] == {
        "taken": 0,
        "finished": 0,
        "lease_expired": 0,
    }


def test_a_refused_report_counts_no_activity(h: Harness) -> None:
    h.submit()
    h.take()
    h.call("POST", "/server/ds/job/status", {"job": "j1", "status": "complete", "response": {1: 2}})
    assert h.ok("GET", "/server/ds/stats")["last_minute"]["finished"] == 0


def test_store_stats_describe_datasources_records_and_the_data_file(h: Harness) -> None:
    h.submit()
    h.ok("POST", "/other/job/", {"job": "x", "client": "c"}, 201)
    stats = h.ok("GET", "/stats")
    assert stats["datasources"] == ["ds", "other"] and stats["records"] == 2 and stats["seq"] == 2
    assert (
        0
        < stats["lmdb"]["used_bytes"]
        <= stats["lmdb"]["map_size"]
        <= stats["lmdb"]["max_map_size"]
    )
    assert stats["requests_handled"] == 3


def test_store_stats_count_the_batches_journaled_and_the_checkpoints(h: Harness) -> None:
    h.submit()
    h.submit("j2")
    before = h.ok("GET", "/stats")["journal"]
    assert before["batches"] == 2 and before["bytes"] > 0
    h.storage.checkpoint()
    after = h.ok("GET", "/stats")["journal"]
    assert after == {"batches": 2, "checkpoints": before["checkpoints"] + 1, "bytes": 0}


def test_a_waiting_take_is_answered_in_the_same_commit_as_the_submit(h: Harness) -> None:
    submit = Request("POST", "/ds/job/", body={"job": "j", "client": "c"})
    take = Request("POST", "/server/ds/job/take", body={"wait": 1000})
    woken: list[Mapping[str, int]] = []

    def wake(queued: Mapping[str, int]) -> list[Request]:
        woken.append(queued)
        return [take]

    _, outcomes = h.service.handle_batch([submit], T0, wake)
    assert woken == [{"ds": 1}]  # one job queued: wake at most one take
    assert [o.reply.status for o in outcomes if o.reply] == [201, 200]
    assert outcomes[1].reply is not None and outcomes[1].reply.body["jobs"][0]["job"] == "j"


def test_a_take_that_waits_gets_a_job_submitted_later_in_the_same_batch(h: Harness) -> None:
    take = Request("POST", "/server/ds/job/take", body={"wait": 1000})
    submit = Request("POST", "/ds/job/", body={"job": "j", "client": "c"})
    _, [taken, submitted] = h.service.handle_batch([take, submit], T0)
    assert submitted.reply is not None and submitted.reply.status == 201
    assert taken.wait is None and taken.reply is not None
    assert [j["job"] for j in taken.reply.body["jobs"]] == ["j"]
