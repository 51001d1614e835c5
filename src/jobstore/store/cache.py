"""Records written lately, kept decoded: a take or a status report reads a record written a batch
or two before."""

from __future__ import annotations

from ..records import Job

DEFAULT_CACHE_BYTES = 32 << 20
CACHE_RECORD_MAX = 16 << 10  # larger records are not kept decoded: they would crowd out the rest


class RecordCache:
    """(dsid, stored bytes) -> record. The bytes decide the record, so a hit is never stale.

    Bounded in bytes (``decoded_bytes`` within ``cache_bytes``); cleared when full.
    """

    def __init__(self, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.decoded: dict[tuple[str, bytes], Job] = {}
        self.cache_bytes = cache_bytes
        self.decoded_bytes = 0

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
