"""LMDB persistence: job records, their indexes and the store-wide change sequence.

The databases and their keys are laid out in :mod:`jobstore.store.keys`; this is the
only module that imports lmdb, and it raises jobstore's own errors (:class:`MapFull`,
:class:`StorageError`) for LMDB's.

Lease deadlines (``leases`` keys, a record's prefix) are on the store clock
(:class:`jobstore.store.engine.StoreClock`), which wall-clock steps do not move. Format 3
added the lease a job was taken with to a record's prefix and moved deadlines from
the wall clock to the store clock; formats 1 and 2 are upgraded in place on open.

The counters in meta (seq, topic seqs, job counts) change with nearly every
request, so a transaction keeps the values it sets in memory and puts each one
once, when the batch commits: a counter costs a dict update per change, not an
LMDB read and write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import cbor2
import lmdb

from .. import records
from ..errors import ConfigError, JobstoreError, StorageFull
from ..records import Job
from ..states import QUEUED, TERMINAL
from . import fairqueue
from .cache import DEFAULT_CACHE_BYTES, RecordCache
from .datadir import DATA_FILE, check_data_file, identity, make_data_dir
from .formats import upgrade
from .keys import (
    CATALOGUE_KEY,
    CLOCK_KEY,
    COUNT_PREFIX,
    DATABASES,
    EMPTY_VALUED,
    FORMAT,
    FORMAT_KEY,
    INDEXES,
    NO_ENTRIES,
    SECRET_KEY,
    SEQ_KEY,
    STATUS_PREFIX,
    U64,
    count_key,
    entries,
    index_keys,
    name,
    record_key,
    settings_key,
    split_timed,
    status_key,
    topic_key,
    u64,
)
from .scheduling import Settings, settings_from

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 34
GROW_AT = 0.8  # grow the map before a batch when its highest page is this far in


class MapFull(StorageFull):
    """The data file is full at its current map size; the engine grows the map and retries."""


class StorageError(JobstoreError):
    """LMDB could not read or write (an I/O error, a damaged page): the batch is not applied."""


def _refuse(exc: lmdb.Error) -> NoReturn:
    """Raise jobstore's error for an LMDB one: the only place a full map becomes StorageFull."""
    if isinstance(exc, lmdb.MapFullError):
        raise MapFull(
            "the store's data file is full even at its ceiling: wait for finished jobs to be "
            "purged, or ask the operator to raise --max-map-size"
        ) from None
    raise StorageError(f"the store could not commit this batch ({exc}); retry the request") from exc


class Storage:
    """The LMDB environment of one data directory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        *,
        readonly: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        """Open the data directory at ``path``; unless ``readonly``, create it (mode 0700) if missing.

        An existing directory keeps its mode (it may be a volume another user owns, such
        as Docker's /database); one that others can read is logged as a warning.
        ``cache_bytes`` bounds the records kept decoded (:class:`RecordCache`).
        """
        self.path = Path(path)
        if not readonly:
            make_data_dir(self.path)
        check_data_file(self.path)
        self.max_map_size = max(max_map_size, 1 << 16)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=min(map_size, self.max_map_size),
                max_dbs=16,
                sync=True,
                metasync=True,
                lock=True,
                readonly=readonly,
            )
        except lmdb.Error as exc:
            reason = str(exc).removeprefix(f"{self.path}: ")  # lmdb names the path too
            raise ConfigError(
                f"cannot open the data directory {self.path}: {reason}; it must be a directory "
                "this user can read and write"
            ) from None
        self._page_size = int(self.env.stat()["psize"])
        # What the directory and its data file were when opened, to notice them replaced.
        self._identity = (identity(self.path), identity(self.path / DATA_FILE))
        self.cache = RecordCache(cache_bytes)
        self.dbs = {}
        for db in DATABASES:
            # Read-only on data an older jobstore wrote, a newer database is missing: its upgrade
            # adds it, and a read-only store never writes.
            with contextlib.suppress(lmdb.NotFoundError):
                self.dbs[db] = self.env.open_db(db.encode(), create=not readonly)
        if readonly:
            with self.read() as txn:
                self.secret = txn.meta(SECRET_KEY) or b""
            return
        with self.write() as txn:
            if txn.meta(SECRET_KEY) is None:
                txn.set_meta(SECRET_KEY, secrets.token_bytes(32))
            self.secret = bytes(txn.meta(SECRET_KEY) or b"")
            upgrade(txn)

    def backup(self, destination: str | os.PathLike[str]) -> None:
        """Write a consistent, compacted copy of the data to a new directory (safe while serving)."""
        Path(destination).mkdir(mode=0o700, parents=True)
        self.env.copy(str(destination), compact=True)

    def close(self) -> None:
        self.env.close()

    def used(self) -> int:
        """Bytes of the data in use: pages of every database, not the free ones.

        LMDB reuses freed pages but never shrinks the file, so its highest page
        (``last_pgno``) only grows. The pages in use are the branch, leaf and
        overflow pages of each database (``txn.stat``, read from the database
        record: no scan), the main database's, and the two meta pages; the free
        list's own few pages are left out.
        """
        with self.env.begin() as txn:
            pages = 2 + sum(
                int(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"])
                for s in (self.env.stat(), *(txn.stat(db) for db in self.dbs.values()))
            )
        return pages * self._page_size

    def fill(self) -> float:
        """How much of the map's ceiling (``max_map_size``) the data uses, from 0 to 1."""
        return self.used() / self.max_map_size

    def grow(self) -> float:
        """Double the map (up to the ceiling) once its highest page is GROW_AT in; return
        :meth:`fill`. Call with no transaction open."""
        info = self.env.info()
        size, end = int(info["map_size"]), int((info["last_pgno"] + 1) * self._page_size)
        if size < self.max_map_size and end > size * GROW_AT:
            self.env.set_mapsize(min(size * 2, self.max_map_size))
        return self.fill()

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def at_ceiling(self) -> bool:
        return self.map_size() >= self.max_map_size

    def enlarge(self) -> bool:
        """Double the map (up to the ceiling) after a batch found it full: False when it is
        at the ceiling already. Call with no transaction open."""
        if self.at_ceiling():
            return False
        self.env.set_mapsize(min(self.map_size() * 2, self.max_map_size))
        return True

    def misplaced(self) -> str | None:
        """Why the data directory or its data file is no longer the one opened, or None.

        A directory deleted or replaced under a running store leaves it writing to
        a file nobody will read again. Two stat calls: cheap, but not for every request.
        """
        try:
            now = (identity(self.path), identity(self.path / DATA_FILE))
        except OSError as exc:
            return f"{exc.filename} is gone ({exc.strerror})"
        if now != self._identity:
            return f"{self.path} or its {DATA_FILE} was replaced by another file"
        return None

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One write transaction, committed (and fsynced) when the block ends without error.

        LMDB's errors leave as :class:`MapFull` or :class:`StorageError`.
        """
        try:
            with self.env.begin(write=True) as txn:
                top = Txn(self, txn)
                yield top
                top.flush()
        except lmdb.Error as exc:
            _refuse(exc)

    @contextmanager
    def read(self) -> Iterator[Txn]:
        with self.env.begin() as txn:
            yield Txn(self, txn)


class Txn:
    """Typed access to the databases inside one LMDB transaction."""

    def __init__(self, storage: Storage, txn: lmdb.Transaction, parent: Txn | None = None) -> None:
        self.storage = storage
        self._lmdb = txn
        self._dbs = storage.dbs
        self._meta = storage.dbs["meta"]
        # Only a store opened read-only on older data lacks some: it never writes.
        self._indexes = [
            (storage.dbs[db], db not in EMPTY_VALUED) for db in INDEXES if db in storage.dbs
        ]
        self._parent = parent
        # The counters set in the whole write transaction, not yet put (see the module
        # docstring); one dict shared by a transaction and its nested ones.
        self._counters: dict[bytes, int] = {} if parent is None else parent._counters
        # In a nested transaction: each counter's value before it first changed here (None:
        # unset), restored if the nested transaction is abandoned.
        self._undo: dict[bytes, int | None] | None = None if parent is None else {}
        self.writes = 0  # puts and deletes made through this object, so a caller can tell it wrote
        self._cursors: dict[str, lmdb.Cursor] = {}
        # Jobs :meth:`take_next` took out of the take order: their next put need not look there.
        self._taken: set[tuple[str, str]] = set()

    def nested(self) -> Txn:
        """A child transaction, for ``with``: its writes land in this one only if the block succeeds."""
        try:
            child = self.storage.env.begin(write=True, parent=self._lmdb)
        except lmdb.Error as exc:
            _refuse(exc)
        return Txn(self.storage, child, self)

    # A class-based context manager, not @contextmanager: a request opens one each.
    def __enter__(self) -> Txn:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        undo = self._undo or {}
        if kind is not None:
            self._lmdb.abort()
            for key, value in undo.items():
                if value is None:
                    self._counters.pop(key, None)
                else:
                    self._counters[key] = value
            return
        try:
            self._lmdb.commit()
        except lmdb.Error as exc:
            _refuse(exc)
        outer = self._parent._undo if self._parent is not None else None
        if outer is not None:
            for key, value in undo.items():
                outer.setdefault(key, value)

    def counter(self, key: bytes) -> int:
        """A meta counter's value in this transaction (0 when never set)."""
        value = self._counters.get(key)
        if value is not None:
            return value
        raw = self._lmdb.get(key, db=self._meta)
        return 0 if raw is None else int.from_bytes(raw, "big")

    def set_counter(self, key: bytes, value: int) -> None:
        self.writes += 1
        undo = self._undo
        if undo is not None and key not in undo:
            undo[key] = self._counters.get(key)
        self._counters[key] = value

    def flush(self) -> None:
        """Put the counters set so far in this write transaction (before a scan, or the commit)."""
        try:
            for key, value in self._counters.items():
                self._lmdb.put(key, u64(value), db=self._meta)
        except lmdb.Error as exc:
            _refuse(exc)

    def meta(self, key: bytes) -> bytes | None:
        value = self._lmdb.get(key, db=self._meta)
        return None if value is None else bytes(value)

    def set_meta(self, key: bytes, value: bytes) -> None:
        self.put_raw("meta", key, value)

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
        raw = self._lmdb.get(record_key(dsid, job), db=self._dbs["jobs"])
        if raw is None:
            return None
        key = (dsid, bytes(raw))
        found = self.storage.cache.decoded.get(key)
        return found if found is not None else records.load(dsid, key[1])

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
        txn = self._lmdb
        was = NO_ENTRIES if old is None else entries(old, ds, key)
        now = entries(new, ds, key)
        if encoded is None:
            encoded = records.encode(new)
        value = records.dump(new, encoded)
        try:
            for (db, valued), before, after in zip(self._indexes, was, now, strict=True):
                if before != after:
                    if before is not None:
                        txn.delete(before, db=db)
                    if after is not None:
                        txn.put(after, job_id if valued else b"", db=db)
            txn.put(key, value, db=self._dbs["jobs"])
        except lmdb.Error as exc:
            _refuse(exc)
        self.storage.cache.remember(new.dsid, value, new)
        status = new.status
        if old is not None and old.status in QUEUED:
            taken = self._taken
            if (old.dsid, old.job) in taken:
                taken.discard((old.dsid, old.job))
            else:
                fairqueue.unqueue(self, _entry(old), old.not_before)
        if status in QUEUED:
            fairqueue.queue(self, _entry(new), new.not_before)
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
            fairqueue.unqueue(self, _entry(job), job.not_before)
        for db, key in index_keys(job).items():
            self.delete_raw(db, key)
        self.delete_raw("jobs", record_key(job.dsid, job.job))
        if not job.status.terminal:
            self._add(count_key(job.dsid), -1)
            self._add(count_key(job.dsid, job.client), -1)
        self._add(status_key(job.dsid, job.status.value), -1)

    def _add(self, key: bytes, delta: int) -> None:
        self.set_counter(key, self.counter(key) + delta)

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
            dsid = key[len(STATUS_PREFIX) :].split(b"\0", 1)[0].decode()
            if not names or names[-1] != dsid:
                names.append(dsid)
        return names

    def records(self) -> int:
        """How many job records the store holds."""
        return int(self._lmdb.stat(self._dbs["jobs"])["entries"])

    def due_heads(self, dsid: str) -> list[Job]:
        """Each client's next due job at each priority: the front of each of a datasource's lines."""
        found = self.entries(fairqueue.READY, fairqueue.line_prefix(dsid))
        return [self._must_get(dsid, entry.job) for entry in fairqueue.heads(dsid, found)]

    def active(self, dsid: str, client: str | None = None) -> int:
        """How many jobs of a datasource (or of one client in it) are not yet terminal."""
        return self.counter(count_key(dsid) if client is None else count_key(dsid, client))

    def ended_before(self, when: int, limit: int) -> list[Job]:
        """Up to ``limit`` terminal jobs that ended before ``when``, oldest first."""
        return self._timed("done", when - 1, limit)

    def _timed(self, db: str, until: int, limit: int) -> list[Job]:
        """Up to ``limit`` records of a ``leases`` or ``done`` index with a time <= ``until``."""
        out: list[Job] = []
        cursor = self._lmdb.cursor(db=self._dbs[db])
        if cursor.first():
            for key in cursor.iternext(values=False):
                when, dsid, job = split_timed(bytes(key))
                if len(out) == limit or when > until:
                    break
                out.append(self._must_get(dsid, job))
        return out

    def entries(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of a database's entries whose key starts with ``prefix``, in key order."""
        cursor = self._lmdb.cursor(db=self._dbs[db])
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            key = bytes(key)
            if not key.startswith(prefix):
                return
            yield key, bytes(value)

    def put_raw(self, db: str, key: bytes, value: bytes) -> None:
        """Put one entry as is (format upgrades, and tests that fabricate old data)."""
        self.writes += 1
        try:
            self._lmdb.put(key, value, db=self._dbs[db])
        except lmdb.Error as exc:
            _refuse(exc)

    def delete_raw(self, db: str, key: bytes) -> bool:
        """Delete one entry; False when there was none."""
        self.writes += 1
        try:
            return bool(self._lmdb.delete(key, db=self._dbs[db]))
        except lmdb.Error as exc:
            _refuse(exc)

    def get_raw(self, db: str, key: bytes) -> bytes | None:
        value = self._lmdb.get(key, db=self._dbs[db])
        return None if value is None else bytes(value)

    def first_raw(self, db: str, prefix: bytes, start: bytes = b"") -> tuple[bytes, bytes] | None:
        """The first entry of a database whose key starts with ``prefix`` (and is not below ``start``)."""
        cursor = self._cursors.get(db)
        if cursor is None:  # one per database and transaction: a take looks up several times
            cursor = self._cursors[db] = self._lmdb.cursor(db=self._dbs[db])
        if not cursor.set_range(max(prefix, start)):
            return None
        key = bytes(cursor.key())
        return (key, bytes(cursor.value())) if key.startswith(prefix) else None

    def delete_first(self, db: str, prefix: bytes, count: int) -> None:
        """Delete the ``count`` lowest entries whose key starts with ``prefix`` (fewer if fewer)."""
        self.writes += 1
        cursor = self._lmdb.cursor(db=self._dbs[db])
        try:
            found = count > 0 and cursor.set_range(prefix)
            for _ in range(count):
                if not found or not bytes(cursor.key()).startswith(prefix):
                    break
                found = cursor.delete()
        except lmdb.Error as exc:
            _refuse(exc)

    def _scan(self, db: str, prefix: bytes, after: int = 0) -> Iterator[tuple[int, str]]:
        """(seq, job id) of the entries under ``prefix`` with seq > ``after``, in seq order."""
        cursor = self._lmdb.cursor(db=self._dbs[db])
        if not cursor.set_range(prefix + u64(after + 1)):
            return
        for key, value in cursor:
            if not bytes(key).startswith(prefix):
                return
            yield int.from_bytes(key[len(prefix) :], "big"), bytes(value).decode()

    def queued(self, dsid: str, limit: int) -> list[Job]:
        """Up to ``limit`` submitted/retrying jobs, oldest queued first."""
        out: list[Job] = []
        for _seq, job in self._scan("queue", name(dsid)):
            if len(out) == limit:
                break
            out.append(self._must_get(dsid, job))
        return out

    def changed_since(self, dsid: str, client: str | None, since: int) -> Iterator[tuple[int, Job]]:
        """(seq, record) of a datasource's (or one client's) jobs changed after ``since``."""
        prefix = name(dsid) if client is None else name(dsid, client)
        for seq, job in self._scan("changes" if client is None else "clients", prefix, since):
            yield seq, self._must_get(dsid, job)

    def expired(self, now: int, limit: int) -> list[Job]:
        """Accepted jobs whose lease ran out at or before ``now`` (store clock)."""
        return self._timed("leases", now, limit)

    def next_lease(self) -> int | None:
        """The earliest lease deadline (store clock), or None when no job is accepted."""
        found = self.first_raw("leases", b"")
        return None if found is None else int.from_bytes(found[0][:U64], "big")

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
        return None if found is None else int.from_bytes(found[0][:U64], "big")

    def settings(self, dsid: str) -> Settings:
        """A datasource's queue settings (the defaults until some are set)."""
        raw = self.meta(settings_key(dsid))
        return Settings() if raw is None else settings_from(cbor2.loads(raw))

    def set_settings(self, dsid: str, settings: Settings) -> None:
        self.set_meta(settings_key(dsid), cbor2.dumps(settings.stored()))

    def _must_get(self, dsid: str, job: str) -> Job:
        record = self.get(dsid, job)
        if record is None:
            raise RuntimeError(f"index points at missing job {dsid}/{job}: run jobstore check")
        return record


def _entry(job: Job) -> fairqueue.Entry:
    return fairqueue.Entry(job.dsid, job.job, job.client, job.priority, job.seq)
