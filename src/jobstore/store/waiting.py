"""Takes that wait for a job (``wait`` in a take): parked per datasource until a job or their deadline.

A take that finds nothing and may wait is parked here; a submit (or a lease
running out) wakes the oldest parked takes of its datasource, one per job gained,
and a take whose deadline comes is run once more and answered with what it finds.
Deadlines are on the monotonic clock: a wall-clock step neither ends a wait early
nor keeps a driver waiting an hour. No sockets here: each parked take carries an
opaque ``token`` (the socket adapter's envelope) and the peer it counts against.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..protocol import Request

T = TypeVar("T")


@dataclass(slots=True)
class Parked(Generic[T]):
    """A waiting take: its request, the adapter's ``token`` for it, and its monotonic deadline."""

    request: Request
    token: T
    peer: bytes
    dsid: str
    deadline: int
    serial: int

    def retry(self, mono: int) -> Request:
        """The take to run again at ``mono``: it waits only what is left of its deadline."""
        body = {**self.request.body, "wait": max(0, self.deadline - mono)}
        return self.request._replace(body=body)


class WaitingTakes(Generic[T]):
    """The parked takes of a store, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Per datasource, oldest first, keyed by serial; the deadlines in a heap.
        self._parked: dict[str, OrderedDict[int, Parked[T]]] = {}
        self._deadlines: list[tuple[int, int, str]] = []  # (deadline, serial, dsid)
        self._serials = itertools.count()
        self.count = 0
        self.by_peer: Counter[bytes] = Counter()

    def park(
        self, request: Request, token: T, peer: bytes, dsid: str, wait_ms: int, mono: int
    ) -> Parked[T] | None:
        """Park a take that found nothing, to wait ``wait_ms`` from ``mono``; None past the limit."""
        if self.count >= self.limit:
            return None
        parked = Parked(request, token, peer, dsid, mono + wait_ms, next(self._serials))
        heapq.heappush(self._deadlines, (parked.deadline, parked.serial, dsid))
        if len(self._deadlines) > 2 * self.count + 64:
            # Mostly entries of takes woken and answered: rebuild from those still parked.
            self._deadlines = [(p.deadline, p.serial, p.dsid) for p in self._all()]
            self._deadlines.append((parked.deadline, parked.serial, dsid))
            heapq.heapify(self._deadlines)
        self._enter(parked)
        return parked

    def repark(self, parked: Parked[T]) -> None:
        """Park again a take woken that found nothing (another took the job): it keeps its place
        in the deadline heap, its deadline and its serial, so it queues behind older takes."""
        self._enter(parked)

    def due(self, mono: int) -> list[Parked[T]]:
        """Take out the parked takes whose deadline has come by ``mono``."""
        out: list[Parked[T]] = []
        while self._deadlines and self._deadlines[0][0] <= mono:
            _, serial, dsid = heapq.heappop(self._deadlines)
            parked = self._leave(dsid, serial)
            if parked is not None:  # else it was woken and answered already
                out.append(parked)
        return out

    def wake(self, dsid: str, count: int) -> list[Parked[T]]:
        """Take out the ``count`` oldest parked takes of ``dsid``: one per job it gained."""
        queue = self._parked.get(dsid)
        out: list[Parked[T]] = []
        while queue and len(out) < count:
            parked = self._leave(dsid, next(iter(queue)))
            if parked is not None:
                out.append(parked)
            queue = self._parked.get(dsid)
        return out

    def next_deadline(self) -> int | None:
        """The earliest deadline (monotonic ms) of a take still parked.

        The heap's tops left by takes woken and answered are dropped here: at home load
        every job leaves one, and the loop would wake for it 200 ms later for nothing.
        Not called while a woken take is out for its retry (it keeps its heap entry).
        """
        heap, parked = self._deadlines, self._parked
        while heap and heap[0][1] not in parked.get(heap[0][2], ()):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def end_all(self, mono: int) -> None:
        """Bring every deadline to ``mono`` (the store is stopping): :meth:`due` returns them all."""
        for parked in self._all():
            parked.deadline = mono
            heapq.heappush(self._deadlines, (mono, parked.serial, parked.dsid))

    def _all(self) -> list[Parked[T]]:
        return [p for queue in self._parked.values() for p in queue.values()]

    def _enter(self, parked: Parked[T]) -> None:
        self._parked.setdefault(parked.dsid, OrderedDict())[parked.serial] = parked
        self.count += 1
        self.by_peer[parked.peer] += 1

    def _leave(self, dsid: str, serial: int) -> Parked[T] | None:
        queue = self._parked.get(dsid)
        parked = queue.pop(serial, None) if queue is not None else None
        if parked is None:
            return None
        if not queue:
            del self._parked[dsid]
        self.count -= 1
        self.by_peer[parked.peer] -= 1
        if not self.by_peer[parked.peer]:
            del self.by_peer[parked.peer]
        return parked
