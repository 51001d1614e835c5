"""The batch engine under :class:`jobstore.store.operations.Service`: one commit per batch of requests.

:meth:`Engine.handle_batch` runs a batch of requests in one LMDB write
transaction (one fsync for the lot). It returns, per request, the reply and the
committed changes to publish; the socket adapter sends and publishes them. The
engine also owns what every operation shares: routing, authorisation, storing
a changed record, transitions and lease expiry.

A failing request must leave nothing half-applied. The handlers check
everything before they write, so a request that fails has almost always written
nothing, and the batch runs each request straight in the batch's transaction. If
one fails after writing (a full map, or a bug), the batch is abandoned and run
again with each request in a nested transaction of its own, which rolls back
alone. Nested transactions are not used always because they cost about as much
as the request's own writes: LMDB copies every page the request touches.

A batch that finds the map full (LMDB's MapFullError, in a request or at the
commit) is abandoned, the map is doubled up to its ceiling, and the batch runs
again; only at the ceiling does a request get 507. New jobs are refused before
that, once the data in use reaches ``Limits.full_at`` of the ceiling, so work in
flight keeps the room it needs.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2

from ..errors import (
    Forbidden,
    InvalidTransition,
    JobstoreError,
    NotFound,
    Unavailable,
)
from ..protocol import Reply, Request
from ..protocol.sealed import Change, Sealer, client_topic, server_topic
from ..records import Job
from ..states import Event, Status, apply
from .activity import Activity
from .scheduling import EXPIRED_RESPONSE, JITTER, retry_not_before
from .storage import MapFull, Storage, StorageError, Txn

if TYPE_CHECKING:
    from .auth import Authoriser
    from .function_ops import Effect

log = logging.getLogger(__name__)

# What /server/<DSID>/stats counts of each event; reports that end a job count as finished.
EVENT_KINDS = {
    Event.TAKE: "taken",
    Event.LEASE_EXPIRED: "lease_expired",
    Event.LEASE_EXHAUSTED: "lease_expired",
}


class _Isolate(Exception):
    """A request failed after writing: run the batch again, each request in a nested transaction."""


WATCH_MS = 1000  # how often the data directory is checked for being deleted or replaced


ROUTE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Wait:
    """A take that found nothing and may wait: retry it when ``dsid`` gains a job, for ``ms``."""

    dsid: str
    ms: int


@dataclass(frozen=True, slots=True)
class Observe:
    """An authorised Zest observe of one client's jobs (``client`` set) or a whole datasource."""

    dsid: str
    client: str | None
    max_age: int


@dataclass(slots=True)
class Outcome:
    """What one request led to. ``reply`` is None only when the request waits (``wait`` set)."""

    reply: Reply | None
    changes: list[Change] = field(default_factory=list)
    wait: Wait | None = None
    observe: Observe | None = None
    fn: Effect | None = None  # what a function-call request asks of the socket adapter
    # Datasources with due jobs waiting takes may get, by count (a paused queue resumed).
    ready: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    """Tunable behaviour; defaults as documented in docs/protocol.md."""

    lease_ms: int = 30_000
    max_attempts: int = 5
    max_take: int = 100
    max_wait_ms: int = 300_000
    page_size: int = 100
    max_page_size: int = 1000
    max_active_per_client: int = 100_000
    max_active_per_datasource: int = 1_000_000
    retention_ms: int = 7 * 24 * 3600 * 1000
    purge_batch: int = 100
    history_length: int = 20
    full_at: float = 0.95  # refuse submits once the map ceiling is this full


def mono_ms() -> int:
    """A monotonic clock reading in ms (any origin): what the store clock advances with."""
    return time.monotonic_ns() // 1_000_000


class StoreClock:
    """The clock leases are measured on: ms that advance with a monotonic clock, never the wall's.

    A wall-clock step (NTP setting the time on a box with no RTC) must neither expire
    a healthy lease nor keep a dead driver's. The reading is persisted with every
    batch, and a restarted store resumes from the last one committed: the time the
    store was down does not count, since no driver could renew a lease meanwhile;
    each lease keeps what it had left.
    """

    def __init__(self, start: int) -> None:
        self._start = start
        self._origin: int | None = None  # the first monotonic reading, taken as ``start``
        self.now = start

    def read(self, mono: int) -> int:
        """The store time at monotonic reading ``mono`` (ms); it never goes back."""
        if self._origin is None:
            self._origin = mono
        self.now = max(self.now, self._start + mono - self._origin)
        return self.now


# An operation: a method of the service (so ``Any`` for self), given the transaction, the
# request, the time and the path's parameters.
Handler = Callable[[Any, Txn, Request, int, list[str]], Outcome]


class Engine:
    """Runs batches of requests over a :class:`Storage`; the operations are the subclass's."""

    def __init__(
        self, storage: Storage, auth: Authoriser | None = None, limits: Limits | None = None
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.limits = limits or Limits()
        self.sealer = Sealer(storage.secret)
        self._full = False
        self.misplaced: str | None = None  # why writes are refused: the data directory went away
        self._watch_at = 0
        self.activity = Activity()
        self._events: list[tuple[str, str]] = []  # (dsid, kind) of this batch, recorded on commit
        self.handled = 0
        self.transport: dict[str, int] = {}  # counters the socket adapter keeps, shown in /stats
        # (method, path) -> route: a hot path is matched and its names checked once, not per request.
        self._routes: dict[tuple[str, str], tuple[Handler, list[str]]] = {}
        with storage.read() as txn:
            self.next_lease = txn.next_lease()
            self.next_timer = _next_timer(txn)
            self.clock = StoreClock(txn.clock())

    def handle(self, request: Request, now: int, mono: int | None = None) -> Outcome:
        """Handle one request in its own transaction."""
        expired, [outcome] = self.handle_batch([request], now, mono=mono)
        outcome.changes[:0] = expired
        return outcome

    def lease_due_in(self, mono: int) -> int | None:
        """Ms from monotonic reading ``mono`` until the earliest lease runs out (<= 0: it has), or
        None when no job holds a lease."""
        if self.next_lease is None:
            return None
        return self.next_lease - self.clock.read(mono)

    def timer_due_in(self, now: int) -> int | None:
        """Ms from wall time ``now`` until a delayed job falls due or a queued job expires (<= 0:
        one has), or None when no job waits for either."""
        return None if self.next_timer is None else self.next_timer - now

    def handle_batch(
        self,
        requests: Sequence[Request],
        now: int,
        wake: Callable[[Mapping[str, int]], Sequence[Request]] | None = None,
        mono: int | None = None,
    ) -> tuple[list[Change], list[Outcome]]:
        """Expire leases due by ``mono``, then handle ``requests``; all in one commit.

        ``now`` is the wall clock (ms since the epoch), for the records' times;
        ``mono`` a monotonic reading in ms (default: :func:`mono_ms`), for leases
        (:class:`StoreClock`).

        ``wake``, given how many jobs each datasource gained in its queue, returns
        waiting takes it has not returned before (at most that many per
        datasource), to run in the same transaction, so a job submitted to a
        waiting driver costs one commit, not two. Returns
        the changes made by lease expiry and one outcome per request, then one per
        woken request.
        """
        self.watch_data_dir(now)
        self.clock.read(mono_ms() if mono is None else mono)
        self._full = self.storage.grow() >= self.limits.full_at
        handled = list(requests)
        self.handled += len(requests)

        def wake_once(queued: Mapping[str, int]) -> Sequence[Request]:
            woken = wake(queued) if wake is not None else []
            handled.extend(woken)
            self.handled += len(woken)
            return woken

        batch: Sequence[Request] = requests
        isolate = False
        try:
            while True:
                try:
                    expired, outcomes = self._batch(batch, now, wake_once, isolate=isolate)
                    break
                except _Isolate:
                    isolate = True
                except MapFull:
                    # Full in a request or at the commit: retry in a larger map, if there is one.
                    if not self.storage.enlarge():
                        raise
                    log.info("data file full: map grown to %d bytes", self.storage.map_size())
                # The takes woken already run again too, after the batch's own requests.
                batch = list(handled)
            self.activity.record(self._events, now)
        except JobstoreError as exc:
            if isinstance(exc, StorageError):
                log.exception("commit failed")
            return [], [Outcome(error_reply(r, exc)) for r in handled]
        return expired, outcomes

    def watch_data_dir(self, now: int) -> None:
        """Every WATCH_MS, check the data directory is still the one opened; refuse writes
        (503) while it is not. The server also calls this when idle."""
        if now < self._watch_at:
            return
        self._watch_at = now + WATCH_MS
        problem = self.storage.misplaced()
        if problem != self.misplaced:
            if problem is not None:
                log.error(
                    "%s: refusing every write until the store is restarted on its data "
                    "(changes now would be lost)",
                    problem,
                )
            else:
                log.warning("the data directory %s is back: accepting writes", self.storage.path)
        self.misplaced = problem

    def _batch(
        self,
        requests: Sequence[Request],
        now: int,
        wake: Callable[[Mapping[str, int]], Sequence[Request]] | None,
        *,
        isolate: bool,
    ) -> tuple[list[Change], list[Outcome]]:
        self._events.clear()
        with self.storage.write() as txn:
            txn.set_clock(self.clock.now)
            expired, fell_due = [], Counter[str]()
            if not self.misplaced:
                expired = self._expire(txn, now) + self._internal(txn, now)
                fell_due = self._schedule(txn, now, expired)
            outcomes = [self._one(txn, request, now, isolate) for request in requests]
            # How many jobs each datasource gained in its queue: that many waiting takes may wake.
            queued = Counter(c.job.dsid for o in outcomes for c in o.changes if c.job.status.queued)
            queued.update(c.job.dsid for c in expired if c.job.status.queued)
            queued.update(fell_due)
            for outcome in outcomes:
                queued.update(outcome.ready)
            for i, outcome in enumerate(outcomes):
                # A take that came before a submit in this batch tries again at once.
                if outcome.wait is not None and outcome.wait.dsid in queued:
                    outcomes[i] = self._one(txn, requests[i], now, isolate)
            if wake is not None and queued:
                outcomes += [self._one(txn, request, now, isolate) for request in wake(queued)]
            if not self.misplaced:
                self._purge(txn, now)
            self.next_lease = txn.next_lease()
            self.next_timer = _next_timer(txn)
        return expired, outcomes

    def _purge(self, txn: Txn, now: int) -> None:
        """Drop a small batch of terminal jobs past retention, so no batch is held up for long."""
        with txn.nested() as child:
            for job in child.ended_before(now - self.limits.retention_ms, self.limits.purge_batch):
                child.delete(job)

    def _one(self, txn: Txn, request: Request, now: int, isolate: bool) -> Outcome:
        mark, writes = len(self._events), txn.writes
        try:
            if self.misplaced is not None and request.method != "GET":
                raise Unavailable(
                    f"the store's data directory is gone ({self.misplaced}): writes are refused "
                    "until the operator restarts the store on its data; retry later"
                )
            handler, params = self._route(request)
            if not isolate:
                return handler(self, txn, request, now, params)
            with txn.nested() as child:
                return handler(self, child, request, now, params)
        except Exception as exc:
            if isinstance(exc, MapFull) and not self.storage.at_ceiling():
                raise  # the batch runs again in a larger map
            if txn.writes != writes:
                raise _Isolate from exc  # only a nested transaction can undo what it wrote
            error = _failure(request, exc)
        del self._events[mark:]  # the request's changes were rolled back, and so are its events
        return Outcome(error_reply(request, error))

    def _route(self, request: Request) -> tuple[Handler, list[str]]:
        key = (request.method, request.path)
        found = self._routes.get(key)
        if found is None:
            found = self.route(request)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[key] = found
        return found

    def _authorise(
        self,
        request: Request,
        *,
        client: str | None = None,
        path: str | None = None,
        observe: bool = False,
    ) -> None:
        if self.auth is not None:
            self.auth.check(
                request.token,
                method="GET" if path is not None else request.method,
                path=path or request.path,
                client=client,
                observe=request.observe or ("data" if observe else None),
            )

    def _store(self, txn: Txn, new: Job, old: Job | None) -> Change:
        """Store ``new`` (replacing ``old``) and return the change to publish."""
        wire = new.wire()
        encoded = cbor2.dumps(wire)  # once: stored, replied and sealed as is
        txn.put(new, old, encoded)
        prev = {}
        for name in (client_topic(new.dsid, new.client), server_topic(new.dsid)):
            prev[name] = txn.topic_seq(name)
            txn.set_topic_seq(name, new.seq)
        return Change(new, prev, wire, encoded)

    def hand_out(self, txn: Txn, job: Job, now: int, lease: int) -> Change:
        """Hand ``job`` to a driver (a take or an accept) for ``lease`` ms: one more attempt."""
        return self._transition(
            txn,
            job,
            Event.TAKE,
            now,
            attempts=job.attempts + 1,
            lease_until=self.clock.now + lease,
            lease_ms=lease,
        )

    def _transition(self, txn: Txn, job: Job, event: Event, now: int, **fields: Any) -> Change:
        try:
            status = apply(job.status, event)
        except InvalidTransition as exc:
            exc.body = job.wire()
            raise
        if status is not Status.ACCEPTED:
            fields["lease_until"] = fields["lease_ms"] = 0
        # The wall clock may have been set back: a record's times never go back.
        updated = max(now, job.updated)
        if status is not job.status:
            fields["history"] = (*job.history, (status.value, updated))[
                -self.limits.history_length :
            ]
        new = job.evolve(status=status, updated=updated, seq=txn.next_seq(), **fields)
        kind = EVENT_KINDS.get(event) or ("finished" if status.terminal else None)
        if kind is not None:
            self._events.append((job.dsid, kind))
        return self._store(txn, new, job)

    def _expire(self, txn: Txn, now: int) -> list[Change]:
        """Send back the jobs whose lease has run out on the store clock (``now`` is the wall's)."""
        clock = self.clock.now
        if self.next_lease is None or self.next_lease > clock:
            return []
        changes = []
        with txn.nested() as child:
            for job in child.expired(clock, 1000):
                settings = child.settings(job.dsid)
                if job.attempts >= (settings.max_attempts or self.limits.max_attempts):
                    response = job.response
                    if response is None:
                        response = {"error": f"lease ran out {job.attempts} times; giving up"}
                    changes.append(
                        self._transition(child, job, Event.LEASE_EXHAUSTED, now, response=response)
                    )
                else:
                    due = retry_not_before(now, None, settings, job.attempts, jitter())
                    changes.append(
                        self._transition(child, job, Event.LEASE_EXPIRED, now, not_before=due)
                    )
        return changes

    def _internal(self, txn: Txn, now: int) -> list[Change]:
        """Work of the store's own to commit with every batch (the subclass's); its changes."""
        return []

    def _schedule(self, txn: Txn, now: int, changes: list[Change]) -> Counter[str]:
        """Fail the queued jobs whose ``expires`` has come (their changes join ``changes``) and move
        the delayed jobs due by ``now`` into the take order; return how many each datasource got."""
        fell_due: Counter[str] = Counter()
        if self.next_timer is None or self.next_timer > now:
            return fell_due
        with txn.nested() as child:
            for job in child.expiring(now, 1000):
                response = dict(EXPIRED_RESPONSE)
                changes.append(self._transition(child, job, Event.EXPIRED, now, response=response))
            fell_due.update(entry.dsid for entry in child.advance(now, 1000))
        return fell_due

    def _owned(self, txn: Txn, dsid: str, job_id: str, client: str) -> Job:
        job = self._get(txn, dsid, job_id)
        if job.client != client:
            raise Forbidden(
                f'job "{job_id}" belongs to another client; use the client id it was submitted with'
            )
        return job

    def _get(self, txn: Txn, dsid: str, job_id: str) -> Job:
        job = txn.get(dsid, job_id)
        if job is None:
            raise NotFound(
                f'no job "{job_id}" in datasource "{dsid}"; check the job id and datasource'
            )
        return job

    def route(self, request: Request) -> tuple[Handler, list[str]]:
        """The handler and path parameters of a request; the service defines its routes."""
        raise NotImplementedError


def _next_timer(txn: Txn) -> int | None:
    times = [t for t in (txn.next_due(), txn.next_expiry()) if t is not None]
    return min(times) if times else None


def jitter() -> float:
    """The random factor of a backoff delay (:data:`jobstore.store.scheduling.JITTER`)."""
    return random.uniform(*JITTER)


def _failure(request: Request, exc: Exception) -> JobstoreError:
    """The error to answer a request that raised ``exc``."""
    if isinstance(exc, JobstoreError):
        return exc
    log.error("unexpected error handling %s %s", request.method, request.path, exc_info=exc)
    return JobstoreError("internal error in the store; it has been logged, please report it")


def error_reply(request: Request, exc: JobstoreError) -> Reply:
    return Reply(exc.status, exc.body, exc.message, request.id)


def ok_reply(request: Request, body: Any) -> Reply:
    return Reply(200, body, id=request.id)


def changed_reply(request: Request, change: Change, status: int = 200) -> Reply:
    """A reply carrying the changed record, already encoded."""
    return Reply(status, change.wire, id=request.id, encoded_body=change.encoded)
