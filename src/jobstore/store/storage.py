"""The store's data directory: its LMDB environment, map size and transactions.

The storage layer is this module, :mod:`jobstore.store.txn` (what a transaction
reads and writes: records, indexes, counters, settings) and
:mod:`jobstore.store._lmdb_raw` (bytes in and out of LMDB, the only module that
imports lmdb); the databases and their keys are laid out in
:mod:`jobstore.store.keys`. LMDB's errors leave it as jobstore's own
(:class:`MapFull`, :class:`StorageError`).

Older storage formats are upgraded in place when a store opens them writable
(:mod:`jobstore.store.formats`); read-only (``check``, ``backup``) they are read as
they are, format 5's tables in databases of their own.

A writable store keeps one LMDB write transaction open across batches and makes
each batch durable in its :class:`~jobstore.store.journal.Journal` (one small write
and one flush); the open transaction commits as a *checkpoint* when the store has
been quiet for QUIET_MS at least CHECKPOINT_MS after the first batch journaled
since the last one, when the journal reaches CHECKPOINT_BYTES or CHECKPOINT_WRITES,
before the map grows, after every batch at the map's ceiling, and at close.
Opening the store redoes what the journal holds past the data file's checkpoint.
Another process reading the data file (``check``, ``backup``) sees the last
checkpoint; ``backup`` redoes the journal into its copy.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, JobstoreError
from ._lmdb_raw import (
    Database,
    MapFull,
    Place,
    StorageError,
    Transaction,
    open_environment,
    open_tables,
    pages_in,
    refuse_new_jobs,
    refusing,
)
from .cache import DEFAULT_CACHE_BYTES, RecordCache
from .datadir import DATA_FILE, check_data_file, identity, make_data_dir
from .formats import upgrade
from .journal import JOURNAL_FILE, Journal
from .keys import FORMAT, JOURNAL_KEY, PLACES, SECRET_KEY
from .txn import Txn

__all__ = [
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "GROW_AT",
    "MapFull",
    "Storage",
    "StorageError",
    "Txn",
    "refuse_new_jobs",
]

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 34
GROW_AT = 0.8  # grow the map before a batch when its highest page is this far in
CHECKPOINT_BYTES = 4 << 20  # checkpoint, busy or not, once the journal holds this much
# ... or this many writes: the open transaction keeps every page they changed in memory (LMDB
# spills only past 512 MiB), one page or so each when the keys are random.
CHECKPOINT_WRITES = 16384
CHECKPOINT_MS = 5000  # checkpoint when quiet this long after the first batch journaled since
QUIET_MS = 5  # quiet: no batch journaled for this long (a checkpoint then delays no request)
PAGES_PER_WRITE = 16  # pages one put or delete can take: twice a B-tree's depth, and more


def _mono_ms() -> int:
    return time.monotonic_ns() // 1_000_000


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
        self.env = open_environment(self.path, min(map_size, self.max_map_size), readonly)
        try:
            self._open_data(readonly, cache_bytes)
        except BaseException:  # refused (a newer format, no room to upgrade): let go of the files
            if self.journal is not None:
                self.journal.close()
            self.env.close()
            raise

    def _open_data(self, readonly: bool, cache_bytes: int) -> None:
        """Read the layout and secret; unless ``readonly``, upgrade the data and redo the journal."""
        self.journal: Journal | None = None  # a read-only store has none
        self._at_ceiling = self.at_ceiling()
        # Each table's (database, key prefix), as the format on disk lays them out.
        self.tables, shared = open_tables(self.env, readonly)
        self._page_size = int(self.env.stat()["psize"])
        # What the directory and its data file were when opened, to notice them replaced.
        self._identity = (identity(self.path), identity(self.path / DATA_FILE))
        self.cache = RecordCache(cache_bytes)
        self._open: Transaction | None = None  # the write transaction batches share
        self._owner = 0  # the thread that began it
        self._first_at: int | None = None  # when the first batch since the checkpoint was journaled
        self._last_at = 0  # when the last batch was
        self._new_pages = 0  # at most how many pages past the file's end the batches since used
        self._writes = 0  # puts and deletes journaled since the checkpoint
        self.checkpoints = 0  # made since the store opened
        self._retry_at = -CHECKPOINT_MS  # when the last checkpoint failed
        if readonly:
            with self.read() as txn:
                self.secret = txn.meta(SECRET_KEY) or b""
            return
        if not shared:
            self._make_room_to_share()
        with self._commit() as txn:
            if txn.meta(SECRET_KEY) is None:
                txn.set_meta(SECRET_KEY, secrets.token_bytes(32))
            self.secret = bytes(txn.meta(SECRET_KEY) or b"")
            upgrade(txn)
        journal = self.journal = Journal(self.path / JOURNAL_FILE, self.secret)
        with self.read() as txn:
            batches = len(journal.replay(txn.counter(JOURNAL_KEY)))  # finds where they end
        if batches:  # redone and committed as any checkpoint is
            self.checkpoint()
            log.info("redid %d batches from the journal", batches)

    @property
    def places(self) -> dict[str, Place]:
        """Each table's (database, key prefix)."""
        return self.tables.places

    def backup(self, destination: str | os.PathLike[str]) -> None:
        """Write a consistent, compacted copy of the data to a new directory (safe while serving).

        The copy is the data file's last checkpoint with the batches the journal holds past
        it redone, up to the first one the copy caught half-written (a batch a store is
        writing as the copy is made).
        """
        target = Path(destination)
        target.mkdir(mode=0o700, parents=True)
        # The journal first: a checkpoint the store makes meanwhile lands in the data file's
        # copy, and the journal's copy holds whatever came after the copy's own checkpoint.
        journal = self.path / JOURNAL_FILE
        if journal.exists():
            shutil.copyfile(journal, target / JOURNAL_FILE)
        self.env.copy(str(target), compact=True)
        if not (target / JOURNAL_FILE).exists():
            return
        copy = Storage(target, readonly=True)
        try:
            pending = copy.pending()
        finally:
            copy.close()
        if pending:
            Storage(target, self.max_map_size, self.max_map_size).close()  # redoes the journal
        (target / JOURNAL_FILE).unlink()

    def pending(self) -> int:
        """How many batches the journal holds past the data file's checkpoint."""
        journal = self.path / JOURNAL_FILE
        if not journal.exists():
            return 0
        with self.read() as txn:
            after = txn.counter(JOURNAL_KEY)
        reader = Journal(journal, self.secret, readonly=True)
        try:
            return len(reader.replay(after))
        finally:
            reader.close()

    def close(self) -> None:
        """Checkpoint (a writable store) and close the data file and journal."""
        if self.journal is not None:
            try:
                self.checkpoint()
            except JobstoreError:
                log.exception(
                    "could not checkpoint at close: the journal keeps the changes, and the "
                    "store redoes them when it opens next"
                )
            self.journal.close()
            self.journal = None
        self.env.close()

    def used(self) -> int:
        """Bytes of the data in use: pages of every database, not the free ones.

        LMDB reuses freed pages but never shrinks the file, so its highest page
        (``last_pgno``) only grows. The pages in use are the branch, leaf and
        overflow pages of each database (``txn.stat``, read from the database
        record: no scan), the main database's, and the two meta pages; the free
        list's own few pages are left out.
        """
        databases = dict.fromkeys(db for db, _ in self.places.values())  # each one once
        return (2 + pages_in(self.env.stat()) + self._pages(databases)) * self._page_size

    def _pages(self, databases: Iterable[Database]) -> int:
        """The branch, leaf and overflow pages of these databases (with the batches journaled
        since the last checkpoint, in the thread that writes)."""
        with self.read() as txn:
            return sum(txn.pages(db) for db in databases)

    def _make_room_to_share(self) -> None:
        """Grow the map so that the upgrade to format 6 fits, or refuse it: until it commits,
        the tables it moves are stored twice (their new pages are filled, so at most as
        many), besides the free list of their old pages and the new branch pages."""
        moved = self._pages(
            db for table, (db, _) in self.places.items() if PLACES[table][0] != table
        )
        end = int(self.env.info()["last_pgno"]) + 1
        needed = (end + moved + moved // 8 + 64) * self._page_size
        if needed > self.max_map_size:
            raise ConfigError(
                f"upgrading the data in {self.path} to storage format {FORMAT} copies its "
                f"indexes ({moved * self._page_size} bytes) before it frees the old copies, so "
                f"it needs a map of {needed} bytes, above --max-map-size "
                f"({self.max_map_size}): raise --max-map-size to at least {needed}"
            )
        if needed > self.map_size():
            self._resize(needed)

    def fill(self) -> float:
        """How much of the map's ceiling (``max_map_size``) the data uses, from 0 to 1."""
        return self.used() / self.max_map_size

    def grow(self, full_at: float) -> bool:
        """Double the map (up to the ceiling) once its highest page is GROW_AT in; return whether
        the data in use has reached ``full_at`` of the ceiling. Call with no transaction open.

        Counting the pages in use (:meth:`used`) costs a stat per database, so it is
        skipped while the file's end is below ``full_at``: no page past the highest one is
        in use. LMDB says where the file ends only as of the last commit; the batches since
        may have used up to ``_new_pages`` more.
        """
        info = self.env.info()
        size, end = int(info["map_size"]), int((info["last_pgno"] + 1) * self._page_size)
        if size < self.max_map_size and end > size * GROW_AT:
            self.checkpoint()  # LMDB resizes no map a transaction has open
            self._resize(min(size * 2, self.max_map_size))
        near = end + self._new_pages * self._page_size >= full_at * self.max_map_size
        return near and self.fill() >= full_at

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def at_ceiling(self) -> bool:
        return self.map_size() >= self.max_map_size

    def enlarge(self) -> bool:
        """Double the map (up to the ceiling) after a batch found it full: False when it is
        at the ceiling already. Call with no transaction open."""
        if self.at_ceiling():
            return False
        self._abandon()  # the caller found the open transaction full: redone in the larger map
        self._resize(min(self.map_size() * 2, self.max_map_size))
        return True

    def _resize(self, size: int) -> None:
        self.env.set_mapsize(size)
        self._at_ceiling = self.at_ceiling()

    def could_make_room(self) -> bool:
        """Whether :meth:`make_room` has something to try."""
        return not self.at_ceiling() or bool(self.journal and self.journal.end)

    def make_room(self) -> bool:
        """After a batch found the map full: double it, or at the ceiling checkpoint, which frees
        the pages the batches since the last checkpoint replaced (LMDB reuses no page a
        transaction freed before it commits). False when neither is left to do."""
        if self.enlarge():
            return True
        if not self.could_make_room():
            return False
        self.checkpoint()
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
        """One batch's transaction: durable (journaled and flushed) when the block ends without
        error; on an error, as if it had never begun.

        LMDB's errors leave as :class:`MapFull` or :class:`StorageError`, and so does a journal
        that cannot be written.
        """
        journal = self.journal
        if journal is None:
            raise StorageError("this store was opened read-only: it cannot write")
        with refusing():
            open_ = self._open or self._begin()
            top = Txn(self, open_, ops=[])
            try:
                yield top
                top.flush()
            except BaseException:
                self._abandon()
                raise
        if top.ops:
            try:
                written = journal.append(top.ops)
            except OSError as exc:
                self._abandon()
                raise StorageError(
                    f"the store could not write its journal ({exc.strerror}): the batch is not "
                    "applied; retry the request, and ask the operator to check the disk"
                ) from exc
            # A put or delete copies at most its root-to-leaf path and splits it at most once
            # more; a value's overflow pages are at most its bytes' worth, all in the record.
            self._new_pages += len(top.ops) * PAGES_PER_WRITE + written // self._page_size + 1
            self._last_at = _mono_ms()
            if self._first_at is None:
                self._first_at = self._last_at
            self._writes += len(top.ops)
            # At its ceiling the map cannot grow, and only a commit frees the pages replaced.
            if (
                journal.end >= CHECKPOINT_BYTES
                or self._writes >= CHECKPOINT_WRITES
                or self._at_ceiling
            ):
                self._checkpoint_after_batch()

    @contextmanager
    def _commit(self) -> Iterator[Txn]:
        """A write transaction of its own, committed durably (LMDB's way) when the block ends
        without error: for opening the store, before batches share one."""
        with refusing(), self.env.begin(write=True) as raw:
            top = Txn(self, raw)
            yield top
            top.flush()

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """A read transaction. In the thread that writes, while batches share an open write
        transaction, it is that transaction: a new read transaction would see only the last
        checkpoint."""
        if threading.get_ident() == self._owner and (self._open or self._redo_due()):
            assert self._open is not None
            txn = Txn(self, self._open)
            yield txn
            if txn.writes:
                raise RuntimeError("a read transaction wrote: use Storage.write")
            return
        with self.env.begin() as raw:
            yield Txn(self, raw)

    def _redo_due(self) -> bool:
        """After a batch failed, begin again (redoing the journal) for a read that comes first:
        the data file alone lacks the batches since the last checkpoint. True once begun."""
        if self.journal is None or not self.journal.end:
            return False
        with refusing():
            self._begin()
        return True

    def journal_stats(self) -> dict[str, int]:
        """For /stats: batches journaled and checkpoints made since the store started, and the
        journal's bytes since the last checkpoint."""
        journal = self.journal
        if journal is None:
            return {"batches": 0, "checkpoints": 0, "bytes": 0}
        return {"batches": journal.appended, "checkpoints": self.checkpoints, "bytes": journal.end}

    def checkpoint_in(self, mono: int) -> int | None:
        """Ms from monotonic reading ``mono`` until the store should checkpoint (<= 0: now), or
        None when no batch was journaled since the last checkpoint."""
        if self._first_at is None:
            return None
        return max(self._first_at + CHECKPOINT_MS, self._last_at + QUIET_MS) - mono

    def checkpoint(self) -> None:
        """Commit the batches journaled since the last checkpoint into the data file (LMDB's
        durable commit) and start the journal again. A full map grows (up to its ceiling) and
        the batches are redone into it: the store that journaled them may have grown its map
        without committing the larger size."""
        journal = self.journal
        if journal is None:
            return
        while True:
            try:
                committed = self._commit_open(journal)
                break
            except MapFull:
                if not self.enlarge():  # which abandons what is open
                    raise
        if committed:
            journal.restart()
            self.checkpoints += 1
            self._first_at = None
            self._new_pages = self._writes = 0

    def _commit_open(self, journal: Journal) -> bool:
        """Commit the open transaction (begun and redone first if a failed batch abandoned it)
        under the journal's last batch number; False when nothing was journaled since."""
        if self._open is None:
            if not journal.end:
                return False
            with refusing():
                self._begin()
        open_, self._open = self._open, None
        assert open_ is not None
        if not journal.end:
            open_.abort()  # nothing written in it: nothing to commit
            return False
        try:
            with refusing():
                top = Txn(self, open_)
                top.set_counter(JOURNAL_KEY, journal.seq)
                top.flush()
                open_.commit()
        except BaseException:
            open_.abort()
            raise
        return True

    def checkpoint_if_due(self, mono: int) -> None:
        """Checkpoint if :meth:`checkpoint_in` says it is time (the serve loop calls this when
        idle)."""
        due = self.checkpoint_in(mono)
        if due is not None and due <= 0:
            self._try_checkpoint(mono)

    def _checkpoint_after_batch(self) -> None:
        """Checkpoint a journal grown to CHECKPOINT_BYTES or CHECKPOINT_WRITES, or a map at its
        ceiling, unless a checkpoint failed less than CHECKPOINT_MS ago."""
        mono = _mono_ms()
        if mono >= self._retry_at + CHECKPOINT_MS:
            self._try_checkpoint(mono)

    def _try_checkpoint(self, mono: int) -> None:
        """The batches are durable already, so a checkpoint that fails is logged, not raised,
        and tried again CHECKPOINT_MS later; the journal keeps them meanwhile."""
        try:
            self.checkpoint()
        except JobstoreError:
            log.exception(
                "checkpoint failed; the journal keeps the batches, trying again in %d ms",
                CHECKPOINT_MS,
            )
            self._first_at = self._retry_at = mono

    def _begin(self) -> Transaction:
        """Open the write transaction batches share: the last checkpoint, then the batches
        journaled since (after a batch failed, the transaction that held them was abandoned)."""
        journal = self.journal
        assert journal is not None
        self._open = open_ = self.env.begin(write=True)
        self._owner = threading.get_ident()
        if not journal.end:
            return open_
        try:
            top = Txn(self, open_)
            end, seq = journal.end, journal.seq
            batches = journal.replay(top.counter(JOURNAL_KEY), until=end)
            if (journal.end, journal.seq) != (end, seq):
                journal.end, journal.seq = end, seq
                raise StorageError(
                    f"the journal {journal.path} no longer holds the batches written since the "
                    "last checkpoint (changed by another program?): restart the store on its data"
                )
            top.redo(batches)
        except BaseException:  # half redone, it must not be the next batch's
            self._abandon()
            raise
        return open_

    def _abandon(self) -> None:
        """Abort the write transaction batches share; the next batch redoes the journal."""
        if self._open is not None:
            self._open.abort()
            self._open = None
