import os
import time
from pathlib import Path

import cbor2
import pytest

from jobstore import records
from jobstore.errors import ConfigError
from jobstore.protocol import Request
from jobstore.records import Job
from jobstore.states import Status
from jobstore.store import keys
from jobstore.store.check import check
from jobstore.store.keys import CLOCK_KEY, FORMAT, FORMAT_KEY, SEQ_KEY, u64
from jobstore.store.operations import Service
from jobstore.store.storage import Storage

from .old_layout import as_old_layout

JOB = Job(
    "ds",
    "j1",
    "app",
    {"op": "x"},
    Status.ACCEPTED,
    1000,
    2000,
    7,
    attempts=1,
    progress={"pct": 50},
    lease_until=9000,
    history=(("submitted", 1000), ("accepted", 2000)),
    lease_ms=20_000,
)

JOBS = [JOB, *(JOB.evolve(job=f"j{n}", seq=7 + n, lease_until=0, response=n) for n in (2, 3))]


def _old_store(path: Path, jobs: list[Job], old_format: int) -> None:
    """A data directory as an older storage format left it: lease deadlines on the wall clock,
    no store clock, and records as CBOR arrays with no format key (1) or after an 8-byte lease
    deadline (2)."""
    storage = Storage(path)
    with storage.write() as txn:
        for job in jobs:
            txn.put(job, None)  # the indexes, keyed as the old formats keyed them
            if old_format == 1:
                old = cbor2.dumps([*job[:4], job.status.value, *job[5:13], list(job.history)])
            else:
                old = u64(job.lease_until) + records.encode(job)
            txn.put_raw("jobs", f"ds\0{job.job}\0".encode(), old)
        txn.set_counter(SEQ_KEY, max(job.seq for job in jobs))
        txn.delete_raw("meta", CLOCK_KEY)
    storage.close()
    as_old_layout(path, None if old_format == 1 else old_format, without=keys.ORDER_INDEXES)


def _format_1_store(path: Path) -> None:
    _old_store(path, JOBS, 1)


def _as_upgraded(job: Job) -> Job:
    """A record of JOBS as an upgrade reads it: its lease, long past on the wall clock, has 1 ms
    left on the new store clock, and is the store's default (lease_ms 0)."""
    return job.evolve(lease_until=1 if job.lease_until else 0, lease_ms=0)


def test_records_round_trip(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.write() as txn:
        txn.put(JOB, None)
    with storage.read() as txn:
        assert txn.get("ds", "j1") == JOB


def test_opening_a_format_1_store_upgrades_its_records(tmp_path: Path) -> None:
    _format_1_store(tmp_path)
    storage = Storage(tmp_path)
    with storage.read() as txn:
        assert [txn.get("ds", job.job) for job in JOBS] == [_as_upgraded(job) for job in JOBS]
        assert txn.format() == FORMAT
    storage.close()
    assert check(tmp_path) == (len(JOBS), [])


def test_opening_a_format_2_store_moves_its_leases_to_the_store_clock(tmp_path: Path) -> None:
    wall = time.time_ns() // 1_000_000
    hour = 3_600_000
    live = JOB.evolve(job="live", seq=11, lease_until=wall + hour)
    jobs = [*JOBS, live]
    _old_store(tmp_path, jobs, 2)
    with pytest.raises(ConfigError, match="run `jobstore serve` on it once to upgrade it"):
        check(tmp_path)
    storage = Storage(tmp_path)
    with storage.read() as txn:
        assert txn.format() == FORMAT == 7
        assert [txn.get("ds", job.job) for job in JOBS] == [_as_upgraded(job) for job in JOBS]
        upgraded = txn.get("ds", "live")
        assert upgraded is not None
        # The hour it had left, less the moments since `wall`; measured on the store clock from 0.
        assert hour - 60_000 < upgraded.lease_until <= hour
        assert upgraded == live.evolve(lease_until=upgraded.lease_until, lease_ms=0)
        assert txn.next_lease() == 1
    storage.close()
    assert check(tmp_path) == (len(jobs), [])
    # Served, the lease still running has its hour, however the wall clock reads now.
    service = Service(Storage(tmp_path))
    get = Request("GET", "/ds/job/app/live", id=1)
    assert service.handle(get, wall + 100 * hour, mono=0).reply.body["status"] == "accepted"  # type: ignore[union-attr]
    status = service.handle(get, wall, mono=upgraded.lease_until).reply.body["status"]  # type: ignore[union-attr]
    assert status == "retrying"


def test_opening_a_format_3_store_puts_its_queued_jobs_in_the_take_order(tmp_path: Path) -> None:
    """A populated store as format 3 left it (no take-order databases) is served fairly at once."""
    service = Service(Storage(tmp_path))
    for n, client in enumerate(["a", "a", "a", "b", "b", "c"]):
        body = {"job": f"{client}{n}", "client": client, "request": n}
        assert service.handle(Request("POST", "/ds/job/", body=body), 1000).reply.status == 201  # type: ignore[union-attr]
    service.handle(Request("POST", "/server/ds/job/take", body={}), 1000)  # a0: accepted
    service.storage.close()
    as_old_layout(tmp_path, 3, without=keys.ORDER_INDEXES)
    with pytest.raises(ConfigError, match="run `jobstore serve` on it once to upgrade it"):
        check(tmp_path)

    service = Service(Storage(tmp_path))
    take = Request("POST", "/server/ds/job/take", body={"max": 10})
    taken = service.handle(take, 2000).reply.body["jobs"]  # type: ignore[union-attr]
    # In queue order a joined the line first, then b, then c; a was served last before the upgrade
    # but the line starts afresh.
    assert [job["job"] for job in taken] == ["a1", "b3", "c5", "a2", "b4"]
    service.storage.close()
    assert check(tmp_path) == (6, [])


def test_opening_a_format_4_store_keeps_its_take_order(tmp_path: Path) -> None:
    """Format 4 deleted a taken job's due entry at once; its indexes are format 5's without any
    taken entries left, so the upgrade only records the format, and takes go on in fair order."""
    service = Service(Storage(tmp_path))
    for n, (client, options) in enumerate(
        [("a", {}), ("a", {}), ("b", {"priority": 2}), ("b", {}), ("c", {"delay": 50}), ("c", {})]
    ):
        body = {"job": f"{client}{n}", "client": client, "request": n, **options}
        assert service.handle(Request("POST", "/ds/job/", body=body), 1000).reply.status == 201  # type: ignore[union-attr]
    cancel = {"job": "a0", "client": "a"}
    assert service.handle(Request("POST", "/ds/job/cancel", body=cancel), 1000).reply.status == 200  # type: ignore[union-attr]
    service.storage.close()
    as_old_layout(tmp_path, 4)
    with pytest.raises(ConfigError, match="run `jobstore serve` on it once to upgrade it"):
        check(tmp_path)

    service = Service(Storage(tmp_path))
    with service.storage.read() as txn:
        assert txn.format() == FORMAT == 7
    take = Request("POST", "/server/ds/job/take", body={"max": 10})
    taken = service.handle(take, 2000).reply.body["jobs"]  # type: ignore[union-attr]
    assert [job["job"] for job in taken] == ["b2", "a1", "b3", "c4", "c5"]  # c4 fell due: older
    service.storage.close()
    assert check(tmp_path) == (6, [])


def test_a_format_1_store_is_not_checked_before_it_is_upgraded(tmp_path: Path) -> None:
    _format_1_store(tmp_path)
    with pytest.raises(ConfigError, match="run `jobstore serve` on it once to upgrade it"):
        check(tmp_path)


def test_a_format_1_store_can_be_backed_up_before_it_is_upgraded(tmp_path: Path) -> None:
    _format_1_store(tmp_path / "data")
    Storage(tmp_path / "data", readonly=True).backup(tmp_path / "copy")
    with Storage(tmp_path / "copy").read() as txn:
        assert txn.get("ds", "j1") == _as_upgraded(JOB)


def test_a_store_from_a_newer_jobstore_is_refused(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.write() as txn:
        txn.set_meta(FORMAT_KEY, u64(FORMAT + 1))
    storage.close()
    with pytest.raises(ConfigError, match="written by a newer jobstore"):
        Storage(tmp_path)


def test_a_refused_store_lets_go_of_its_files(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.write() as txn:
        txn.set_meta(FORMAT_KEY, u64(FORMAT + 1))
    storage.close()
    with pytest.raises(ConfigError) as refused:
        Storage(tmp_path)
    # Its traceback still holds the half-made store: its files are closed all the same.
    assert refused.traceback and _open_files(tmp_path) == []


def _open_files(directory: Path) -> list[str]:
    """The files under ``directory`` this process holds open."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since listed
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return sorted(found)


def test_counters_set_in_a_failed_nested_transaction_are_dropped(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.write() as txn:
        txn.next_seq()
        with pytest.raises(RuntimeError), txn.nested() as child:
            child.next_seq()
            raise RuntimeError("rolled back")
        assert txn.seq() == 1
    with storage.read() as txn:
        assert txn.seq() == 1


def test_counters_are_visible_to_scans_before_the_commit(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.write() as txn, txn.nested() as child:
        child.put(JOB, None)
        assert child.by_status("ds") == {"accepted": 1}
        assert child.datasources() == ["ds"]


def test_a_record_read_back_is_the_same_from_the_cache_and_from_the_bytes(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.write() as txn:
        txn.put(JOB, None)
    with storage.read() as txn:
        cached = txn.get("ds", "j1")
        storage.cache.decoded.clear()
        assert cached == txn.get("ds", "j1") == JOB


def test_equal_records_of_two_datasources_keep_their_own_datasource(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    other = JOB.evolve(dsid="other")
    with storage.write() as txn:
        txn.put(JOB, None)
        txn.put(other, None)
    with storage.read() as txn:
        assert [txn.get(d, "j1") for d in ("ds", "other")] == [JOB, other]
