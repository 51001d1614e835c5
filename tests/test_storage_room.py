"""The data file's room (fill, 507, growth inside a batch), commit failures, the decoded-record
cache's byte bound, the data-directory watch and damaged indexes: the service without sockets."""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest

from jobstore.protocol import Request
from jobstore.records import Job
from jobstore.states import Status
from jobstore.store.cache import CACHE_RECORD_MAX, RecordCache
from jobstore.store.engine import WATCH_MS
from jobstore.store.operations import Limits, Outcome, Service
from jobstore.store.storage import Storage

T0 = 1_700_000_000_000
KiB = 1 << 10


class Store:
    """A service over a data directory, with a clock the test moves."""

    def __init__(self, path: Path, limits: Limits | None = None, **storage: Any) -> None:
        self.path = path
        self.limits = limits
        self.storage_args = storage
        self.storage = Storage(path, **storage)
        self.service = Service(self.storage, limits=limits)
        self.now = T0

    def restart(self) -> None:
        self.storage.close()
        self.storage = Storage(self.path, **self.storage_args)
        self.service = Service(self.storage, limits=self.limits)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        self.now += 1
        reply = self.service.handle(Request(method, path, body=body, id=1), self.now).reply
        assert reply is not None
        return reply.status, reply.body, reply.error or ""

    def submit(self, job: str, size: int = 0) -> tuple[int, Any, str]:
        return self.call("POST", "/ds/job/", {"job": job, "client": "c", "request": "x" * size})

    def batch(self, requests: list[Request]) -> list[Outcome]:
        self.now += 1
        return self.service.handle_batch(requests, self.now)[1]


def submit_request(job: str, size: int) -> Request:
    return Request("POST", "/ds/job/", body={"job": job, "client": "c", "request": "x" * size})


def fill_until_refused(store: Store, size: int, most: int = 2000) -> list[str]:
    """Submit jobs of ``size`` bytes until one gets 507; return the accepted job ids."""
    accepted = []
    for i in range(most):
        status, _, error = store.submit(f"fill{i}", size)
        if status == 507:
            assert "store is full" in error
            return accepted
        assert status == 201, error
        accepted.append(f"fill{i}")
    raise AssertionError(f"{most} submits of {size} bytes never filled the store")


def test_fill_counts_pages_in_use_so_purging_clears_507_even_after_a_restart(
    tmp_path: Path,
) -> None:
    store = Store(
        tmp_path / "data",
        Limits(full_at=0.5, retention_ms=10, purge_batch=1000),
        map_size=64 * KiB,
        max_map_size=2 << 20,
    )
    jobs = fill_until_refused(store, 6000)
    # Four takes of 25: a take rewrites each 6 KB record it hands out, and 100 at once do not fit
    # the room left at the ceiling once the take order's pages fragment the free list.
    for _ in range(4):
        for record in store.call("POST", "/server/ds/job/take", {"max": 25})[1]["jobs"]:
            assert (
                store.call(
                    "POST", "/server/ds/job/status", {"job": record["job"], "status": "complete"}
                )[0]
                == 200
            )
    for job in jobs[100:]:
        assert store.call("POST", "/ds/job/cancel", {"job": job, "client": "c"})[0] == 200
    store.now += 1000
    store.call("GET", "/ds/job/c/none")  # this batch purges the rest
    assert store.call("GET", "/server/ds/stats")[1]["by_status"] == {}
    assert store.storage.fill() < 0.1
    assert store.submit("after-purge", 6000)[0] == 201
    store.restart()
    assert store.submit("after-restart", 6000)[0] == 201


def test_pages_in_use_are_counted_only_once_the_file_reaches_full_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "data", Limits(full_at=0.5), map_size=64 * KiB, max_map_size=2 << 20)
    counted = 0
    used = Storage.used

    def counting(storage: Storage) -> int:
        nonlocal counted
        counted += 1
        return used(storage)

    monkeypatch.setattr(Storage, "used", counting)
    assert store.submit("small")[0] == 201
    assert counted == 0  # the file's end is far below half the ceiling: nothing to count
    fill_until_refused(store, 6000)
    assert counted > 0


def test_a_batch_of_large_submits_grows_the_map_inside_the_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", map_size=64 * KiB, max_map_size=64 << 20)
    outcomes = store.batch([submit_request(f"big{i}", 40 * KiB) for i in range(40)])
    assert [o.reply.status for o in outcomes if o.reply] == [201] * 40
    assert store.storage.map_size() >= 40 * 40 * KiB


def test_a_take_of_many_large_jobs_grows_the_map_inside_the_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", map_size=64 * KiB, max_map_size=64 << 20)
    for i in range(20):
        assert store.submit(f"big{i}", 12 * KiB)[0] == 201
    status, body, error = store.call("POST", "/server/ds/job/take", {"max": 20})
    assert status == 200, error
    assert len(body["jobs"]) == 20


def test_reads_takes_and_reports_work_while_submits_are_refused(tmp_path: Path) -> None:
    # 80% of a tiny ceiling: the last 5% of 2 MiB is less than a take of 20 large records
    # needs (LMDB writes each changed record anew before it frees the old pages).
    store = Store(tmp_path / "data", Limits(full_at=0.8), map_size=64 * KiB, max_map_size=2 << 20)
    jobs = fill_until_refused(store, 3000)
    status, body, error = store.call("POST", "/server/ds/job/take", {"max": 20})
    assert status == 200, error
    assert len(body["jobs"]) == 20
    for record in body["jobs"]:
        report = {"job": record["job"], "status": "accepted", "progress": {"pct": 50}}
        assert store.call("POST", "/server/ds/job/status", report)[0] == 200
    assert store.call("POST", "/ds/job/cancel", {"job": jobs[-1], "client": "c"})[0] == 200
    assert store.call("GET", f"/ds/job/c/{jobs[0]}")[1]["progress"] == {"pct": 50}
    assert store.submit("still-refused")[0] == 507


def test_a_genuinely_full_map_answers_507_per_request_and_the_store_goes_on(
    tmp_path: Path,
) -> None:
    # No soft limit: the submits run until LMDB itself finds the map full at its ceiling.
    store = Store(
        tmp_path / "data", Limits(full_at=2.0), map_size=256 * KiB, max_map_size=256 * KiB
    )
    for i in range(1000):
        status, _, error = store.submit(f"j{i}", 8 * KiB)
        if status == 507:
            assert "full even at its ceiling" in error
            break
        assert status == 201, error
    else:
        raise AssertionError("the map never filled")
    small = submit_request("small", 0)
    read = Request("GET", "/ds/job/c/j0")
    outcomes = store.batch([submit_request("too-big", 64 * KiB), read, small])
    assert [o.reply.status for o in outcomes if o.reply] == [507, 200, 201]
    assert store.call("GET", "/ds/job/c/small")[0] == 200
    assert store.call("GET", "/ds/job/c/too-big")[0] == 404


def test_a_failed_commit_answers_every_request_of_the_batch_and_applies_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "data")
    original = Storage.write

    @contextmanager
    def failing_commit(self: Storage) -> Iterator[Any]:
        with original(self) as txn:
            yield txn
            raise lmdb.Error("mdb_txn_commit: Input/output error (injected)")

    monkeypatch.setattr(Storage, "write", failing_commit)
    outcomes = store.batch(
        [submit_request("a", 10), Request("GET", "/ds/job/c/a"), submit_request("b", 10)]
    )
    assert [o.reply.status for o in outcomes if o.reply] == [500, 500, 500]
    assert all("could not commit this batch" in (o.reply.error or "") for o in outcomes if o.reply)
    assert all(o.changes == [] for o in outcomes)
    monkeypatch.undo()
    assert store.call("GET", "/ds/job/c/a")[0] == 404
    assert store.submit("a")[0] == 201


def test_the_decoded_cache_stays_within_its_byte_bound(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data", cache_bytes=64 * KiB)
    rng = random.Random(1)
    base = Job("ds", "j", "c", None, Status.ACCEPTED, T0, T0, 1)
    for i in range(300):
        job = base.evolve(
            job=f"j{i % 40}", seq=i + 1, progress="p" * rng.choice([10, 2000, 9000, 20_000, 60_000])
        )
        with storage.write() as txn:
            txn.put(job, txn.get("ds", job.job))
        charged = sum(RecordCache.cost(dsid, value) for dsid, value in storage.cache.decoded)
        assert storage.cache.decoded_bytes == charged <= storage.cache.cache_bytes
        assert all(len(value) <= CACHE_RECORD_MAX for _, value in storage.cache.decoded)
    assert storage.cache.decoded  # small records are still kept


def test_writes_get_503_once_the_data_directory_is_moved_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "data")
    assert store.submit("a")[0] == 201
    (tmp_path / "data").rename(tmp_path / "elsewhere")
    store.now += WATCH_MS
    status, _, error = store.submit("b")
    assert status == 503
    assert "data directory is gone" in error and "restart" in error
    assert any(
        r.levelno == logging.ERROR and "refusing every write" in r.message for r in caplog.records
    )
    assert store.call("POST", "/server/ds/job/take", {"max": 1})[0] == 503
    assert store.call("GET", "/ds/job/c/a")[0] == 200  # reads of what was committed go on
    (tmp_path / "elsewhere").rename(tmp_path / "data")
    store.now += WATCH_MS
    assert store.submit("b")[0] == 201


def test_writes_get_503_once_the_data_directory_is_deleted(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    assert store.submit("a")[0] == 201
    shutil.rmtree(tmp_path / "data")
    store.now += WATCH_MS
    assert store.submit("b")[0] == 503


def test_the_watch_runs_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "data")
    calls = []
    misplaced = store.storage.misplaced
    monkeypatch.setattr(store.storage, "misplaced", lambda: calls.append(1) or misplaced())
    for _ in range(50):
        store.call("GET", "/ds/job/c/a")
    assert len(calls) <= 1
    store.now += WATCH_MS
    store.call("GET", "/ds/job/c/a")
    assert len(calls) >= 1


def test_an_index_entry_of_a_missing_record_is_a_500_naming_it_and_the_store_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "data")
    for job in ("lost", "kept"):
        assert store.submit(job)[0] == 201
    with store.storage.write() as txn:
        txn.delete_raw("jobs", b"ds\0lost\0")
    store.storage.cache.decoded.clear()
    status, _, error = store.call("POST", "/server/ds/job/take", {"max": 2})
    assert status == 500 and "internal error" in error
    assert "index points at missing job ds/lost: run jobstore check" in caplog.text
    assert store.call("GET", "/ds/job/c/kept")[0] == 200


def test_the_environment_syncs_every_commit(tmp_path: Path) -> None:
    flags = Storage(tmp_path / "data").env.flags()
    assert flags["sync"] and flags["metasync"]
    assert not flags["map_async"] and not flags["writemap"]
