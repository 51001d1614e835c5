"""Which batches commit: one that changes nothing costs no commit (no fsync), and the store clock is
saved often enough that a restart gives a lease back at most SAVE_EVERY_MS."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobstore.store.context import SAVE_EVERY_MS

from .test_leases import status
from .test_service import Harness


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "data")


def commits(h: Harness) -> int:
    """Batches made durable: journal records written, and LMDB commits (checkpoints)."""
    journal = h.storage.journal
    assert journal is not None
    return journal.appended + int(h.storage.env.info()["last_txnid"])


def saved_clock(h: Harness) -> int:
    with h.storage.read() as txn:
        return txn.clock()


def test_reads_commit_nothing_even_while_a_job_holds_a_lease(h: Harness) -> None:
    h.submit()
    h.submit("j2")
    h.take(lease=60_000)
    before = commits(h)
    status(h)
    h.ok("GET", "/ds/job/c1")
    h.ok("GET", "/server/ds/stats")
    h.ok("GET", "/stats")
    h.error("GET", "/ds/job/c1/nope", None, 404)
    assert commits(h) == before


def test_a_take_that_finds_nothing_commits_nothing(h: Harness) -> None:
    before = commits(h)
    assert h.take() == []
    outcome = h.call("POST", "/server/ds/job/take", {"wait": 1000})
    assert outcome.reply is None and outcome.wait is not None  # parked
    assert commits(h) == before


def test_every_batch_that_changes_something_saves_the_clock_with_it(h: Harness) -> None:
    h.submit()  # the store clock's first reading: 0
    h.now += 250  # less than SAVE_EVERY_MS: a change saves the clock all the same
    h.submit("j2")
    assert saved_clock(h) == 251


def test_a_batch_whose_only_change_is_a_lease_running_out_saves_the_clock(h: Harness) -> None:
    h.submit()
    h.take(lease=100)  # store clock 1
    before = commits(h)
    assert status(h, now=h.now + 200)["status"] == "retrying"  # expired by the batch, not the GET
    assert commits(h) == before + 1
    assert saved_clock(h) == 201


def test_without_a_lease_held_a_read_saves_no_clock_however_late(h: Harness) -> None:
    h.submit()
    before = commits(h)
    status(h, now=h.now + 3_600_000)
    assert commits(h) == before


def test_a_restart_gives_a_lease_back_less_than_save_every_ms(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data")
    h.submit()  # store clock 0
    h.take(lease=10_000)  # store clock 1: the lease runs to 10_001
    before = commits(h)
    status(h, now=h.now + SAVE_EVERY_MS - 1)  # store clock 1_000: too soon to save
    assert commits(h) == before
    status(h, now=h.now + 1)  # store clock 1_001: saved, though the read changed nothing
    assert commits(h) == before + 1
    status(h, now=h.now + SAVE_EVERY_MS - 1)  # store clock 2_000: not saved
    assert saved_clock(h) == 1 + SAVE_EVERY_MS
    h.storage.close()
    # The last batch saw 8_001 ms left; the restarted store resumes at 1_001, so the lease gets
    # 9_000: SAVE_EVERY_MS - 1 more than it had, never more than that.
    again = Harness(tmp_path / "data")
    again.stepped = 987_654_321  # a monotonic clock with another origin (a reboot)
    assert status(again)["status"] == "accepted"
    assert status(again, now=again.now + 8_999)["status"] == "accepted"
    assert status(again, now=again.now + 1)["status"] == "retrying"
