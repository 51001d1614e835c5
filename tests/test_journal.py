"""The journal after a crash: what a power cut leaves (the data file's last checkpoint and the
journal) holds every batch acknowledged since, and redo stops at the first torn, forged or stale
record. The helpers here serve :mod:`tests.test_journal_checkpoints` too.

A *crash copy* is the data file and journal of an open store copied to a new directory: what a
power cut would leave. LMDB allows one open environment per path per process, so the copy is also
how a test opens the store again while it is open.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from jobstore.records import Job
from jobstore.states import Status
from jobstore.store.check import check
from jobstore.store.datadir import DATA_FILE
from jobstore.store.journal import HEADER, JOURNAL_FILE, MAGIC, Journal, Op
from jobstore.store.storage import Storage

from .test_service import T0, Harness
from .test_storage_room import KiB, Store

FILLER = b"test-filler"  # a meta key no jobstore reads: a batch of a chosen record length


def crash_copy(data: Path, to: Path) -> Path:
    """What a power cut would leave of the open store at ``data``, in the new directory ``to``."""
    to.mkdir(mode=0o700)
    for name in (DATA_FILE, JOURNAL_FILE):
        shutil.copyfile(data / name, to / name)
    return to


@contextmanager
def reopened(path: Path, **storage: Any) -> Iterator[Storage]:
    """The store at ``path`` opened writable (its journal redone), closed after the block."""
    opened = Storage(path, **storage)
    try:
        yield opened
    finally:
        opened.close()


def held(storage: Storage, jobs: Iterable[str]) -> dict[str, Job | None]:
    """Jobs of datasource ds as ``storage`` reads them now."""
    with storage.read() as txn:
        return {job: txn.get("ds", job) for job in jobs}


def present(storage: Storage, jobs: Iterable[str]) -> list[str]:
    """Which of ``jobs`` ``storage`` holds now."""
    return [job for job, record in held(storage, jobs).items() if record is not None]


def present_after_crash(data: Path, to: Path, jobs: Iterable[str]) -> list[str]:
    """Which of ``jobs`` a crash copy of the open store at ``data`` holds once opened."""
    with reopened(crash_copy(data, to)) as copy:
        return present(copy, jobs)


def meta(storage: Storage, key: bytes) -> bytes | None:
    with storage.read() as txn:
        return txn.meta(key)


def journal_of(storage: Storage) -> Journal:
    assert storage.journal is not None
    return storage.journal


def last_txnid(storage: Storage) -> int:
    return int(storage.env.info()["last_txnid"])


def put(storage: Storage, job: str) -> None:
    """One batch: a submitted job of datasource ds."""
    with storage.write() as txn:
        txn.put(Job("ds", job, "c", "r", Status.SUBMITTED, T0, T0, 1), None)


def delete(storage: Storage, job: str) -> None:
    """One batch: delete a job of datasource ds, as a purge does."""
    with storage.write() as txn:
        record = txn.get("ds", job)
        assert record is not None
        txn.delete(record)


def record(ops: list[Op], scratch: Path) -> bytes:
    """The journal record of a batch of ``ops`` (its MAC under another key), written in a scratch
    file as a store writes one: the sizes and payloads below follow the journal's encoding."""
    journal = Journal(scratch, b"scratch")
    try:
        journal.append(ops)
        return scratch.read_bytes()[: journal.end]
    finally:
        journal.close()
        scratch.unlink()


def filler(storage: Storage, length: int, value: bytes = b"") -> tuple[bytes, bytes]:
    """Journal one batch whose record is exactly ``length`` bytes, a meta entry of FILLER's; return
    the entry's key and value."""
    number, scratch = storage.tables.number[storage.tables.meta], storage.path.with_name("scratch")
    more = length - len(record([(number, FILLER, value)], scratch))
    for n in range(more - 2, more + 1):  # a longer length prefix may take a byte or two
        for key in (FILLER, FILLER + b"+"):  # and skip a size a longer key hits
            padded = value + b"f" * n
            if n >= 0 and len(record([(number, key, padded)], scratch)) == length:
                with storage.write() as txn:
                    txn.set_meta(key, padded)
                return key, padded
    raise AssertionError(f"no filler record is {length} bytes long")


def test_a_crash_keeps_every_batch_acknowledged_since_the_last_checkpoint(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data")
    h.submit("old")
    h.storage.checkpoint()  # the rest is only in the journal: submits, a cancel, a take, a complete
    for job in ("a", "b", "c"):
        h.submit(job)
    h.ok("POST", "/ds/job/cancel", {"job": "c", "client": "c1"})
    assert [job["job"] for job in h.take(max=3)] == ["old", "a", "b"]  # the client's line empties
    h.report("a", "complete", response=42)
    jobs = ["old", "a", "b", "c"]
    acknowledged = held(h.storage, jobs)
    statuses = [job.status for job in acknowledged.values() if job]
    assert statuses == ["accepted", "complete", "accepted", "cancelled"]
    copy = crash_copy(h.storage.path, tmp_path / "copy")
    with reopened(copy) as storage:
        assert held(storage, jobs) == acknowledged
    assert check(copy) == (4, [])  # indexes, counters and the take order redone with the records


def cut_in_its_payload(path: Path, start: int, end: int) -> None:
    os.truncate(path, end - 1)


def cut_in_its_header(path: Path, start: int, end: int) -> None:
    os.truncate(path, start + HEADER.size // 2)


def its_tail_zeroed(path: Path, start: int, end: int) -> None:
    with path.open("r+b") as file:  # the last sectors never reached the disk
        file.seek(end - 8)
        file.write(bytes(8))


@pytest.mark.parametrize("tear", [cut_in_its_payload, cut_in_its_header, its_tail_zeroed])
def test_redo_stops_at_a_torn_last_record_and_the_store_serves_on(
    tmp_path: Path, tear: Callable[[Path, int, int], None]
) -> None:
    h = Harness(tmp_path / "data")
    h.submit("a")
    h.submit("b")
    start = journal_of(h.storage).end
    h.submit("torn")
    copy = crash_copy(h.storage.path, tmp_path / "copy")
    tear(copy / JOURNAL_FILE, start, journal_of(h.storage).end)
    again = Harness(copy)
    assert present(again.storage, ["a", "b", "torn"]) == ["a", "b"]
    again.submit("after")  # numbered as the torn batch was: redo must not mix the two up
    jobs = ["a", "b", "torn", "after"]
    assert present_after_crash(copy, tmp_path / "second", jobs) == ["a", "b", "after"]
    assert check(tmp_path / "second") == (3, [])


def test_a_record_signed_with_another_key_and_every_record_after_it_are_not_redone(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    copy = crash_copy(storage.path, tmp_path / "copy")
    number = storage.tables.number[storage.tables.meta]
    # Numbered next: a record of another store (another secret), then one this store's signs.
    end, seq = journal_of(storage).end, journal_of(storage).seq
    for key, entry in ((b"another store's secret".ljust(32), b"forged"), (storage.secret, b"ok")):
        writer = Journal(copy / JOURNAL_FILE, key)
        writer.end, writer.seq = end, seq
        writer.append([(number, entry, b"1")])
        end, seq = writer.end, writer.seq
        writer.close()
    with reopened(copy) as again:
        assert present(again, ["a"]) == ["a"]
        assert meta(again, b"forged") is None and meta(again, b"ok") is None


def test_a_record_with_a_flipped_byte_and_every_record_after_it_are_not_redone(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path / "data")
    h.submit("a")
    h.submit("flipped")
    at = journal_of(h.storage).end - 1  # the last byte of its payload: the CBOR still decodes
    h.submit("b")
    copy = crash_copy(h.storage.path, tmp_path / "copy")
    with (copy / JOURNAL_FILE).open("r+b") as file:
        file.seek(at)
        byte = file.read(1)[0]
        file.seek(at)
        file.write(bytes([byte ^ 1]))
    with reopened(copy) as again:
        assert present(again, ["a", "flipped", "b"]) == ["a"]


def test_a_job_deleted_before_a_checkpoint_does_not_come_back(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    delete(storage, "a")
    storage.checkpoint()
    key, value = filler(storage, 64)  # over the start of a's put: the records after it remain
    with reopened(crash_copy(storage.path, tmp_path / "copy")) as copy:
        assert present(copy, ["a"]) == []
        assert meta(copy, key) == value


def test_a_stale_record_where_the_new_ones_end_is_not_redone(tmp_path: Path) -> None:
    # Fails if redo took any record its MAC passes, whatever its number.
    storage = Storage(tmp_path / "data")
    filler(storage, 1000)
    put(storage, "a")  # at offset 1000
    stale = journal_of(storage).seq
    storage.checkpoint()
    delete(storage, "a")
    key, value = filler(storage, 1000 - journal_of(storage).end, b"new")  # ends at 1000
    copy = crash_copy(storage.path, tmp_path / "copy")
    magic, _, number, _ = HEADER.unpack_from((copy / JOURNAL_FILE).read_bytes(), 1000)
    assert (magic, number) == (MAGIC, stale)  # a's put is still there, whole and signed
    with reopened(copy) as again:
        assert present(again, ["a"]) == []
        assert meta(again, key) == value


def test_a_job_whose_request_holds_a_record_never_passes_for_one(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data")
    storage, journal = h.storage, journal_of(h.storage)
    ops: list[Op] = [(storage.tables.number[storage.tables.meta], b"forged", b"yes")]
    payload = record(ops, storage.path.with_name("scratch"))[HEADER.size :]
    # The submit is batch seq + 1 and a filler after the checkpoint seq + 2: the forgery claims
    # seq + 3. Its MAC is wrong, in bytes that keep it UTF-8 (a request is text): its last byte
    # may have to lead the payload's first bytes into one character.
    forgeries = []
    for last in (b"A", b"\xc2", b"\xe1"):
        forged = HEADER.pack(MAGIC, len(payload), journal.seq + 3, b"A" * 15 + last) + payload
        with contextlib.suppress(UnicodeDecodeError):
            forgeries.append((forged, "p" * 100 + forged.decode()))
    forged, request = forgeries[0]
    h.submit("trojan", request=request)
    at = (storage.path / JOURNAL_FILE).read_bytes().find(forged)
    assert 0 < at < journal.end
    storage.checkpoint()
    key, value = filler(storage, at)  # the next record would start where the forgery does
    with reopened(crash_copy(storage.path, tmp_path / "copy")) as copy:
        assert meta(copy, key) == value
        assert meta(copy, b"forged") is None
        trojan = held(copy, ["trojan"])["trojan"]
        assert trojan is not None and trojan.request == request


def test_batches_journaled_while_the_map_grows_survive_a_crash_into_the_small_map(
    tmp_path: Path,
) -> None:
    room = {"map_size": 64 * KiB, "max_map_size": 64 << 20}
    store = Store(tmp_path / "data", None, **room)
    jobs = [f"j{i}" for i in range(150)]
    for job in jobs:
        assert store.submit(job, 8 * KiB)[0] == 201
    assert store.storage.map_size() >= 16 * room["map_size"]  # grew four times or more
    assert journal_of(store.storage).end > room["map_size"]  # more than the first map to redo
    assert present(store.storage, jobs) == jobs
    with reopened(crash_copy(store.path, tmp_path / "copy"), **room) as copy:
        assert present(copy, jobs) == jobs
    assert check(tmp_path / "copy") == (150, [])
