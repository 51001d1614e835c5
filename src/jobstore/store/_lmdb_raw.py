"""Raw LMDB access under :mod:`jobstore.store.storage`: the one module that imports lmdb.

It opens the environment and its databases, runs transactions (nested ones too),
keeps the meta counters a transaction sets in memory until it commits, and turns
LMDB's errors into jobstore's (:class:`MapFull`, :class:`StorageError`) in one
place, :func:`refuse`. What the keys and values mean is for
:mod:`jobstore.store.keys` and :class:`jobstore.store.txn.Txn`, built on this.

The counters in meta (seq, topic seqs, job counts) change with nearly every
request, so a transaction keeps the values it sets in memory and puts each one
once, when the batch commits: a counter costs a dict update per change, not an
LMDB read and write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Self

import lmdb

from ..errors import ConfigError, JobstoreError, StorageFull
from .keys import DATABASES, EMPTY_VALUED, INDEXES, u64

if TYPE_CHECKING:
    from .storage import Storage

Transaction = lmdb.Transaction
Database = lmdb._Database


class MapFull(StorageFull):
    """The data file is full at its current map size; the engine grows the map and retries."""


class StorageError(JobstoreError):
    """LMDB could not read or write (an I/O error, a damaged page): the batch is not applied."""


def refuse_new_jobs() -> NoReturn:
    """Refuse a new job because the data in use has reached ``Limits.full_at`` of the ceiling."""
    raise StorageFull(
        "the store is full: new jobs are refused until old ones are purged (cancels, status "
        "reports and reads still work); ask the operator to raise --max-map-size"
    )


def refuse(exc: lmdb.Error) -> NoReturn:
    """Raise jobstore's error for an LMDB one: with :func:`refuse_new_jobs`, the only places
    the store runs out of room (StorageFull)."""
    if isinstance(exc, lmdb.MapFullError):
        raise MapFull(
            "the store's data file is full even at its ceiling: wait for finished jobs to be "
            "purged, or ask the operator to raise --max-map-size"
        ) from None
    raise StorageError(f"the store could not commit this batch ({exc}); retry the request") from exc


@contextmanager
def refusing() -> Iterator[None]:
    """LMDB's errors raised in the block leave as jobstore's (:func:`refuse`)."""
    try:
        yield
    except lmdb.Error as exc:
        refuse(exc)


def open_environment(
    path: Path, map_size: int, readonly: bool
) -> tuple[lmdb.Environment, dict[str, Database]]:
    """The LMDB environment of a data directory and its named databases."""
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=16,
            sync=True,
            metasync=True,
            lock=True,
            readonly=readonly,
        )
    except lmdb.Error as exc:
        reason = str(exc).removeprefix(f"{path}: ")  # lmdb names the path too
        raise ConfigError(
            f"cannot open the data directory {path}: {reason}; it must be a directory "
            "this user can read and write"
        ) from None
    dbs = {}
    for db in DATABASES:
        # Read-only on data an older jobstore wrote, a newer database is missing: its upgrade
        # adds it, and a read-only store never writes.
        with contextlib.suppress(lmdb.NotFoundError):
            dbs[db] = env.open_db(db.encode(), create=not readonly)
    return env, dbs


class RawTxn:
    """One LMDB transaction: entries as bytes, and the meta counters it keeps in memory."""

    def __init__(self, storage: Storage, txn: Transaction, parent: Self | None = None) -> None:
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
        # Puts and deletes made through this object and its committed nested ones, so a caller
        # can tell it wrote.
        self.writes = 0
        self._cursors: dict[str, lmdb.Cursor] = {}

    def nested(self) -> Self:
        """A child transaction, for ``with``: its writes land in this one only if the block succeeds."""
        with refusing():
            child = self.storage.env.begin(write=True, parent=self._lmdb)
        return type(self)(self.storage, child, self)

    # A class-based context manager, not @contextmanager: a request opens one each.
    def __enter__(self) -> Self:
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
        with refusing():
            self._lmdb.commit()
        if self._parent is not None:
            self._parent.writes += self.writes  # what the child wrote is the parent's now
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

    def _add(self, key: bytes, delta: int) -> None:
        self.set_counter(key, self.counter(key) + delta)

    def flush(self) -> None:
        """Put the counters set so far in this write transaction (before a scan, or the commit)."""
        try:
            for key, value in self._counters.items():
                self._lmdb.put(key, u64(value), db=self._meta)
        except lmdb.Error as exc:
            refuse(exc)

    def meta(self, key: bytes) -> bytes | None:
        value = self._lmdb.get(key, db=self._meta)
        return None if value is None else bytes(value)

    def set_meta(self, key: bytes, value: bytes) -> None:
        self.put_raw("meta", key, value)

    def count(self, db: str) -> int:
        """How many entries a database holds (read from its record: no scan)."""
        return int(self._lmdb.stat(self._dbs[db])["entries"])

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
            refuse(exc)

    def delete_raw(self, db: str, key: bytes) -> bool:
        """Delete one entry; False when there was none."""
        self.writes += 1
        try:
            return bool(self._lmdb.delete(key, db=self._dbs[db]))
        except lmdb.Error as exc:
            refuse(exc)

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
            refuse(exc)

    def _write_record(
        self,
        key: bytes,
        value: bytes,
        job_id: bytes,
        was: tuple[bytes | None, ...],
        now: tuple[bytes | None, ...],
    ) -> None:
        """Put a record under ``key``, moving its index entries from ``was`` to ``now``
        (:data:`jobstore.store.keys.INDEXES` order, None where it has none)."""
        txn = self._lmdb
        try:
            for (db, valued), before, after in zip(self._indexes, was, now, strict=True):
                if before != after:
                    if before is not None:
                        txn.delete(before, db=db)
                    if after is not None:
                        txn.put(after, job_id if valued else b"", db=db)
            txn.put(key, value, db=self._dbs["jobs"])
        except lmdb.Error as exc:
            refuse(exc)

    def _scan(self, db: str, prefix: bytes, after: int = 0) -> Iterator[tuple[int, str]]:
        """(seq, job id) of the entries under ``prefix`` with seq > ``after``, in seq order."""
        cursor = self._lmdb.cursor(db=self._dbs[db])
        if not cursor.set_range(prefix + u64(after + 1)):
            return
        for key, value in cursor:
            if not bytes(key).startswith(prefix):
                return
            yield int.from_bytes(key[len(prefix) :], "big"), bytes(value).decode()

    def _timed_keys(self, db: str) -> Iterator[bytes]:
        """The keys of a ``leases``, ``done`` or ``expiry`` index, earliest time first."""
        cursor = self._lmdb.cursor(db=self._dbs[db])
        if cursor.first():
            for key in cursor.iternext(values=False):
                yield bytes(key)
