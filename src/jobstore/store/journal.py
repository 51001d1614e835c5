"""The journal: each batch's writes, on disk before its replies go out.

LMDB makes a commit durable with two flushes (its pages, then its meta page) and
writes a copy of every page on each changed key's root-to-leaf path: about fifteen
4 kB pages for a home-load job's commit. So the store keeps one LMDB write
transaction open across batches (:class:`jobstore.store.storage.Storage`) and
appends each batch's puts and deletes here instead: one write and one
``fdatasync`` of a few hundred bytes. Now and then the open transaction commits (a
*checkpoint*, durable the LMDB way) and the journal starts again from its
beginning; a page that many batches changed is written once per checkpoint.

A record is a 32-byte header (magic, payload length, batch number, a 16-byte
BLAKE2b MAC keyed with the store's secret) and its payload: each write as a
database number (1 byte), key length (2), value length (4; all ones for a
delete), then the key and the value. The data file holds the
number of the last batch its checkpoint includes; replaying applies the records
numbered one past it, two past it and so on from offset 0, and stops at the
first record missing, torn (its MAC fails) or numbered otherwise (left over from
before the checkpoint). The MAC keeps bytes a client wrote into a job from ever
passing for a record.

The file is kept zero-filled ahead of the writes, so a batch's ``fdatasync``
changes no file size or extent: it flushes the data block, not the filesystem's
own journal.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import struct
from pathlib import Path

JOURNAL_FILE = "journal"
MAGIC = b"jsJ1"
HEADER = struct.Struct(">4sIQ16s")  # magic, payload length, batch number, MAC
WRITE = struct.Struct(">BHI")  # database number, key length, value length
DELETE = 0xFFFFFFFF  # the value length of a delete
CHUNK = 1 << 20  # the file grows by zero-filled chunks of at least this
ZEROS = bytes(CHUNK)

# A batch's writes: (database number, key, value or None for a delete).
Op = tuple[int, bytes, bytes | None]


class Journal:
    """The journal file of one data directory, open for appending batches."""

    def __init__(self, path: Path, key: bytes, *, readonly: bool = False) -> None:
        """Open (and unless ``readonly``, create) the journal at ``path``; ``key`` is the
        store's secret, which the records' MACs are keyed with."""
        self.path = path
        self._keyed = hashlib.blake2b(key=key, digest_size=16)  # copied per record: keyed once
        new = not readonly and not path.exists()
        flags = os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT
        self._fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        if new:  # the file's name must survive a crash as well as what is written in it
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self.end = 0  # where the next record goes
        self.seq = 0  # the number of the last batch journaled (or checkpointed)
        self.appended = 0  # records written since the store opened, for /stats and the bench

    def close(self) -> None:
        os.close(self._fd)

    def replay(self, after: int, until: int | None = None) -> list[list[Op]]:
        """The writes of each batch journaled after batch ``after`` (in the first ``until``
        bytes, when given), in order; the next record goes after the last of them."""
        data = memoryview(os.pread(self._fd, self._size if until is None else until, 0))
        batches: list[list[Op]] = []
        pos, seq = 0, after
        while pos + HEADER.size <= len(data):
            magic, length, number, mac = HEADER.unpack_from(data, pos)
            start = pos + HEADER.size
            if magic != MAGIC or number != seq + 1 or start + length > len(data):
                break
            payload = data[start : start + length]
            if not hmac.compare_digest(mac, self._mac(data[pos : pos + 16], payload)):
                break
            batches.append(_writes(payload))
            pos, seq = start + length, number
        self.end, self.seq = pos, seq
        return batches

    def append(self, ops: list[Op]) -> int:
        """Write one batch's writes and flush them to the device; return the record's size.
        ``OSError`` if that fails: the batch is then not durable, and the next append takes
        its place."""
        parts: list[bytes] = []
        for number, key, value in ops:
            if value is None:
                parts += (WRITE.pack(number, len(key), DELETE), key)
            else:
                parts += (WRITE.pack(number, len(key), len(value)), key, value)
        payload = b"".join(parts)
        head = HEADER.pack(MAGIC, len(payload), self.seq + 1, bytes(16))[:16]
        record = head + self._mac(head, payload) + payload
        end = self.end + len(record)
        if end > self._size:
            self._grow(end)
        try:
            if os.pwrite(self._fd, record, self.end) != len(record):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fdatasync(self._fd)
        except OSError:
            # The batch is answered as not applied: keep a redo from finding its record, as far
            # as a failing disk lets us (the next record goes in its place anyway).
            with contextlib.suppress(OSError):
                os.pwrite(self._fd, bytes(HEADER.size), self.end)
            raise
        self.end, self.seq = end, self.seq + 1
        self.appended += 1
        return len(record)

    def restart(self) -> None:
        """Begin again from offset 0: the batches so far are in the data file's checkpoint."""
        self.end = 0

    def _grow(self, needed: int) -> None:
        """Zero-fill the file to at least ``needed`` bytes, durably, before writing there."""
        size = max(needed, self._size * 2, CHUNK)
        for at in range(self._size, size, CHUNK):
            os.pwrite(self._fd, ZEROS[: size - at], at)
        os.fsync(self._fd)  # the new size and extents, once, not with every batch
        self._size = size

    def _mac(self, head: bytes | memoryview, payload: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        mac.update(head)
        mac.update(payload)
        return mac.digest()


def _writes(payload: memoryview) -> list[Op]:
    """A record's writes, from its payload (whose MAC has been checked)."""
    ops: list[Op] = []
    pos = 0
    while pos < len(payload):
        number, key_length, value_length = WRITE.unpack_from(payload, pos)
        pos += WRITE.size
        key = bytes(payload[pos : pos + key_length])
        pos += key_length
        if value_length == DELETE:
            ops.append((number, key, None))
        else:
            ops.append((number, key, bytes(payload[pos : pos + value_length])))
            pos += value_length
    return ops
