"""What a store operation is given: a :class:`Context` per batch over the :class:`Shared` parts.

An operation is a plain function ``(ctx, request, params) -> Outcome``. Through its
context it reads and writes the batch's transaction, checks the request's token, and
changes records: :meth:`Context.transition` is the one place a job's status changes,
by the tables of :mod:`jobstore.states`, recording the activity events /stats shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cbor2

from ..errors import Forbidden, NotFound, TooMany
from ..protocol import Request
from ..protocol.sealed import Change, Sealer, client_topic, server_topic
from ..records import Job
from ..states import UNSET, Event, Status, Unset, follow
from .activity import Activity
from .scheduling import Timing
from .storage import Storage, Txn, refuse_new_jobs

if TYPE_CHECKING:
    from .auth import Authoriser
    from .function_ops import FunctionCalls

# What /server/<DSID>/stats counts of each event; reports that end a job count as finished.
EVENT_KINDS = {
    Event.TAKE: "taken",
    Event.LEASE_EXPIRED: "lease_expired",
    Event.LEASE_EXHAUSTED: "lease_expired",
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Tunable behaviour; defaults as documented in docs/protocol.md."""

    lease_ms: int = 30_000
    max_attempts: int = 5
    max_take: int = 100
    max_wait_ms: int = 300_000
    page_size: int = 100
    max_page_size: int = 1000
    # A listing page stops once its records' encoding reaches this many bytes (it always holds
    # one): a record may be ~3 max frames (request, response, progress), so limit alone is not a
    # bound.
    page_bytes: int = 4 << 20
    max_active_per_client: int = 100_000
    max_active_per_datasource: int = 1_000_000
    retention_ms: int = 7 * 24 * 3600 * 1000
    purge_batch: int = 100
    history_length: int = 20
    full_at: float = 0.95  # refuse submits once the map ceiling is this full


def mono_ms() -> int:
    """A monotonic clock reading in ms (any origin): what the store clock advances with."""
    return time.monotonic_ns() // 1_000_000


# At most this much store time (ms) passes unsaved while a job holds a lease: the most a restart
# can give back to a lease (docs/operations.md, "Clocks").
SAVE_EVERY_MS = 1000


class StoreClock:
    """The clock leases are measured on: ms that advance with a monotonic clock, never the wall's.

    A wall-clock step (NTP setting the time on a box with no RTC) must neither expire
    a healthy lease nor keep a dead driver's. The reading is persisted (see
    :meth:`save_due`), and a restarted store resumes from the last one committed: the
    time the store was down does not count, since no driver could renew a lease
    meanwhile; each lease keeps what it had left, give or take SAVE_EVERY_MS.
    """

    def __init__(self, start: int) -> None:
        self._start = start
        self._origin: int | None = None  # the first monotonic reading, taken as ``start``
        self.now = start
        self.saved = start  # the reading last committed

    def save_due(self, wrote: bool, leased: bool) -> bool:
        """Whether a batch persists the reading: always when it ``wrote`` anything else (it
        commits anyway, and its change counter's meta page is dirty), else only while a job
        holds a lease (nothing else reads the saved clock) and the clock is SAVE_EVERY_MS past
        the saved reading. A batch that writes nothing costs no commit: LMDB ends a write
        transaction without dirty pages without writing or syncing."""
        return wrote or (leased and self.now - self.saved >= SAVE_EVERY_MS)

    def read(self, mono: int) -> int:
        """The store time at monotonic reading ``mono`` (ms); it never goes back."""
        if self._origin is None:
            self._origin = mono
        self.now = max(self.now, self._start + mono - self._origin)
        return self.now


@dataclass(eq=False, slots=True)
class Shared:
    """What every operation shares for the store's life: its storage, policy, clock and counters."""

    storage: Storage
    auth: Authoriser | None
    limits: Limits
    clock: StoreClock
    functions: FunctionCalls
    sealer: Sealer
    activity: Activity = field(default_factory=Activity)
    events: list[tuple[str, str]] = field(default_factory=list)  # this batch's (dsid, kind)
    full: bool = False  # new jobs are refused: the map is near its ceiling
    handled: int = 0
    transport: dict[str, int] = field(default_factory=dict)  # the socket adapter's, for /stats


class Context:
    """An operation's view of the store: the batch's transaction (or the request's own, nested
    in it), the wall time and the shared parts."""

    __slots__ = ("now", "shared", "txn")

    def __init__(self, shared: Shared, txn: Txn, now: int) -> None:
        self.shared = shared
        self.txn = txn
        self.now = now

    @property
    def limits(self) -> Limits:
        """The store's tunable limits."""
        return self.shared.limits

    def authorise(
        self,
        request: Request,
        *,
        client: str | None = None,
        path: str | None = None,
        observe: bool = False,
    ) -> None:
        """Raise unless the request's token allows it (as a GET of ``path`` when given, an observe
        when ``observe``); ``client`` is the client id the request acts for."""
        auth = self.shared.auth
        if auth is not None:
            auth.check(
                request.token,
                method="GET" if path is not None else request.method,
                path=path or request.path,
                client=client,
                observe=request.observe or ("data" if observe else None),
            )

    def get(self, dsid: str, job_id: str) -> Job:
        """The job, or NotFound."""
        job = self.txn.get(dsid, job_id)
        if job is None:
            raise NotFound(
                f'no job "{job_id}" in datasource "{dsid}"; check the job id and datasource'
            )
        return job

    def owned(self, dsid: str, job_id: str, client: str) -> Job:
        """The job, or NotFound, or Forbidden when another client submitted it."""
        job = self.get(dsid, job_id)
        if job.client != client:
            raise Forbidden(
                f'job "{job_id}" belongs to another client; use the client id it was submitted with'
            )
        return job

    def store(self, new: Job, old: Job | None) -> Change:
        """Store ``new`` (replacing ``old``) and return the change to publish."""
        txn = self.txn
        wire = new.wire()
        encoded = cbor2.dumps(wire)  # once: stored, replied and sealed as is
        txn.put(new, old, encoded)
        prev = {}
        for name in (client_topic(new.dsid, new.client), server_topic(new.dsid)):
            prev[name] = txn.topic_seq(name)
            txn.set_topic_seq(name, new.seq)
        return Change(new, prev, wire, encoded)

    def transition(
        self,
        job: Job,
        event: Event,
        *,
        lease: int = 0,
        not_before: int | Unset | None = UNSET,
        response: object = UNSET,
        progress: object = UNSET,
    ) -> Change:
        """Apply ``event`` to ``job`` as :func:`jobstore.states.follow` says, and store it."""
        shared = self.shared
        fields = follow(
            job,
            event,
            now=self.now,
            clock=shared.clock.now,
            history_length=shared.limits.history_length,
            lease=lease,
            not_before=not_before,
            response=response,
            progress=progress,
        )
        new = job.evolve(seq=self.txn.next_seq(), **fields)
        kind = EVENT_KINDS.get(event) or ("finished" if new.status.terminal else None)
        if kind is not None:
            shared.events.append((job.dsid, kind))
        return self.store(new, job)

    def hand_out(self, job: Job, lease: int) -> Change:
        """Hand ``job`` to a driver (a take, an accept, a call's delivery) for ``lease`` ms."""
        return self.transition(job, Event.TAKE, lease=lease)

    def new_job(
        self, dsid: str, job_id: str, client: str, payload: object, timing: Timing | None = None
    ) -> Change:
        """Store a new ``submitted`` job, within the queue's quotas (a submit, or a function call)."""
        timing = timing or Timing()
        self._admit(dsid, client)
        now = self.now
        job = Job(
            dsid,
            job_id,
            client,
            payload,
            Status.SUBMITTED,
            now,
            now,
            self.txn.next_seq(),
            history=((Status.SUBMITTED.value, now),),
            priority=timing.priority,
            not_before=timing.not_before,
            expires=timing.expires,
        )
        return self.store(job, None)

    def _admit(self, dsid: str, client: str) -> None:
        limits, txn = self.shared.limits, self.txn
        if self.shared.full:
            refuse_new_jobs()
        if txn.active(dsid, client) >= limits.max_active_per_client:
            raise TooMany(
                f"client {client!r} has {limits.max_active_per_client} unfinished jobs in {dsid!r}, the "
                "limit: wait for some to finish (or cancel them) before submitting more"
            )
        if txn.active(dsid) >= limits.max_active_per_datasource:
            raise TooMany(
                f"datasource {dsid!r} has {limits.max_active_per_datasource} unfinished jobs, the limit: "
                "wait for the driver to catch up before submitting more"
            )
