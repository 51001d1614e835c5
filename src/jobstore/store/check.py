"""``jobstore check``: verify a data directory's records, indexes and counters agree."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cbor2

from .. import records
from ..errors import ConfigError
from ..protocol import zest
from ..states import QUEUED
from . import fairqueue
from .datadir import DATA_FILE
from .keys import (
    COUNT_PREFIX,
    DELAYED_PREFIX,
    EMPTY_VALUED,
    FORMAT,
    INDEXES,
    META_PREFIXES,
    ORDER_INDEXES,
    SEQ_KEY,
    SHARED_FORMAT,
    STATUS_PREFIX,
    TOPIC_PREFIX,
    WATERMARK_KEY,
    count_key,
    dsid_of,
    index_keys,
    record_key,
    status_key,
)
from .storage import Storage, Txn
from .txn import queue_entry

CHECKED_FORMATS = tuple(range(SHARED_FORMAT - 1, FORMAT + 1))


def check(path: str | Path) -> tuple[int, list[str]]:
    """Return (records checked, problems found); an empty problem list means the directory is sound."""
    if not (Path(path) / DATA_FILE).exists():
        raise ConfigError(f"no jobstore data in {path}: expected {Path(path) / DATA_FILE}")
    storage = Storage(path, readonly=True)
    try:
        with storage.read() as txn:
            # Format 5 differs from 6 only in where the tables are, which the storage reads,
            # and 7 from 6 only in its journal: a check reads the data file's last checkpoint.
            if txn.format() not in CHECKED_FORMATS:
                raise ConfigError(
                    f"the data in {path} is in storage format {txn.format()}, and this jobstore "
                    f"checks formats {CHECKED_FORMATS[0]} to {FORMAT}: run `jobstore serve` on "
                    "it once to upgrade it, then check again"
                )
            return _check(txn)
    finally:
        storage.close()


def journaled(path: str | Path) -> int:
    """How many batches the journal in ``path`` holds past the data file's checkpoint: what
    :func:`check`, which reads the data file, does not see (a store redoes them when it opens)."""
    storage = Storage(path, readonly=True)
    try:
        return storage.pending()
    finally:
        storage.close()


def _unencodable(job: records.Job) -> list[str]:
    """Why the store could not send ``job`` back, on each codec it cannot (an older version
    stored values, such as NaN, that are refused at write today)."""
    wire, found = job.wire(), []
    for codec, encode in (("CBOR", cbor2.dumps), ("JSON", zest.encode_json)):
        try:
            encode(wire)
        except Exception as exc:
            found.append(
                f"job {job.dsid}/{job.job} cannot be sent as {codec} ({exc}): every read of it "
                "in that format gets 500; cancel or finish it, or let retention purge it"
            )
    return found


def _check(txn: Txn) -> tuple[int, list[str]]:
    problems: list[str] = []
    counter = txn.seq()
    expected: dict[str, dict[bytes, bytes]] = {db: {} for db in INDEXES}
    seqs: Counter[int] = Counter()
    active: Counter[bytes] = Counter()
    queued: list[tuple[fairqueue.Entry, int | None]] = []
    count = 0
    for key, value in txn.entries("jobs"):
        count += 1
        try:
            job = records.load(dsid_of(key), value)
        except Exception as exc:
            problems.append(f"record {key!r} does not decode: {exc}")
            continue
        if key != record_key(job.dsid, job.job):
            problems.append(
                f"record {key!r} is stored under the wrong key for {job.dsid}/{job.job}"
            )
        problems += _unencodable(job)
        seqs[job.seq] += 1
        if job.seq > counter:
            problems.append(
                f"job {job.dsid}/{job.job} has seq {job.seq} above the store counter {counter}"
            )
        if not job.status.terminal:
            active[count_key(job.dsid)] += 1
            active[count_key(job.dsid, job.client)] += 1
        active[status_key(job.dsid, job.status.value)] += 1
        for db, index_key in index_keys(job).items():
            expected[db][index_key] = b"" if db in EMPTY_VALUED else job.job.encode()
        if job.status in QUEUED:
            queued.append((queue_entry(job), job.not_before))
    problems += [f"seq {seq} is used by {n} records" for seq, n in seqs.items() if n > 1]
    for db, wanted in expected.items():
        found = dict(txn.entries(db))
        for index_key, value in wanted.items():
            if found.get(index_key) != value:
                problems.append(f"{db} index lacks the entry {index_key!r} of its record")
        problems += [
            f"{db} index entry {k!r} points at no record that owns it"
            for k in found.keys() - wanted.keys()
        ]
    meta = [entry for prefix in META_PREFIXES for entry in txn.entries("meta", prefix)]
    for key, value in meta:
        if key.startswith((COUNT_PREFIX, STATUS_PREFIX)) and int.from_bytes(
            value, "big"
        ) != active.pop(key, 0):
            problems.append(
                f"job count {key!r} is {int.from_bytes(value, 'big')}, records say otherwise"
            )
        elif key.startswith(TOPIC_PREFIX) and int.from_bytes(value, "big") > counter:
            problems.append(
                f"topic {key[len(TOPIC_PREFIX) :]!r} claims seq {int.from_bytes(value, 'big')} above the counter"
            )
    problems += [f"job count {key!r} is missing ({n} jobs)" for key, n in active.items() if n]
    order = {db: dict(txn.entries(db)) for db in ORDER_INDEXES}
    counters = {
        key: int.from_bytes(value, "big")
        for key, value in meta
        if key.startswith(DELAYED_PREFIX) or key == WATERMARK_KEY
    }
    problems += fairqueue.audit(order, counters, queued)
    if txn.meta(SEQ_KEY) is None and count:
        problems.append("records exist but the seq counter is missing")
    return count, problems
