from pathlib import Path

import cbor2
import pytest

from jobstore.check import check
from jobstore.errors import ConfigError
from jobstore.records import Job
from jobstore.states import Status
from jobstore.storage import FORMAT, FORMAT_KEY, SEQ_KEY, Storage, u64

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
)

JOBS = [JOB, *(JOB.evolve(job=f"j{n}", seq=7 + n, lease_until=0, response=n) for n in (2, 3))]


def _format_1_store(path: Path) -> None:
    """A data directory as the first storage format left it: records as CBOR arrays, no format key."""
    storage = Storage(path)
    with storage.write() as txn:
        for job in JOBS:
            txn.put(job, None)
            v1 = cbor2.dumps([*job[:4], job.status.value, *job[5:13], list(job.history)])
            txn.txn.put(f"ds\0{job.job}\0".encode(), v1, db=storage.dbs["jobs"])
        txn.set_counter(SEQ_KEY, max(job.seq for job in JOBS))
        txn.txn.delete(FORMAT_KEY, db=storage.dbs["meta"])
    storage.close()


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
        assert [txn.get("ds", job.job) for job in JOBS] == JOBS
        assert txn.format() == FORMAT
    storage.close()
    assert check(tmp_path) == (len(JOBS), [])


def test_a_format_1_store_is_not_checked_before_it_is_upgraded(tmp_path: Path) -> None:
    _format_1_store(tmp_path)
    with pytest.raises(ConfigError, match="run `jobstore serve` on it once to upgrade it"):
        check(tmp_path)


def test_a_format_1_store_can_be_backed_up_before_it_is_upgraded(tmp_path: Path) -> None:
    _format_1_store(tmp_path / "data")
    Storage(tmp_path / "data", readonly=True).backup(tmp_path / "copy")
    with Storage(tmp_path / "copy").read() as txn:
        assert txn.get("ds", "j1") == JOB


def test_a_store_from_a_newer_jobstore_is_refused(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.write() as txn:
        txn.set_meta(FORMAT_KEY, u64(FORMAT + 1))
    storage.close()
    with pytest.raises(ConfigError, match="written by a newer jobstore"):
        Storage(tmp_path)


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
        storage.decoded.clear()
        assert cached == txn.get("ds", "j1") == JOB


def test_equal_records_of_two_datasources_keep_their_own_datasource(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    other = JOB.evolve(dsid="other")
    with storage.write() as txn:
        txn.put(JOB, None)
        txn.put(other, None)
    with storage.read() as txn:
        assert [txn.get(d, "j1") for d in ("ds", "other")] == [JOB, other]
