"""The batch engine under :class:`jobstore.store.operations.Service`: one durable write per batch.

:meth:`Engine.handle_batch` runs a batch of requests in one transaction (one
journal write and flush for the lot: :meth:`jobstore.store.storage.Storage.write`).
It returns, per request, the reply and the committed changes to publish; the
socket adapter sends and publishes them. The engine is given its operations as a
route function (request -> operation and path parameters) and the store's own
work to commit with every batch as hooks; it runs each operation with a
:class:`~jobstore.store.context.Context`, and itself expires leases, fails
expired jobs and purges old ones.

A failing request must leave nothing half-applied. The operations check
everything before they write, so a request that fails has almost always written
nothing, and the batch runs each request straight in the batch's transaction. If
one fails after writing (a full map, or a bug), the batch is abandoned and run
again with each request in a nested transaction of its own, which rolls back
alone. Nested transactions are not used always because they cost about as much
as the request's own writes: LMDB copies every page the request touches.

A batch that finds the map full (LMDB's MapFullError) is abandoned, the map is
doubled up to its ceiling (or, at the ceiling, the batches since the last
checkpoint are committed, which frees the pages they replaced), and the batch
runs again; only when neither is left to do does a request get 507. New jobs are
refused before that, once the data in use reaches ``Limits.full_at`` of the
ceiling, so work in flight keeps the room it needs.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import JobstoreError, Unavailable
from ..protocol import Reply, Request
from ..protocol.sealed import Change, Sealer
from ..states import Event
from .context import Context, Limits, Shared, StoreClock, mono_ms
from .scheduling import EXPIRED_RESPONSE, JITTER, retry_not_before
from .storage import MapFull, Storage, StorageError, Txn

if TYPE_CHECKING:
    from .auth import Authoriser
    from .function_ops import Effect, FunctionCalls

__all__ = [
    "Engine",
    "Hook",
    "Limits",
    "Observe",
    "Operation",
    "Outcome",
    "Route",
    "StoreClock",
    "Wait",
    "changed_reply",
    "error_reply",
    "mono_ms",
    "ok_reply",
]

log = logging.getLogger(__name__)


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


# An operation: given its context, the request and the path's parameters, what the request led to.
Operation = Callable[[Context, Request, list[str]], Outcome]
Route = tuple[Operation, list[str]]
# Work of the store's own to commit with every batch (a function call's delivery); its changes.
Hook = Callable[[Context], list[Change]]


class Engine:
    """Runs batches of requests over a :class:`Storage`, with the operations ``route`` finds."""

    def __init__(
        self,
        storage: Storage,
        route: Callable[[Request], Route],
        functions: FunctionCalls,
        *,
        auth: Authoriser | None = None,
        limits: Limits | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.route = route
        self.hooks = tuple(hooks)
        self.misplaced: str | None = None  # why writes are refused: the data directory went away
        self._watch_at = 0
        # (method, path) -> route: a hot path is matched and its names checked once, not per request.
        self._routes: dict[tuple[str, str], Route] = {}
        with storage.read() as txn:
            self.next_lease = txn.next_lease()
            self.next_timer = _next_timer(txn)
            clock = StoreClock(txn.clock())
        self.shared = Shared(
            storage, auth, limits or Limits(), clock, functions, Sealer(storage.secret)
        )

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
        return self.next_lease - self.shared.clock.read(mono)

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
        shared = self.shared
        storage = shared.storage
        self.watch_data_dir(now)
        shared.clock.read(mono_ms() if mono is None else mono)
        shared.full = storage.grow(shared.limits.full_at)
        handled = list(requests)
        shared.handled += len(requests)

        def wake_once(queued: Mapping[str, int]) -> Sequence[Request]:
            woken = wake(queued) if wake is not None else []
            handled.extend(woken)
            shared.handled += len(woken)
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
                    # Full in a request: retry in a larger map, or after a checkpoint.
                    if not storage.make_room():
                        raise
                    log.info("data file full: retrying in a map of %d bytes", storage.map_size())
                # The takes woken already run again too, after the batch's own requests.
                batch = list(handled)
            shared.activity.record(shared.events, now)
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
        storage = self.shared.storage
        problem = storage.misplaced()
        if problem != self.misplaced:
            if problem is not None:
                log.error(
                    "%s: refusing every write until the store is restarted on its data "
                    "(changes now would be lost)",
                    problem,
                )
            else:
                log.warning("the data directory %s is back: accepting writes", storage.path)
        self.misplaced = problem

    def _batch(
        self,
        requests: Sequence[Request],
        now: int,
        wake: Callable[[Mapping[str, int]], Sequence[Request]] | None,
        *,
        isolate: bool,
    ) -> tuple[list[Change], list[Outcome]]:
        shared = self.shared
        shared.events.clear()
        with shared.storage.write() as txn:
            ctx = Context(shared, txn, now)  # every request's, but in a nested transaction
            expired, fell_due = [], Counter[str]()
            if not self.misplaced:
                expired = self._expire(txn, now)
                for hook in self.hooks:
                    expired += hook(ctx)
                fell_due = self._schedule(txn, now, expired)
            outcomes = [self._one(ctx, request, isolate) for request in requests]
            # How many jobs each datasource gained in its queue: that many waiting takes may wake.
            queued = Counter(c.job.dsid for o in outcomes for c in o.changes if c.job.status.queued)
            queued.update(c.job.dsid for c in expired if c.job.status.queued)
            queued.update(fell_due)
            for outcome in outcomes:
                queued.update(outcome.ready)
            for i, outcome in enumerate(outcomes):
                # A take that came before a submit in this batch tries again at once.
                if outcome.wait is not None and outcome.wait.dsid in queued:
                    outcomes[i] = self._one(ctx, requests[i], isolate)
            if wake is not None and queued:
                outcomes += [self._one(ctx, request, isolate) for request in wake(queued)]
            if not self.misplaced:
                self._purge(txn, now)
            self.next_lease = txn.next_lease()
            self.next_timer = _next_timer(txn)
            save = shared.clock.save_due(txn.writes > 0, self.next_lease is not None)
            if save:
                txn.set_clock(shared.clock.now)
        if save:
            shared.clock.saved = shared.clock.now
        return expired, outcomes

    def _purge(self, txn: Txn, now: int) -> None:
        """Drop a small batch of terminal jobs past retention, so no batch is held up for long."""
        limits = self.shared.limits
        ended = txn.ended_before(now - limits.retention_ms, limits.purge_batch)
        if ended:  # a nested transaction costs more than the lookup: only when there is work
            with txn.nested() as child:
                for job in ended:
                    child.delete(job)

    def _one(self, ctx: Context, request: Request, isolate: bool) -> Outcome:
        txn, events = ctx.txn, self.shared.events
        mark, writes = len(events), txn.writes
        try:
            if self.misplaced is not None and request.method != "GET":
                raise Unavailable(
                    f"the store's data directory is gone ({self.misplaced}): writes are refused "
                    "until the operator restarts the store on its data; retry later"
                )
            operation, params = self._route(request)
            if not isolate:
                return operation(ctx, request, params)
            with txn.nested() as child:
                return operation(Context(self.shared, child, ctx.now), request, params)
        except Exception as exc:
            if isinstance(exc, MapFull) and self.shared.storage.could_make_room():
                raise  # the batch runs again in a larger map
            if txn.writes != writes:
                raise _Isolate from exc  # only a nested transaction can undo what it wrote
            error = _failure(request, exc)
        del events[mark:]  # the request's changes were rolled back, and so are its events
        return Outcome(error_reply(request, error))

    def _route(self, request: Request) -> Route:
        key = (request.method, request.path)
        found = self._routes.get(key)
        if found is None:
            found = self.route(request)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[key] = found
        return found

    def _expire(self, txn: Txn, now: int) -> list[Change]:
        """Send back the jobs whose lease has run out on the store clock (``now`` is the wall's)."""
        shared = self.shared
        clock = shared.clock.now
        if self.next_lease is None or self.next_lease > clock:
            return []
        changes = []
        with txn.nested() as child:
            ctx = Context(shared, child, now)
            for job in child.expired(clock, 1000):
                settings = child.settings(job.dsid)
                if job.attempts >= (settings.max_attempts or shared.limits.max_attempts):
                    response = job.response
                    if response is None:
                        response = {"error": f"lease ran out {job.attempts} times; giving up"}
                    changes.append(ctx.transition(job, Event.LEASE_EXHAUSTED, response=response))
                else:
                    due = retry_not_before(now, None, settings, job.attempts, jitter())
                    changes.append(ctx.transition(job, Event.LEASE_EXPIRED, not_before=due))
        return changes

    def _schedule(self, txn: Txn, now: int, changes: list[Change]) -> Counter[str]:
        """Fail the queued jobs whose ``expires`` has come (their changes join ``changes``) and move
        the delayed jobs due by ``now`` into the take order; return how many each datasource got."""
        fell_due: Counter[str] = Counter()
        if self.next_timer is None or self.next_timer > now:
            return fell_due
        with txn.nested() as child:
            ctx = Context(self.shared, child, now)
            for job in child.expiring(now, 1000):
                response = dict(EXPIRED_RESPONSE)
                changes.append(ctx.transition(job, Event.EXPIRED, response=response))
            fell_due.update(entry.dsid for entry in child.advance(now, 1000))
        return fell_due


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
    """The reply to a request that failed with ``exc``."""
    return Reply(exc.status, exc.body, exc.message, request.id)


def ok_reply(request: Request, body: Any) -> Reply:
    """A 200 reply with ``body``."""
    return Reply(200, body, id=request.id)


def changed_reply(request: Request, change: Change, status: int = 200) -> Reply:
    """A reply carrying the changed record, already encoded."""
    return Reply(status, change.wire, id=request.id, encoded_body=change.encoded)
