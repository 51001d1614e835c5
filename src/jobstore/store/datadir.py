"""A data directory on disk: created private, locked by one serving store, checked before mapping."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from pathlib import Path
from typing import IO

from ..errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = "jobstore.lock"
DATA_FILE = "data.mdb"


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


def identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino
