"""A transaction on the store's data: job records, their indexes and the store-wide counters.

:class:`Txn` speaks records, queues and settings on top of :class:`RawTxn` (bytes, in
:mod:`jobstore.store._lmdb_raw`); the keys are laid out in :mod:`jobstore.store.keys`.

Lease deadlines (``leases`` keys, a record's prefix) are on the store clock
(:class:`jobstore.store.engine.StoreClock`), which wall-clock steps do not move.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import cbor2

from .. import records
from ..records import Job
from ..states import QUEUED, TERMINAL
from . import fairqueue
from ._lmdb_raw import RawTxn
from .keys import (
    CATALOGUE_KEY,
    CLOCK_KEY,
    COUNT_PREFIX,
    FORMAT,
    FORMAT_KEY,
    NO_ENTRIES,
    READY,
    SEQ_KEY,
    STATUS_PREFIX,
    count_key,
    dsid_of,
    entries,
    index_keys,
    name,
    record_key,
    settings_key,
    split_timed,
    status_key,
    time_of,
    topic_key,
)
from .scheduling import Settings, settings_from

if TYPE_CHECKING:
    from ._lmdb_raw import Transaction
    from .journal import Op
    from .storage import Storage


class Txn(RawTxn):
    """Typed access to the databases inside one LMDB transaction."""

    def __init__(
        self,
        storage: Storage,
        txn: Transaction,
        parent: Txn | None = None,
        ops: list[Op] | None = None,
    ) -> None:
        super().__init__(storage, txn, parent, ops)
        # Jobs :meth:`take_next` took out of the take order: their next put need not look there.
        self._taken: set[tuple[str, str]] = set()

    def seq(self) -> int:
        """The last change number used in this store (0 when none)."""
        return self.counter(SEQ_KEY)

    def next_seq(self) -> int:
        seq = self.counter(SEQ_KEY) + 1
        self.set_counter(SEQ_KEY, seq)
        return seq

    def topic_seq(self, topic: str) -> int:
        return self.counter(topic_key(topic))

    def set_topic_seq(self, topic: str, seq: int) -> None:
        self.set_counter(topic_key(topic), seq)

    def format(self) -> int:
        """The storage format of the data: :data:`FORMAT` for a new store."""
        raw = self.meta(FORMAT_KEY)
        if raw is not None:
            return int.from_bytes(raw, "big")
        return 1 if self.records() else FORMAT

    def clock(self) -> int:
        """The store clock's last committed reading, in ms (0 for a new store)."""
        return self.counter(CLOCK_KEY)

    def set_clock(self, value: int) -> None:
        self.set_counter(CLOCK_KEY, value)

    def catalogue_items(self) -> list[Any]:
        raw = self.meta(CATALOGUE_KEY)
        return [] if raw is None else list(cbor2.loads(raw))

    def set_catalogue_items(self, items: list[Any]) -> None:
        self.set_meta(CATALOGUE_KEY, cbor2.dumps(items))

    def get(self, dsid: str, job: str) -> Job | None:
        raw = self.get_raw("jobs", record_key(dsid, job))
        return None if raw is None else self._decoded(dsid, raw)

    def _decoded(self, dsid: str, raw: bytes) -> Job:
        found = self.storage.cache.decoded.get((dsid, raw))
        return found if found is not None else records.load(dsid, raw)

    def put(self, new: Job, old: Job | None, encoded: bytes | None = None) -> None:
        """Store ``new`` (replacing ``old``, the record as read) and move its index entries.

        ``encoded`` is :func:`jobstore.records.encode` of ``new`` when the caller has it.
        """
        self.writes += 1
        # Written out rather than composed from keys' builders (the same layout, from the same
        # prefixes): this runs for every change.
        ds = new.dsid.encode() + b"\0"
        job_id = new.job.encode()
        key = ds + job_id + b"\0"
        was = NO_ENTRIES if old is None else entries(old, ds, key)
        if encoded is None:
            encoded = records.encode(new)
        value = records.dump(new, encoded)
        self._write_record(key, value, job_id, was, entries(new, ds, key))
        self.storage.cache.remember(new.dsid, value, new)
        status = new.status
        if old is not None and old.status in QUEUED:
            taken = self._taken
            if (old.dsid, old.job) in taken:
                taken.discard((old.dsid, old.job))
            else:
                fairqueue.unqueue(self, queue_entry(old), old.not_before)
        if status in QUEUED:
            fairqueue.queue(self, queue_entry(new), new.not_before)
        if old is None or old.status is not status:
            if old is not None:
                self._add(STATUS_PREFIX + ds + old.status.encode() + b"\0", -1)
            self._add(STATUS_PREFIX + ds + status.encode() + b"\0", 1)
            was_active = old is not None and old.status not in TERMINAL
            if was_active != (status not in TERMINAL):
                delta = -1 if was_active else 1
                self._add(COUNT_PREFIX + ds, delta)
                self._add(COUNT_PREFIX + ds + new.client.encode() + b"\0", delta)

    def delete(self, job: Job) -> None:
        """Remove a record and every index entry it owns."""
        if job.status in QUEUED:
            fairqueue.unqueue(self, queue_entry(job), job.not_before)
        for db, key in index_keys(job).items():
            self.delete_raw(db, key)
        self.delete_raw("jobs", record_key(job.dsid, job.job))
        if job.status not in TERMINAL:
            self._add(count_key(job.dsid), -1)
            self._add(count_key(job.dsid, job.client), -1)
        self._add(status_key(job.dsid, job.status.value), -1)

    def by_status(self, dsid: str) -> dict[str, int]:
        """How many jobs of a datasource are in each status (statuses with none left out)."""
        self.flush()
        prefix = STATUS_PREFIX + name(dsid)
        out = {}
        for key, value in self.entries("meta", prefix):
            if count := int.from_bytes(value, "big"):
                out[key[len(prefix) : -1].decode()] = count
        return out

    def datasources(self) -> list[str]:
        """Every datasource that holds jobs or has held them."""
        self.flush()
        names: list[str] = []
        for key, _ in self.entries("meta", STATUS_PREFIX):
            dsid = dsid_of(key[len(STATUS_PREFIX) :])
            if not names or names[-1] != dsid:
                names.append(dsid)
        return names

    def due_heads(self, dsid: str) -> list[Job]:
        """Each client's next due job at each priority: the front of each of a datasource's lines."""
        found = self.entries(READY, fairqueue.line_prefix(dsid))
        return [self._must_get(dsid, entry.job) for entry in fairqueue.heads(dsid, found)]

    def active(self, dsid: str, client: str | None = None) -> int:
        """How many jobs of a datasource (or of one client in it) are not yet terminal."""
        return self.counter(count_key(dsid) if client is None else count_key(dsid, client))

    def ended_before(self, when: int, limit: int) -> list[Job]:
        """Up to ``limit`` terminal jobs that ended before ``when``, oldest first."""
        return self._timed("done", when - 1, limit)

    def _timed(self, db: str, until: int, limit: int) -> list[Job]:
        """Up to ``limit`` records of a ``leases``, ``done`` or ``expiry`` index with a time <= ``until``."""
        out: list[Job] = []
        for key in self._timed_keys(db):
            when, dsid, job = split_timed(key)
            if len(out) == limit or when > until:
                break
            out.append(self._must_get(dsid, job))
        return out

    def queued(self, dsid: str, limit: int) -> list[Job]:
        """Up to ``limit`` submitted/retrying jobs, oldest queued first."""
        out: list[Job] = []
        for _seq, job in self._scan("queue", name(dsid)):
            if len(out) == limit:
                break
            out.append(self._must_get(dsid, job))
        return out

    def changed_since(
        self, dsid: str, client: str | None, since: int
    ) -> Iterator[tuple[int, Job, int]]:
        """(seq, record, bytes of its wire encoding) of a datasource's (or one client's) jobs
        changed after ``since``; the size is the stored encoding's, so listing costs no encoding."""
        prefix = name(dsid) if client is None else name(dsid, client)
        for seq, job in self._scan("changes" if client is None else "clients", prefix, since):
            raw = self.get_raw("jobs", record_key(dsid, job))
            if raw is None:
                _missing(dsid, job)
            yield seq, self._decoded(dsid, raw), len(raw) - records.PREFIX

    def expired(self, now: int, limit: int) -> list[Job]:
        """Accepted jobs whose lease ran out at or before ``now`` (store clock)."""
        return self._timed("leases", now, limit)

    def next_lease(self) -> int | None:
        """The earliest lease deadline (store clock), or None when no job is accepted."""
        found = self.first_raw("leases", b"")
        return None if found is None else time_of(found[0])

    def take_next(self, dsid: str) -> Job | None:
        """The job a take of ``dsid`` gets next, out of the take order (fairqueue)."""
        entry = fairqueue.take(self, dsid)
        if entry is None:
            return None
        self._taken.add((dsid, entry.job))
        return self._must_get(dsid, entry.job)

    def advance(self, now: int, limit: int) -> list[fairqueue.Entry]:
        """Move up to ``limit`` jobs due by ``now`` (wall clock) into the take order."""
        return fairqueue.advance(self, now, limit)

    def next_due(self) -> int | None:
        """The earliest ``not_before`` of a queued job not yet due (wall clock), or None."""
        return fairqueue.next_due(self)

    def delayed(self, dsid: str) -> int:
        return fairqueue.delayed(self, dsid)

    def expiring(self, now: int, limit: int) -> list[Job]:
        """Queued jobs whose ``expires`` is at or before ``now`` (wall clock)."""
        return self._timed("expiry", now, limit)

    def next_expiry(self) -> int | None:
        found = self.first_raw("expiry", b"")
        return None if found is None else time_of(found[0])

    def settings(self, dsid: str) -> Settings:
        """A datasource's queue settings (the defaults until some are set)."""
        raw = self.meta(settings_key(dsid))
        return Settings() if raw is None else settings_from(cbor2.loads(raw))

    def set_settings(self, dsid: str, settings: Settings) -> None:
        self.set_meta(settings_key(dsid), cbor2.dumps(settings.stored()))

    def _must_get(self, dsid: str, job: str) -> Job:
        record = self.get(dsid, job)
        if record is None:
            _missing(dsid, job)
        return record


def _missing(dsid: str, job: str) -> NoReturn:
    raise RuntimeError(f"index points at missing job {dsid}/{job}: run jobstore check")


def queue_entry(job: Job) -> fairqueue.Entry:
    """A queued record as the take order (:mod:`jobstore.store.fairqueue`) sees it."""
    return fairqueue.Entry(job.dsid, job.job, job.client, job.priority, job.seq)
