"""Storage formats: rewriting the data an older jobstore stored, in place, when a store opens it.

Format 3 added the lease a job was taken with to a record's prefix and moved lease
deadlines from the wall clock to the store clock; formats 1 (records as CBOR
arrays) and 2 (an 8-byte wall-clock deadline before the record) are upgraded.
Format 4 added the take order's indexes (:mod:`jobstore.store.fairqueue`): an
upgrade puts every queued job in them, in queue order (older records have the
default priority and no due time, so all are due). Format 5 lets a take leave
its job's entry in ``due`` for a later range delete, counted in the client's
``ready`` value: format 4 data reads the same (no count is none), so its upgrade
only records the new format, which keeps an older jobstore from reading it.
Format 6 keeps the twelve tables in three databases instead of one each
(:data:`jobstore.store.keys.PLACES`), so a commit writes fewer pages: the upgrade
copies each table under its key prefix and drops the old databases, in the same
transaction as the steps before it (the storage grows the map for the copy first,
or refuses with the size it needs). Format 7 makes batches durable in a journal
beside the data file (:mod:`jobstore.store.journal`), so the data file alone may
lack the latest ones: its upgrade only records the new format, which keeps an
older jobstore, which would not read the journal, from opening it.
"""

from __future__ import annotations

import time

from .. import records
from ..errors import ConfigError
from . import fairqueue
from ._lmdb_raw import share_databases
from .keys import FORMAT, FORMAT_KEY, dsid_of, timed_key, u64
from .txn import Txn, queue_entry


def upgrade(txn: Txn, wall_now: int | None = None) -> None:
    """Rewrite records stored by an older jobstore in the current format.

    Formats 1 and 2 kept lease deadlines on the wall clock; each moves to the
    store clock with the time it had left at ``wall_now`` (at least 1 ms), and
    its lease becomes the store's default (``lease_ms`` 0).
    """
    found = txn.format()
    if found > FORMAT:
        raise ConfigError(
            f"the data in {txn.storage.path} was written by a newer jobstore (storage format "
            f"{found}, this one reads {FORMAT}): upgrade jobstore"
        )
    if found < 3:
        _rewrite(txn, found, time.time_ns() // 1_000_000 if wall_now is None else wall_now)
    if found < 4:
        _order(txn)
    if found < 6:
        share_databases(txn)
    txn.set_meta(FORMAT_KEY, u64(FORMAT))


def _order(txn: Txn) -> None:
    for key, job_id in list(txn.entries("queue")):
        dsid = dsid_of(key)
        job = txn.get(dsid, job_id.decode())
        if job is None:
            raise RuntimeError(f"queue points at missing job {dsid}/{job_id!r}: run jobstore check")
        fairqueue.queue(txn, queue_entry(job), job.not_before)


def _rewrite(txn: Txn, found: int, wall_now: int) -> None:
    clock = txn.clock()
    for key, value in list(txn.entries("jobs")):
        if found == 1:
            job = records.load_v1(value)
            encoded = records.encode(job)
        else:
            job = records.load_v2(dsid_of(key), value)
            encoded = value[8:]
        if job.lease_until:
            moved = job.evolve(lease_until=clock + max(1, job.lease_until - wall_now))
            txn.delete_raw("leases", timed_key(job.lease_until, key))
            txn.put_raw("leases", timed_key(moved.lease_until, key), b"")
            job = moved
        txn.put_raw("jobs", key, records.dump(job, encoded))
