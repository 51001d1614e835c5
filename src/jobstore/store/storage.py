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
           b"s:"dsid NUL status,           job counts by status, the storage format (absent in
           b"format", b"clock"             format 1, which stored records as CBOR arrays), and the
                                           store clock's last committed reading (ms)
=========  ==============================  =====================================

Lease deadlines (``leases`` keys, a record's prefix) are on the store clock
(:class:`jobstore.store.engine.StoreClock`), which wall-clock steps do not move. Format 3
added the lease a job was taken with to a record's prefix and moved deadlines from
the wall clock to the store clock; formats 1 and 2 are upgraded in place on open.

The index entries of a record are a function of the record alone
(:func:`index_keys`), so :meth:`Txn.put` replaces exactly the old record's
entries with the new one's.

The counters in meta (seq, topic seqs, job counts) change with nearly every
request, so a transaction keeps the values it sets in memory and puts each one
once, when the batch commits: a counter costs a dict update per change, not an
LMDB read and write.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import cbor2
import lmdb

from .. import records
from ..errors import ConfigError, StorageFull
from ..records import Job
from ..states import TERMINAL, Status

log = logging.getLogger(__name__)

SEQ_KEY = b"seq"
SECRET_KEY = b"secret"
CATALOGUE_KEY = b"cat"
FORMAT_KEY = b"format"
CLOCK_KEY = b"clock"
FORMAT = 3
DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 34
GROW_AT = 0.8  # grow the map before a batch when its highest page is this far in
DEFAULT_CACHE_BYTES = 32 << 20
CACHE_RECORD_MAX = 16 << 10  # larger records are not kept decoded: they would crowd out the rest
LOCK_FILE = "jobstore.lock"
DATA_FILE = "data.mdb"
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


def _committed_end(data: bytes) -> tuple[int, int] | None:
    """(bytes the last committed transaction needs, page size) from the head of a data.mdb.

    LMDB keeps two meta pages (pages 0 and 1); the one with the higher txnid is
    current. Each starts, after the page header, with an MDB_meta: magic,
    version, address, map size, two MDB_db records (the free one's pad field is
    the page size), mm_last_pg, mm_txnid. Fields are native size and order.
    None when the head holds no valid meta page.
    """
    word = struct.calcsize("P")  # pgno_t, size_t and pointers
    header = word + 8  # MDB_page: pgno, pad, flags, lower/upper
    db = 8 + 5 * word  # MDB_db: pad, flags, depth, three page counts, entries, root
    last_at = 8 + 2 * word + 2 * db
    number = "Q" if word == 8 else "I"
    metas: list[tuple[int, int, int]] = []  # txnid, last page, page size
    start = header
    for _page in (0, 1):
        if len(data) < start + last_at + 2 * word:
            break
        magic, _version = struct.unpack_from("=II", data, start)
        if magic != 0xBEEFC0DE:
            break
        (psize,) = struct.unpack_from("=I", data, start + 8 + 2 * word)
        last, txnid = struct.unpack_from(f"={number}{number}", data, start + last_at)
        metas.append((txnid, last, psize))
        start = psize + header  # page 1 starts one page in
    if not metas:
        return None
    _txnid, last, psize = max(metas)
    return (last + 1) * psize, psize


def check_data_file(path: Path) -> None:
    """Refuse a data.mdb shorter than its last commit says, before LMDB maps it.

    A truncated file would be mapped without complaint, and the first read past
    its end kills the process with SIGBUS.
    """
    file = path / DATA_FILE
    try:
        with file.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(1 << 17)  # both meta pages, for any page size up to 64 KiB
    except FileNotFoundError:
        return
    if size == 0:
        return  # created but never written: LMDB initialises it
    restore = (
        "restore the data directory from a copy made with `jobstore backup` (or another good "
        "copy) and serve from that"
    )
    found = _committed_end(head)
    if found is None:
        raise ConfigError(f"{file} is not an LMDB data file (no valid meta page): {restore}")
    need, _psize = found
    if size < need:
        raise ConfigError(
            f"{file} is truncated: it holds {size} bytes but its last commit needs {need}; "
            f"reading it would crash. It was cut short (a full disk, an interrupted copy): {restore}"
        )


def make_data_dir(path: Path) -> None:
    """Create the data directory (mode 0700); an existing one keeps its mode, with a warning if open."""
    try:
        path.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"cannot create the data directory {path}: {exc.strerror}; create it, or "
            "choose a --data-dir in a directory this user can write"
        ) from None
    if not path.is_dir():
        raise ConfigError(
            f"the data directory {path} is a file, not a directory: choose another "
            "--data-dir, or move the file away"
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "the data directory %s is open to other users (mode %o); jobs may hold private "
            "data: chmod 700 it",
            path,
            mode,
        )


class DataDirLock:
    """An exclusive lock on a data directory for one serving process (``DIR/jobstore.lock``).

    The file names the holder (pid and endpoints), so a second store can say
    who is serving. ``jobstore check`` and ``backup`` do not take it.
    """

    def __init__(self, path: str | os.PathLike[str], holder: str) -> None:
        directory = Path(path)
        self.path = directory / LOCK_FILE
        if not directory.is_dir():
            make_data_dir(directory)
        try:
            self._file: IO[str] = self.path.open("a+")
        except OSError as exc:
            raise ConfigError(
                f"cannot open the data directory {directory}: cannot write {self.path} "
                f"({exc.strerror}); it must be a directory this user can read and write"
            ) from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            other = self._file.read().strip() or "one still starting up"
            self._file.close()
            raise ConfigError(
                f"another jobstore is serving {directory} ({other}): stop it first, or give this "
                "one another --data-dir (LMDB allows many readers but one store per directory)"
            ) from None
        self._file.truncate(0)
        self._file.write(holder + "\n")
        self._file.flush()

    def release(self) -> None:
        self._file.close()  # closing drops the lock; the file stays, naming the last holder


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


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
        ``cache_bytes`` bounds the records kept decoded (see :meth:`remember`).
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
        # What the directory and its data file were when opened, to notice them replaced.
        self._identity = (_identity(self.path), _identity(self.path / DATA_FILE))
        # (dsid, stored bytes) -> record, for records written lately: a take or a status report
        # reads a record written a batch or two before, and the bytes decide the record, so a
        # hit can never be stale. Bounded in bytes (decoded_bytes); cleared when full.
        self.decoded: dict[tuple[str, bytes], Job] = {}
        self.cache_bytes = cache_bytes
        self.decoded_bytes = 0
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

    def backup(self, destination: str | os.PathLike[str]) -> None:
        """Write a consistent, compacted copy of the data to a new directory (safe while serving)."""
        Path(destination).mkdir(mode=0o700, parents=True)
        self.env.copy(str(destination), compact=True)

    def close(self) -> None:
        self.env.close()

    @staticmethod
    def cost(dsid: str, value: bytes) -> int:
        """What a decoded-cache entry is charged: its stored bytes (the key) and as much again
        for the decoded record, plus the dict entry and tuples."""
        return 2 * len(value) + len(dsid) + 200

    def remember(self, dsid: str, value: bytes, job: Job) -> None:
        """Keep ``job`` decoded under its stored bytes, within ``cache_bytes``.

        Records over CACHE_RECORD_MAX are skipped: they are cheap to decode next to
        the room they would take, and a few of them would evict every small one.
        """
        if len(value) > CACHE_RECORD_MAX:
            return
        key = (dsid, value)
        if key in self.decoded:
            return
        cost = self.cost(dsid, value)
        if self.decoded_bytes + cost > self.cache_bytes:
            self.decoded.clear()
            self.decoded_bytes = 0
            if cost > self.cache_bytes:
                return
        self.decoded[key] = job
        self.decoded_bytes += cost

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
            now = (_identity(self.path), _identity(self.path / DATA_FILE))
        except OSError as exc:
            return f"{exc.filename} is gone ({exc.strerror})"
        if now != self._identity:
            return f"{self.path} or its {DATA_FILE} was replaced by another file"
        return None

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
                "the store's data file is full: wait for finished jobs to be purged, or ask the "
                "operator to restart the store with a larger --max-map-size"
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

    def clock(self) -> int:
        """The store clock's last committed reading, in ms (0 for a new store)."""
        return self.counter(CLOCK_KEY)

    def set_clock(self, value: int) -> None:
        self.set_counter(CLOCK_KEY, value)

    def upgrade(self, wall_now: int | None = None) -> None:
        """Rewrite records stored by an older jobstore in the current format.

        Formats 1 and 2 kept lease deadlines on the wall clock; each moves to the
        store clock with the time it had left at ``wall_now`` (at least 1 ms), and
        its lease becomes the store's default (``lease_ms`` 0).
        """
        found = self.format()
        if found > FORMAT:
            raise ConfigError(
                f"the data in {self.storage.path} was written by a newer jobstore (storage format "
                f"{found}, this one reads {FORMAT}): upgrade jobstore"
            )
        if found < FORMAT:
            self._rewrite(found, time.time_ns() // 1_000_000 if wall_now is None else wall_now)
        self.set_meta(FORMAT_KEY, u64(FORMAT))

    def _rewrite(self, found: int, wall_now: int) -> None:
        clock, leases = self.clock(), self.db["leases"]
        cursor = self.txn.cursor(db=self.db["jobs"])
        more = cursor.first()
        while more:
            key, value = bytes(cursor.key()), bytes(cursor.value())
            if found == 1:
                job = records.load_v1(value)
                encoded = records.encode(job)
            else:
                job = records.load_v2(key.split(b"\0", 1)[0].decode(), value)
                encoded = value[8:]
            if job.lease_until:
                moved = job.evolve(lease_until=clock + max(1, job.lease_until - wall_now))
                self.txn.delete(u64(job.lease_until) + key, db=leases)
                self.txn.put(u64(moved.lease_until) + key, b"", db=leases)
                job = moved
            cursor.put(key, records.dump(job, encoded))
            more = cursor.next()

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
        self.storage.remember(new.dsid, value, new)
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
        """Accepted jobs whose lease ran out at or before ``now`` (store clock)."""
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
        """The earliest lease deadline (store clock), or None when no job is accepted."""
        cursor = self.txn.cursor(db=self.db["leases"])
        if not cursor.first():
            return None
        return int.from_bytes(cursor.key()[:_U64], "big")

    def _must_get(self, dsid: str, job: str) -> Job:
        record = self.get(dsid, job)
        if record is None:
            raise RuntimeError(f"index points at missing job {dsid}/{job}: run jobstore check")
        return record
