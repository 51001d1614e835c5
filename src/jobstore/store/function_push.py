"""Function calls on the observe socket (docs/databox.md, "Function calls"): the socket adapter's part.

Pushes calls waiting in the queue to the drivers observing them, and responses to the
callers' DEALERs, trying again while a DEALER is still connecting. Kept apart from
:mod:`jobstore.store.server` so the serve loop pays one attribute test when no function
calls are about (:attr:`CallDelivery.active`). ``send`` is the adapter's non-blocking
send to an observe-socket identity: 0, or the errno of a frame that did not go out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..protocol import notification as nt
from ..protocol import zest
from ..records import Job
from .function_ops import Effect
from .functions import is_call

if TYPE_CHECKING:
    from .operations import Service

__all__ = ["CallDelivery", "is_call"]

QUEUED_SCAN = 100  # calls of one function looked at per delivery round


class _Limits(Protocol):
    max_observers: int
    observe_connect_ms: int


class CallDelivery:
    """What the serve loop does for function calls between and after batches."""

    def __init__(
        self, service: Service, send: Callable[[bytes, bytes], int], config: _Limits
    ) -> None:
        self.service = service
        self.calls = service.functions
        self.calls.max_observations = config.max_observers
        self._send = send
        self._connect_ms = config.observe_connect_ms
        # When each observer's pushes began to fail (absent: they get through).
        self._failing: dict[bytes, int] = {}
        # Responses still to push to callers' DEALERs: path -> (frame, first try).
        self._answers: dict[bytes, tuple[bytes, int]] = {}
        # Function observers per request peer (this run's peers; a restart starts afresh),
        # counted with the Zest observers against the per-peer cap.
        self.by_peer: Counter[bytes] = Counter()
        self._peer_of: dict[bytes, bytes] = {}

    @property
    def active(self) -> bool:
        """Whether :meth:`deliver` has anything to do (the serve loop's only test)."""
        calls = self.calls
        return bool(self._answers or calls.expiring or (calls.waiting and len(calls.observations)))

    def reserve(self, peer: bytes) -> None:
        """Count an observe from ``peer`` against its cap before its batch runs."""
        self.by_peer[peer] += 1

    def observed(self, peer: bytes, effect: Effect | None) -> None:
        """The reply to a reserved observe: it holds the reservation if it registered one."""
        if effect is None or effect.observation is None:
            self._release(peer)
            return
        self._peer_of[effect.observation.ident] = peer

    def effect(self, effect: Effect, now: int) -> None:
        """Carry out what a committed observe or Notify asks (the reply gets the observe key)."""
        if effect.observation is not None:
            self.calls.observations.add(effect.observation)
        if effect.answer is not None:
            self.answer(*effect.answer, now)

    def changed(self, job: Job, now: int) -> None:
        """A call queued waits for delivery; one that ended goes to its caller."""
        if job.status.queued:
            self.calls.waiting.add(job.dsid)
        elif job.status.terminal:
            body = nt.response_for_caller(job.status.value, job.response, job.request)
            self.answer(job.dsid, job.job, body, now)

    def answer(self, function: str, call: str, body: bytes, now: int) -> None:
        """Push a response to the caller's DEALER (identity: the response path), trying again
        until it connects, for up to observe_connect_ms."""
        path = nt.response_path(function, call).encode()
        frame = nt.response_push(now, function, call, body)
        if self._send(path, frame):
            self._answers[path] = (frame, now)

    def deliver(self, now: int) -> bool:
        """Push waiting calls to their drivers, retry answers; True if there is work to commit."""
        calls = self.calls
        for obs in calls.observations.expired(now):
            self._forget(obs.ident)
            self._send(obs.ident, zest.encode_bare(zest.SERVICE_UNAVAILABLE))
        for path, (frame, first) in list(self._answers.items()):
            if not self._send(path, frame) or now - first >= self._connect_ms:
                del self._answers[path]
        if calls.waiting and len(calls.observations):
            with self.service.storage.read() as txn:
                for function in sorted(calls.waiting):
                    jobs = [j for j in txn.queued(function, QUEUED_SCAN) if is_call(j.client)]
                    if not jobs:
                        calls.waiting.discard(function)
                    for job in jobs:
                        if self._push_call(job, now):
                            calls.delivered.append((job.dsid, job.job, job.attempts))
        return calls.pending

    def _push_call(self, job: Job, now: int) -> bool:
        """Push a call to every driver observing it; whether one of them got it."""
        calls = self.calls
        frame = nt.call_push(now, job.dsid, job.job, job.request)
        fmt = nt.call_format(job.request)
        reached = False
        for obs in calls.observations.for_call(job.dsid, job.job, fmt):
            if obs.ident in calls.forget:
                continue
            if self._send(obs.ident, frame) == 0:
                reached = True
                self._failing.pop(obs.ident, None)
                continue
            # Unreachable for longer than a DEALER takes to (re)connect: its driver has gone.
            failing = self._failing.setdefault(obs.ident, now)
            if now - failing >= self._connect_ms:
                self._forget(obs.ident)
                del self._failing[obs.ident]
        return reached

    def _forget(self, ident: bytes) -> None:
        """Drop an observation at the next commit, and its count against its peer now."""
        self.calls.forget.add(ident)
        peer = self._peer_of.pop(ident, None)
        if peer is not None:
            self._release(peer)

    def _release(self, peer: bytes) -> None:
        self.by_peer[peer] -= 1
        if self.by_peer[peer] <= 0:
            del self.by_peer[peer]
