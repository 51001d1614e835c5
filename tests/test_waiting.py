"""Waiting takes in the core, without sockets: parked per datasource, woken oldest first, due on
the monotonic clock, within the store's limit."""

from __future__ import annotations

from jobstore.protocol import Request
from jobstore.store.waiting import WaitingTakes


def take(wait: int) -> Request:
    return Request("POST", "/server/ds/job/take", body={"wait": wait})


def test_a_job_wakes_the_oldest_takes_of_its_datasource_one_per_job() -> None:
    waiting: WaitingTakes[str] = WaitingTakes(10)
    for token in ("a", "b", "c"):
        waiting.park(take(1000), token, b"peer", "ds", 1000, mono=0)
    waiting.park(take(1000), "other", b"peer", "ds2", 1000, mono=0)
    assert [p.token for p in waiting.wake("ds", 2)] == ["a", "b"]
    assert waiting.count == 2 and waiting.by_peer[b"peer"] == 2


def test_a_take_is_due_at_its_deadline_and_runs_again_with_no_wait_left() -> None:
    waiting: WaitingTakes[str] = WaitingTakes(10)
    waiting.park(take(500), "t", b"peer", "ds", 500, mono=1000)
    assert waiting.next_deadline() == 1500
    assert waiting.due(1499) == []
    [due] = waiting.due(1500)
    assert due.token == "t" and due.retry(1500).body == {"wait": 0}
    assert waiting.count == 0 and not waiting.by_peer


def test_a_take_woken_early_runs_again_with_what_is_left_of_its_wait() -> None:
    waiting: WaitingTakes[str] = WaitingTakes(10)
    waiting.park(take(500), "t", b"peer", "ds", 500, mono=1000)
    [woken] = waiting.wake("ds", 1)
    assert woken.retry(1200).body == {"wait": 300}
    waiting.repark(woken)  # another driver took the job: it waits on, with its first deadline
    assert [p.token for p in waiting.due(1500)] == ["t"]


def test_takes_past_the_limit_are_not_parked() -> None:
    waiting: WaitingTakes[str] = WaitingTakes(1)
    assert waiting.park(take(10), "a", b"p", "ds", 10, mono=0) is not None
    assert waiting.park(take(10), "b", b"p", "ds", 10, mono=0) is None
    assert waiting.count == 1


def test_stopping_makes_every_parked_take_due() -> None:
    waiting: WaitingTakes[str] = WaitingTakes(10)
    waiting.park(take(60_000), "a", b"p", "ds", 60_000, mono=0)
    waiting.park(take(60_000), "b", b"p", "ds2", 60_000, mono=0)
    waiting.end_all(5)
    assert sorted(p.token for p in waiting.due(5)) == ["a", "b"]


def test_the_next_deadline_is_a_parked_takes_not_one_woken_and_answered() -> None:
    # Else the store wakes at the answered take's deadline for nothing: once per job at home.
    waiting: WaitingTakes[str] = WaitingTakes(10)
    waiting.park(take(200), "answered", b"peer", "ds", 200, mono=0)
    waiting.park(take(500), "waiting", b"peer", "ds2", 500, mono=0)
    waiting.wake("ds", 1)
    assert waiting.next_deadline() == 500
    waiting.wake("ds2", 1)
    assert waiting.next_deadline() is None
