"""Zest observers: who watches which jobs, within the caps, until their ``max_age`` runs out.

The registry only; the socket adapter sends the pushes. Expiry is on the monotonic
clock, so a wall-clock step neither ends an observation early nor stretches it.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import TooMany
from ..records import Job


@dataclass
class Observer:
    ident: bytes
    dsid: str
    client: str | None
    expires: int | None  # monotonic ms
    peer: bytes  # the request peer that asked for it, for the per-peer cap
    since: int  # monotonic ms
    reached: bool = False  # a push got through: its DEALER connected


class Observers:
    """The observers of a store: at most ``limit`` in all and ``per_peer`` per request peer."""

    def __init__(self, limit: int, per_peer: int) -> None:
        self.limit, self.per_peer = limit, per_peer
        self._by_ident: dict[bytes, Observer] = {}
        # Observers by (dsid, client) and (dsid, None): a change reaches only those watching it.
        self._watching: dict[tuple[str, str | None], set[bytes]] = {}
        self._by_peer: Counter[bytes] = Counter()
        self._expiries: list[tuple[int, bytes]] = []  # (expires, ident) of observers with max_age

    def __len__(self) -> int:
        return len(self._by_ident)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._by_ident)

    def refusal(self, peer: bytes, others: Counter[bytes] | None = None) -> TooMany | None:
        """Why ``peer`` may not add an observer now, or None; ``others``: the function-call
        observers per peer, which count toward the same per-peer cap."""
        if len(self._by_ident) >= self.limit:
            return TooMany(
                f"this store has {self.limit} Zest observers, its limit: "
                "observe with max_age so observations end, or use a native subscription"
            )
        if self._by_peer[peer] + (others[peer] if others else 0) >= self.per_peer:
            return TooMany(
                f"this connection has {self.per_peer} Zest observers, "
                "its limit: observe with max_age, or observe a whole datasource once"
            )
        return None

    def add(self, dsid: str, client: str | None, max_age: int, peer: bytes, mono: int) -> bytes:
        """Register an observer (``max_age`` seconds, 0: until it goes); return its ident."""
        ident = str(uuid.uuid4()).encode()
        expires = mono + max_age * 1000 if max_age else None
        self._by_ident[ident] = Observer(ident, dsid, client, expires, peer, mono)
        self._watching.setdefault((dsid, client), set()).add(ident)
        self._by_peer[peer] += 1
        if expires is not None:
            heapq.heappush(self._expiries, (expires, ident))
        return ident

    def watching(self, job: Job) -> list[Observer]:
        """The observers a change to ``job`` goes to."""
        idents = [
            *self._watching.get((job.dsid, None), ()),
            *self._watching.get((job.dsid, job.client), ()),
        ]
        return [self._by_ident[ident] for ident in idents]

    def forget(self, ident: bytes) -> Observer | None:
        obs = self._by_ident.pop(ident, None)
        if obs is None:
            return None
        key = (obs.dsid, obs.client)
        self._watching[key].discard(ident)
        if not self._watching[key]:
            del self._watching[key]
        self._by_peer[obs.peer] -= 1
        if not self._by_peer[obs.peer]:
            del self._by_peer[obs.peer]
        return obs

    def expire(self, mono: int) -> list[bytes]:
        """Forget the observers whose ``max_age`` ran out by ``mono``; return their idents."""
        out = []
        while self._expiries and self._expiries[0][0] <= mono:
            _, ident = heapq.heappop(self._expiries)
            if self.forget(ident) is not None:
                out.append(ident)
        return out

    def next_expiry(self) -> int | None:
        """The earliest expiry (monotonic ms) of an observer still here (gone ones are dropped,
        so the loop does not wake for them)."""
        heap = self._expiries
        while heap and heap[0][1] not in self._by_ident:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def clear(self) -> None:
        for ident in list(self._by_ident):
            self.forget(ident)
