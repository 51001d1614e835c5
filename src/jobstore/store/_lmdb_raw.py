"""Raw LMDB access under :mod:`jobstore.store.storage`: the one module that imports lmdb.

It opens the environment and its databases, maps each table of
:mod:`jobstore.store.keys` to its database and key prefix (the format on disk decides:
:data:`~jobstore.store.keys.PLACES` or, for data older than format 6,
:data:`~jobstore.store.keys.OLD_PLACES`), runs transactions (nested ones too),
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Self

import lmdb

from ..errors import ConfigError, JobstoreError, StorageFull
from .keys import EMPTY_VALUED, INDEXES, OLD_PLACES, PLACES, u64

if TYPE_CHECKING:
    from .journal import Op
    from .storage import Storage

Transaction = lmdb.Transaction
Database = lmdb._Database
Place = tuple[Database, bytes]  # a table's database and the prefix of its keys there


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


def open_environment(path: Path, map_size: int, readonly: bool) -> lmdb.Environment:
    """The LMDB environment of a data directory."""
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
    return env


class Tables:
    """Each table's (database, key prefix), and what a transaction's hot path needs of them:
    worked out once per layout, not per transaction.

    The journal names a database by its number here: its place in ``databases``, in the
    order of the names (the same in every store of one format).
    """

    __slots__ = ("databases", "indexes", "meta", "number", "places")

    def __init__(self, places: dict[str, Place], names: dict[Database, str]) -> None:
        self.places = places
        self.databases = sorted(names, key=names.__getitem__)
        self.number = {db: n for n, db in enumerate(self.databases)}
        self.meta = places["meta"][0]  # meta's keys have no prefix in any format
        # (database, its number, prefix, whether the value is the job id) in INDEXES order.
        # Only a store opened read-only on older data lacks some: it never writes.
        self.indexes = [
            (db, self.number[db], prefix, table not in EMPTY_VALUED)
            for table in INDEXES
            if table in places
            for db, prefix in (places[table],)
        ]


def open_tables(env: lmdb.Environment, readonly: bool) -> tuple[Tables, bool]:
    """Each table's (database, prefix), and whether the tables share databases (format 6 on).

    Data older than format 6 has a database named ``meta``, and one database per table.
    """
    try:
        env.open_db(b"meta", create=False)
    except lmdb.NotFoundError:
        old = False
    else:
        old = True
    dbs: dict[str, Database] = {}
    places = {}
    for table, (db, prefix) in (OLD_PLACES if old else PLACES).items():
        if db not in dbs:
            # Read-only on data an older jobstore wrote, a newer database is missing: its
            # upgrade adds it, and a read-only store never writes.
            with contextlib.suppress(lmdb.NotFoundError):
                dbs[db] = env.open_db(db.encode(), create=not readonly)
        if db in dbs:
            places[table] = (dbs[db], prefix)
    return Tables(places, {db: name for name, db in dbs.items()}), not old


def share_databases(txn: RawTxn) -> None:
    """Move every table but ``jobs`` from a database of its own (formats 1 to 5) into format 6's
    shared databases under its key prefix, and drop the old databases, all in ``txn``."""
    env, raw, old = txn.storage.env, txn._lmdb, txn.storage.places
    dbs = {db.encode(): env.open_db(db.encode(), txn=raw, create=True) for db, _ in PLACES.values()}
    new = {table: (dbs[db.encode()], prefix) for table, (db, prefix) in PLACES.items()}
    moved = [table for table, (db, _) in PLACES.items() if db != table and table in old]
    # Each table's keys in its new database, in key order: tables in the order of their first
    # keys, so every put appends (full pages, and a collision shows as a refused append).
    firsts = {}
    for table in moved:
        cursor = raw.cursor(db=old[table][0])
        if cursor.first():
            firsts[table] = new[table][1] + bytes(cursor.key())
    for table in sorted(firsts, key=firsts.__getitem__):
        db, prefix = new[table]
        source = raw.cursor(db=old[table][0])
        items = ((prefix + key, value) for key, value in source.iternext())
        consumed, added = raw.cursor(db=db).putmulti(items, append=True)
        if added != consumed:
            raise RuntimeError(
                f"the {table} table's keys collide with another table's in the database "
                f"{PLACES[table][0]}: this data cannot be upgraded; report it with a backup"
            )
    for table in moved:
        raw.drop(old[table][0], delete=True)
    txn.storage.tables = Tables(new, {db: name.decode() for name, db in dbs.items()})
    txn.rebind()


def pages_in(stat: Mapping[str, Any]) -> int:
    """The branch, leaf and overflow pages an LMDB ``stat`` counts (of a database, or the main one)."""
    return int(stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])


class RawTxn:
    """One LMDB transaction: entries as bytes, and the meta counters it keeps in memory.

    Given ``ops`` (a list), it also appends every put and delete it makes there, as the
    journal records them (:data:`jobstore.store.journal.Op`); a nested transaction
    records into its parent's list when it commits.
    """

    def __init__(
        self,
        storage: Storage,
        txn: Transaction,
        parent: Self | None = None,
        ops: list[Op] | None = None,
    ) -> None:
        self.storage = storage
        self._lmdb = txn
        self.rebind()
        self._parent = parent
        self.ops: list[Op] | None = ops
        if parent is not None:
            self.ops = None if parent.ops is None else []
        # The counters set in the whole write transaction, not yet put (see the module
        # docstring); one dict shared by a transaction and its nested ones.
        self._counters: dict[bytes, int] = {} if parent is None else parent._counters
        # In a nested transaction: each counter's value before it first changed here (None:
        # unset), restored if the nested transaction is abandoned.
        self._undo: dict[bytes, int | None] | None = None if parent is None else {}
        # Puts and deletes made through this object and its committed nested ones, so a caller
        # can tell it wrote.
        self.writes = 0

    def rebind(self) -> None:
        """Take each table's (database, prefix) from the storage: once when opened, and again
        after :func:`share_databases` moved them."""
        tables = self.storage.tables
        self._places, self._meta, self._indexes = tables.places, tables.meta, tables.indexes
        self._number = tables.number
        self._cursors: dict[str, tuple[lmdb.Cursor, bytes]] = {}

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
            if self.ops and self._parent.ops is not None:
                self._parent.ops.extend(self.ops)
        outer = self._parent._undo if self._parent is not None else None
        if outer is not None:
            for key, value in undo.items():
                outer.setdefault(key, value)

    def redo(self, batches: list[list[Op]]) -> None:
        """Make again the writes of batches read back from the journal (not journaled again)."""
        txn, databases = self._lmdb, self.storage.tables.databases
        try:
            for ops in batches:
                for number, key, value in ops:
                    if value is None:
                        txn.delete(key, db=databases[number])
                    else:
                        txn.put(key, value, db=databases[number])
        except lmdb.Error as exc:
            refuse(exc)

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
        meta, ops = self._meta, self.ops
        try:
            for key, value in self._counters.items():
                encoded = u64(value)
                self._lmdb.put(key, encoded, db=meta)
                if ops is not None:
                    ops.append((self._number[meta], key, encoded))
        except lmdb.Error as exc:
            refuse(exc)

    def meta(self, key: bytes) -> bytes | None:
        value = self._lmdb.get(key, db=self._meta)
        return None if value is None else bytes(value)

    def set_meta(self, key: bytes, value: bytes) -> None:
        self.put_raw("meta", key, value)

    def pages(self, db: Database) -> int:
        """The branch, leaf and overflow pages of a database, as of this transaction."""
        return pages_in(self._lmdb.stat(db))

    def records(self) -> int:
        """How many job records the store holds: ``jobs`` has its database to itself in every
        format, so the database's record says (no scan)."""
        return int(self._lmdb.stat(self._places["jobs"][0])["entries"])

    # Tables are named as in keys.PLACES; each accessor below adds the table's key prefix, and
    # cuts it off the keys it returns.

    def entries(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of a table's entries whose key starts with ``prefix``, in key order.

        From format 6 meta shares its database with the small indexes: scan it by a key prefix
        (b"" would yield their entries too).
        """
        db, own = self._places[table]
        start, cut = own + prefix, len(own)
        cursor = self._lmdb.cursor(db=db)
        if not cursor.set_range(start):
            return
        for key, value in cursor:
            key = bytes(key)
            if not key.startswith(start):
                return
            yield key[cut:], bytes(value)

    def put_raw(self, table: str, key: bytes, value: bytes) -> None:
        """Put one entry as is (format upgrades, and tests that fabricate old data)."""
        self.writes += 1
        db, own = self._places[table]
        try:
            self._lmdb.put(own + key, value, db=db)
        except lmdb.Error as exc:
            refuse(exc)
        if self.ops is not None:
            self.ops.append((self._number[db], own + key, value))

    def delete_raw(self, table: str, key: bytes) -> bool:
        """Delete one entry; False when there was none."""
        self.writes += 1
        db, own = self._places[table]
        try:
            found = bool(self._lmdb.delete(own + key, db=db))
        except lmdb.Error as exc:
            refuse(exc)
        if found and self.ops is not None:
            self.ops.append((self._number[db], own + key, None))
        return found

    def get_raw(self, table: str, key: bytes) -> bytes | None:
        db, own = self._places[table]
        value = self._lmdb.get(own + key, db=db)
        return None if value is None else bytes(value)

    def first_raw(
        self, table: str, prefix: bytes, start: bytes = b""
    ) -> tuple[bytes, bytes] | None:
        """The first entry of a table whose key starts with ``prefix`` (and is not below ``start``)."""
        found = self._cursors.get(table)
        if found is None:  # one per table and transaction: a take looks up several times
            db, own = self._places[table]
            found = self._cursors[table] = (self._lmdb.cursor(db=db), own)
        cursor, own = found
        if not cursor.set_range(own + max(prefix, start)):
            return None
        key = bytes(cursor.key())
        if not key.startswith(own + prefix):
            return None
        return key[len(own) :], bytes(cursor.value())

    def delete_first(self, table: str, prefix: bytes, count: int) -> None:
        """Delete the ``count`` lowest entries whose key starts with ``prefix`` (fewer if fewer)."""
        self.writes += 1
        db, own = self._places[table]
        prefix, number, ops = own + prefix, self._number[db], self.ops
        cursor = self._lmdb.cursor(db=db)
        try:
            found = count > 0 and cursor.set_range(prefix)
            for _ in range(count):
                key = bytes(cursor.key())
                if not found or not key.startswith(prefix):
                    break
                found = cursor.delete()
                if ops is not None:
                    ops.append((number, key, None))
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
        txn, ops = self._lmdb, self.ops
        try:
            for (db, number, own, valued), before, after in zip(
                self._indexes, was, now, strict=True
            ):
                if before != after:
                    if before is not None:
                        txn.delete(own + before, db=db)
                        if ops is not None:
                            ops.append((number, own + before, None))
                    if after is not None:
                        entry = job_id if valued else b""
                        txn.put(own + after, entry, db=db)
                        if ops is not None:
                            ops.append((number, own + after, entry))
            jobs, own = self._places["jobs"]
            txn.put(own + key, value, db=jobs)
            if ops is not None:
                ops.append((self._number[jobs], own + key, value))
        except lmdb.Error as exc:
            refuse(exc)

    def _scan(self, table: str, prefix: bytes, after: int = 0) -> Iterator[tuple[int, str]]:
        """(seq, job id) of the entries under ``prefix`` with seq > ``after``, in seq order."""
        db, own = self._places[table]
        prefix = own + prefix
        cursor = self._lmdb.cursor(db=db)
        if not cursor.set_range(prefix + u64(after + 1)):
            return
        for key, value in cursor:
            if not bytes(key).startswith(prefix):
                return
            yield int.from_bytes(key[len(prefix) :], "big"), bytes(value).decode()

    def _timed_keys(self, table: str) -> Iterator[bytes]:
        """The keys of a ``leases``, ``done`` or ``expiry`` index, earliest time first."""
        db, own = self._places[table]
        cursor, cut = self._lmdb.cursor(db=db), len(own)
        if cursor.set_range(own):
            for key in cursor.iternext(values=False):
                if not bytes(key).startswith(own):
                    return
                yield bytes(key[cut:])
