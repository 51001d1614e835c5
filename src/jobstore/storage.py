"""LMDB persistence: job records, their indexes and the store-wide change sequence.

Layout (names never contain NUL, so NUL separates key parts; seq and times are
8-byte big-endian so keys sort numerically):

=========  ==============================  =====================================
database   key                             value
=========  ==============================  =====================================
jobs       dsid NUL job                    record (:func:`jobstore.records.dump`)
queue      dsid NUL seq                    job id of a submitted/retrying job
clients    dsid NUL client NUL seq         job id, one entry per job at its last change
changes    dsid NUL seq                    job id, one entry per job at its last change
leases     lease_until dsid NUL job        empty: accepted jobs by lease deadline
done       updated dsid NUL job            empty: terminal jobs by when they ended (retention)
meta       b"seq", b"secret", b"t:"topic   change counter, notification secret, last seq per topic,
           b"cat", b"n:"dsid[NUL client]   the hypercat items (a CBOR array), active job counts,
           b"s:"dsid NUL status,           job counts by status, and the storage format (absent
           b"format"                       in format 1, which stored records as CBOR arrays)
=========  ==============================  =====================================

The index entries of a record are a function of the record alone
(:func:`index_keys`), so :meth:`Txn.put` replaces exactly the old record's
entries with the new one's.

The counters in meta (seq, topic seqs, job counts) change with nearly every
request, so a transaction keeps the values it sets in memory and puts each one
once, when the batch commits: a counter costs a dict update per change, not an
LMDB read and write.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cbor2
import lmdb

from . import records
from .errors import ConfigError, StorageFull
from .records import Job
from .states import TERMINAL, Status

log = logging.getLogger(__name__)

SEQ_KEY = b"seq"
SECRET_KEY = b"secret"
CATALOGUE_KEY = b"cat"
FORMAT_KEY = b"format"
FORMAT = 2
DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 34
GROW_AT = 0.8  # grow the map when it is this full
DECODED_CACHE_SIZE = 4096
_U64 = 8


def u64(n: int) -> bytes:
    return n.to_bytes(_U64, "big")


def _name(*parts: str) -> bytes:
    return "\0".join(parts).encode() + b"\0"


def count_key(*parts: str) -> bytes:
    """The meta key of the unfinished-job count of a datasource, or of one client in it."""
    return b"n:" + _name(*parts)


STATUS_PREFIX = b"s:"


def status_key(dsid: str, status: str) -> bytes:
    """The meta key of the count of a datasource's jobs in one status."""
    return STATUS_PREFIX + _name(dsid, status)


INDEXES = ("clients", "changes", "queue", "leases", "done")
EMPTY_VALUED = frozenset({"leases", "done"})
_QUEUED = frozenset({Status.SUBMITTED, Status.RETRYING})
_NO_ENTRIES = (None,) * len(INDEXES)


def _entries(job: Job, ds: bytes, key: bytes) -> tuple[bytes | None, ...]:
    """The index keys a record owns, in :data:`INDEXES` order (None where it has none).

    ``ds`` is ``_name(job.dsid)`` and ``key`` the record's own key, ``_name(job.dsid, job.job)``.
    """
    seq = job.seq.to_bytes(_U64, "big")
    status = job.status
    return (
        ds + job.client.encode() + b"\0" + seq,
        ds + seq,
        ds + seq if status in _QUEUED else None,
        job.lease_until.to_bytes(_U64, "big") + key if job.lease_until else None,
        job.updated.to_bytes(_U64, "big") + key if status in TERMINAL else None,
    )


def index_keys(job: Job) -> dict[str, bytes]:
    """The index entries (database name -> key) a record owns."""
    entries = _entries(job, _name(job.dsid), _name(job.dsid, job.job))
    return {db: key for db, key in zip(INDEXES, entries, strict=True) if key is not None}


class Storage:
    """The LMDB environment of one data directory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        *,
        readonly: bool = False,
    ) -> None:
        """Open the data directory at ``path``; unless ``readonly``, create it (mode 0700) if missing.

        An existing directory keeps its mode (it may be a volume another user owns, such
        as Docker's /database); one that others can read is logged as a warning.
        """
        self.path = Path(path)
        if not readonly:
            self._make_directory()
        self.max_map_size = max(max_map_size, 1 << 16)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=min(map_size, self.max_map_size),
                max_dbs=8,
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
        # (dsid, stored bytes) -> record, for records written lately: a take or a status report
        # reads a record written a batch or two before, and the bytes decide the record, so a
        # hit can never be stale. Cleared when full.
        self.decoded: dict[tuple[str, bytes], Job] = {}
        self.dbs = {
            name: self.env.open_db(name.encode(), create=not readonly)
            for name in ("jobs", "queue", "clients", "changes", "leases", "done", "meta")
        }
        if readonly:
            with self.read() as txn:
                self.secret = txn.meta(SECRET_KEY) or b""
            return
        with self.write() as txn:
            if txn.meta(SECRET_KEY) is None:
                txn.set_meta(SECRET_KEY, secrets.token_bytes(32))
            self.secret = bytes(txn.meta(SECRET_KEY) or b"")
            txn.upgrade()

    def _make_directory(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True)
            return
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(
                f"cannot create the data directory {self.path}: {exc.strerror}; create it, or "
                "choose a --data-dir in a directory this user can write"
            ) from None
        if not self.path.is_dir():
            raise ConfigError(
                f"the data directory {self.path} is a file, not a directory: choose another "
                "--data-dir, or move the file away"
            )
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning(
                "the data directory %s is open to other users (mode %o); jobs may hold private "
                "data: chmod 700 it",
                self.path,
                mode,
            )

    def backup(self, destination: str | os.PathLike[str]) -> None:
        """Write a consistent, compacted copy of the data to a new directory (safe while serving)."""
        Path(destination).mkdir(mode=0o700, parents=True)
        self.env.copy(str(destination), compact=True)

    def close(self) -> None:
        self.env.close()

    def used(self) -> int:
        """Bytes of the map in use (pages up to the last one written)."""
        return int((self.env.info()["last_pgno"] + 1) * self._page_size)

    def fill(self) -> float:
        """How full the map may become, as a fraction of its ceiling (``max_map_size``)."""
        return self.used() / self.max_map_size

    def grow(self) -> float:
        """Double the map (up to the ceiling) once it is GROW_AT full; return :meth:`fill`.

        Call with no transaction open.
        """
        info = self.env.info()
        size, used = int(info["map_size"]), int((info["last_pgno"] + 1) * self._page_size)
        if size < self.max_map_size and used > size * GROW_AT:
            self.env.set_mapsize(min(size * 2, self.max_map_size))
        return used / self.max_map_size

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One write transaction, committed (and fsynced) when the block ends without error."""
        try:
            with self.env.begin(write=True) as txn:
                top = Txn(self, txn)
                yield top
                top.flush()
        except lmdb.MapFullError:
            raise StorageFull(
                "the store's data file is full: purge old jobs or restart with a larger --map-size"
            ) from None

    @contextmanager
    def read(self) -> Iterator[Txn]:
        with self.env.begin() as txn:
            yield Txn(self, txn)


class Txn:
    """Typed access to the databases inside one LMDB transaction."""

    def __init__(self, storage: Storage, txn: lmdb.Transaction, parent: Txn | None = None) -> None:
        self.storage = storage
        self.txn = txn
        self.db = storage.dbs
        self._meta = storage.dbs["meta"]
        self._indexes = [(storage.dbs[db], db not in EMPTY_VALUED) for db in INDEXES]
        self._parent = parent
        # The counters set in the whole write transaction, not yet put (see the module
        # docstring); one dict shared by a transaction and its nested ones.
        self._counters: dict[bytes, int] = {} if parent is None else parent._counters
        # In a nested transaction: each counter's value before it first changed here (None:
        # unset), restored if the nested transaction is abandoned.
        self._undo: dict[bytes, int | None] | None = None if parent is None else {}
        self.writes = 0  # puts and deletes made through this object, so a caller can tell it wrote

    def nested(self) -> Txn:
        """A child transaction, for ``with``: its writes land in this one only if the block succeeds."""
        return Txn(self.storage, self.storage.env.begin(write=True, parent=self.txn), self)

    # A class-based context manager, not @contextmanager: a request opens one each.
    def __enter__(self) -> Txn:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        undo = self._undo or {}
        if kind is not None:
            self.txn.abort()
            for key, value in undo.items():
                if value is None:
                    self._counters.pop(key, None)
                else:
                    self._counters[key] = value
            return
        self.txn.commit()
        outer = self._parent._undo if self._parent is not None else None
        if outer is not None:
            for key, value in undo.items():
                outer.setdefault(key, value)

    def counter(self, key: bytes) -> int:
        """A meta counter's value in this transaction (0 when never set)."""
        value = self._counters.get(key)
        if value is not None:
            return value
        raw = self.txn.get(key, db=self._meta)
        return 0 if raw is None else int.from_bytes(raw, "big")

    def set_counter(self, key: bytes, value: int) -> None:
        self.writes += 1
        undo = self._undo
        if undo is not None and key not in undo:
            undo[key] = self._counters.get(key)
        self._counters[key] = value

    def flush(self) -> None:
        """Put the counters set so far in this write transaction (before a scan, or the commit)."""
        for key, value in self._counters.items():
            self.txn.put(key, u64(value), db=self._meta)

    def meta(self, key: bytes) -> bytes | None:
        value = self.txn.get(key, db=self.db["meta"])
        return None if value is None else bytes(value)

    def set_meta(self, key: bytes, value: bytes) -> None:
        self._put(key, value, "meta")

    def seq(self) -> int:
        """The last change number used in this store (0 when none)."""
        return self.counter(SEQ_KEY)

    def next_seq(self) -> int:
        seq = self.counter(SEQ_KEY) + 1
        self.set_counter(SEQ_KEY, seq)
        return seq

    def topic_seq(self, topic: str) -> int:
        return self.counter(b"t:" + topic.encode())

    def set_topic_seq(self, topic: str, seq: int) -> None:
        self.set_counter(b"t:" + topic.encode(), seq)

    def format(self) -> int:
        """The storage format of the data: :data:`FORMAT` for a new store."""
        raw = self.meta(FORMAT_KEY)
        if raw is not None:
            return int.from_bytes(raw, "big")
        return 1 if self.records() else FORMAT

    def upgrade(self) -> None:
        """Rewrite records stored by an older jobstore in the current format."""
        found = self.format()
        if found > FORMAT:
            raise ConfigError(
                f"the data in {self.storage.path} was written by a newer jobstore (storage format "
                f"{found}, this one reads {FORMAT}): upgrade jobstore"
            )
        if found == 1:
            cursor = self.txn.cursor(db=self.db["jobs"])
            more = cursor.first()
            while more:
                job = records.load_v1(bytes(cursor.value()))
                cursor.put(cursor.key(), records.dump(job, records.encode(job)))
                more = cursor.next()
        self.set_meta(FORMAT_KEY, u64(FORMAT))

    def catalogue_items(self) -> list[Any]:
        raw = self.meta(CATALOGUE_KEY)
        return [] if raw is None else list(cbor2.loads(raw))

    def set_catalogue_items(self, items: list[Any]) -> None:
        self.set_meta(CATALOGUE_KEY, cbor2.dumps(items))

    def get(self, dsid: str, job: str) -> Job | None:
        raw = self.txn.get(_name(dsid, job), db=self.db["jobs"])
        if raw is None:
            return None
        key = (dsid, bytes(raw))
        found = self.storage.decoded.get(key)
        return found if found is not None else records.load(dsid, key[1])

    def put(self, new: Job, old: Job | None, encoded: bytes | None = None) -> None:
        """Store ``new`` (replacing ``old``, the record as read) and move its index entries.

        ``encoded`` is :func:`jobstore.records.encode` of ``new`` when the caller has it.
        """
        self.writes += 1
        # Written out rather than composed from helpers: this runs for every change.
        ds = new.dsid.encode() + b"\0"
        job_id = new.job.encode()
        key = ds + job_id + b"\0"
        txn = self.txn
        was = _NO_ENTRIES if old is None else _entries(old, ds, key)
        now = _entries(new, ds, key)
        for (db, valued), before, after in zip(self._indexes, was, now, strict=True):
            if before != after:
                if before is not None:
                    txn.delete(before, db=db)
                if after is not None:
                    txn.put(after, job_id if valued else b"", db=db)
        if encoded is None:
            encoded = records.encode(new)
        value = records.dump(new, encoded)
        txn.put(key, value, db=self.db["jobs"])
        decoded = self.storage.decoded
        if len(decoded) >= DECODED_CACHE_SIZE:
            decoded.clear()
        decoded[new.dsid, value] = new
        status = new.status
        if old is None or old.status is not status:
            if old is not None:
                self._add(STATUS_PREFIX + ds + old.status.encode() + b"\0", -1)
            self._add(STATUS_PREFIX + ds + status.encode() + b"\0", 1)
            was_active = old is not None and old.status not in TERMINAL
            if was_active != (status not in TERMINAL):
                delta = -1 if was_active else 1
                self._add(b"n:" + ds, delta)
                self._add(b"n:" + ds + new.client.encode() + b"\0", delta)

    def delete(self, job: Job) -> None:
        """Remove a record and every index entry it owns."""
        self.writes += 1
        for db, key in index_keys(job).items():
            self.txn.delete(key, db=self.db[db])
        self.txn.delete(_name(job.dsid, job.job), db=self.db["jobs"])
        if not job.status.terminal:
            self._add(count_key(job.dsid), -1)
            self._add(count_key(job.dsid, job.client), -1)
        self._add(status_key(job.dsid, job.status.value), -1)

    def _add(self, key: bytes, delta: int) -> None:
        self.set_counter(key, self.counter(key) + delta)

    def by_status(self, dsid: str) -> dict[str, int]:
        """How many jobs of a datasource are in each status (statuses with none left out)."""
        self.flush()
        prefix = STATUS_PREFIX + _name(dsid)
        out = {}
        cursor = self.txn.cursor(db=self.db["meta"])
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not bytes(key).startswith(prefix):
                    break
                if count := int.from_bytes(value, "big"):
                    out[bytes(key)[len(prefix) : -1].decode()] = count
        return out

    def datasources(self) -> list[str]:
        """Every datasource that holds jobs or has held them."""
        self.flush()
        names: list[str] = []
        cursor = self.txn.cursor(db=self.db["meta"])
        if cursor.set_range(STATUS_PREFIX):
            for key in cursor.iternext(values=False):
                if not bytes(key).startswith(STATUS_PREFIX):
                    break
                dsid = bytes(key)[len(STATUS_PREFIX) :].split(b"\0", 1)[0].decode()
                if not names or names[-1] != dsid:
                    names.append(dsid)
        return names

    def records(self) -> int:
        """How many job records the store holds."""
        return int(self.txn.stat(self.db["jobs"])["entries"])

    def oldest_queued(self, dsid: str) -> Job | None:
        """The job at the head of a datasource's queue."""
        jobs = self.queued(dsid, 1)
        return jobs[0] if jobs else None

    def active(self, dsid: str, client: str | None = None) -> int:
        """How many jobs of a datasource (or of one client in it) are not yet terminal."""
        return self.counter(count_key(dsid) if client is None else count_key(dsid, client))

    def ended_before(self, when: int, limit: int) -> list[Job]:
        """Up to ``limit`` terminal jobs that ended before ``when``, oldest first."""
        out: list[Job] = []
        cursor = self.txn.cursor(db=self.db["done"])
        if cursor.first():
            for key in cursor.iternext(values=False):
                if len(out) == limit or int.from_bytes(key[:_U64], "big") >= when:
                    break
                dsid, job, _ = bytes(key[_U64:]).decode().split("\0")
                out.append(self._must_get(dsid, job))
        return out

    def _put(self, key: bytes, value: bytes, db: str) -> None:
        self.writes += 1
        self.txn.put(key, value, db=self.db[db])

    def _scan(self, db: str, prefix: bytes, after: int = 0) -> Iterator[tuple[int, str]]:
        """(seq, job id) of the entries under ``prefix`` with seq > ``after``, in seq order."""
        cursor = self.txn.cursor(db=self.db[db])
        if not cursor.set_range(prefix + u64(after + 1)):
            return
        for key, value in cursor:
            if not bytes(key).startswith(prefix):
                return
            yield int.from_bytes(key[len(prefix) :], "big"), bytes(value).decode()

    def queued(self, dsid: str, limit: int) -> list[Job]:
        """Up to ``limit`` submitted/retrying jobs, oldest queued first."""
        out: list[Job] = []
        for _seq, job in self._scan("queue", _name(dsid)):
            if len(out) == limit:
                break
            out.append(self._must_get(dsid, job))
        return out

    def changed_since(self, dsid: str, client: str | None, since: int) -> Iterator[tuple[int, Job]]:
        """(seq, record) of a datasource's (or one client's) jobs changed after ``since``."""
        prefix = _name(dsid) if client is None else _name(dsid, client)
        for seq, job in self._scan("changes" if client is None else "clients", prefix, since):
            yield seq, self._must_get(dsid, job)

    def expired(self, now: int, limit: int) -> list[Job]:
        """Accepted jobs whose lease ran out at or before ``now``."""
        out: list[Job] = []
        cursor = self.txn.cursor(db=self.db["leases"])
        if cursor.first():
            for key in cursor.iternext(values=False):
                if len(out) == limit or int.from_bytes(key[:_U64], "big") > now:
                    break
                dsid, job, _ = bytes(key[_U64:]).decode().split("\0")
                out.append(self._must_get(dsid, job))
        return out

    def next_lease(self) -> int | None:
        """The earliest lease deadline, or None when no job is accepted."""
        cursor = self.txn.cursor(db=self.db["leases"])
        if not cursor.first():
            return None
        return int.from_bytes(cursor.key()[:_U64], "big")

    def _must_get(self, dsid: str, job: str) -> Job:
        record = self.get(dsid, job)
        if record is None:
            raise RuntimeError(f"index points at missing job {dsid}/{job}: run jobstore check")
        return record
