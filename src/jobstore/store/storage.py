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
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._lmdb_raw import (
    Database,
    MapFull,
    Place,
    StorageError,
    open_environment,
    open_tables,
    refuse_new_jobs,
    refusing,
)
from .cache import DEFAULT_CACHE_BYTES, RecordCache
from .datadir import DATA_FILE, check_data_file, identity, make_data_dir
from .formats import upgrade
from .keys import FORMAT, PLACES, SECRET_KEY
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
        # Each table's (database, key prefix), as the format on disk lays them out.
        self.tables, shared = open_tables(self.env, readonly)
        self._page_size = int(self.env.stat()["psize"])
        # What the directory and its data file were when opened, to notice them replaced.
        self._identity = (identity(self.path), identity(self.path / DATA_FILE))
        self.cache = RecordCache(cache_bytes)
        if readonly:
            with self.read() as txn:
                self.secret = txn.meta(SECRET_KEY) or b""
            return
        if not shared:
            self._make_room_to_share()
        with self.write() as txn:
            if txn.meta(SECRET_KEY) is None:
                txn.set_meta(SECRET_KEY, secrets.token_bytes(32))
            self.secret = bytes(txn.meta(SECRET_KEY) or b"")
            upgrade(txn)

    @property
    def places(self) -> dict[str, Place]:
        """Each table's (database, key prefix)."""
        return self.tables.places

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
        databases = dict.fromkeys(db for db, _ in self.places.values())  # each one once
        return (2 + _pages(self.env.stat()) + self._pages(databases)) * self._page_size

    def _pages(self, databases: Iterable[Database]) -> int:
        """The branch, leaf and overflow pages of these databases."""
        with self.env.begin() as txn:
            return sum(_pages(txn.stat(db)) for db in databases)

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
            self.env.set_mapsize(needed)

    def fill(self) -> float:
        """How much of the map's ceiling (``max_map_size``) the data uses, from 0 to 1."""
        return self.used() / self.max_map_size

    def grow(self, full_at: float) -> bool:
        """Double the map (up to the ceiling) once its highest page is GROW_AT in; return whether
        the data in use has reached ``full_at`` of the ceiling. Call with no transaction open.

        Counting the pages in use (:meth:`used`) costs a read transaction and a stat per
        database, so it is skipped while the file's end is below ``full_at``: no page past
        the highest one is in use.
        """
        info = self.env.info()
        size, end = int(info["map_size"]), int((info["last_pgno"] + 1) * self._page_size)
        if size < self.max_map_size and end > size * GROW_AT:
            self.env.set_mapsize(min(size * 2, self.max_map_size))
        return end >= full_at * self.max_map_size and self.fill() >= full_at

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
        with refusing(), self.env.begin(write=True) as txn:
            top = Txn(self, txn)
            yield top
            top.flush()

    @contextmanager
    def read(self) -> Iterator[Txn]:
        with self.env.begin() as txn:
            yield Txn(self, txn)


def _pages(stat: Mapping[str, Any]) -> int:
    return int(stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])
