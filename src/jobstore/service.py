"""The job store's operations, routed from (method, path); no sockets here.

:meth:`Service.handle_batch` runs a batch of requests in one LMDB write
transaction (one fsync for the lot). It returns, per request, the reply and the
committed changes to publish; the socket adapter sends and publishes them.

A failing request must leave nothing half-applied. The handlers check
everything before they write, so a request that fails has almost always written
nothing, and the batch runs each request straight in the batch's transaction. If
one fails after writing (a full map, or a bug), the batch is abandoned and run
again with each request in a nested transaction of its own, which rolls back
alone. Nested transactions are not used always because they cost about as much
as the request's own writes: LMDB copies every page the request touches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2
import lmdb

from . import hypercat
from .activity import Activity
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidTransition,
    JobstoreError,
    MethodNotAllowed,
    NotFound,
    StorageFull,
    TooMany,
)
from .notify import Change, Sealer, client_topic, server_topic
from .protocol import Reply, Request
from .protocol.cbor import jobs_body
from .records import RESERVED_DSIDS, Job, check_dsid, check_name
from .states import REPORTS, Event, Status, apply
from .storage import Storage, Txn
from .validation import (
    body_map,
    canonical,
    check_plain,
    int_field,
    names,
    seq_segment,
    status_name,
)

if TYPE_CHECKING:
    from .auth import Authoriser

log = logging.getLogger(__name__)

# What /server/<DSID>/stats counts of each event; reports that end a job count as finished.
EVENT_KINDS = {
    Event.TAKE: "taken",
    Event.LEASE_EXPIRED: "lease_expired",
    Event.LEASE_EXHAUSTED: "lease_expired",
}
SCAN_LIMIT = 10_000


class _Isolate(Exception):
    """A request failed after writing: run the batch again, each request in a nested transaction."""


ROUTE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Wait:
    """A take that found nothing and may wait: retry it when ``dsid`` gains a job, until ``deadline``."""

    dsid: str
    deadline: int


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


Handler = Callable[["Service", Txn, Request, int, list[str]], Outcome]


class Service:
    """Routes requests to job operations over a :class:`Storage`."""

    def __init__(
        self, storage: Storage, auth: Authoriser | None = None, limits: Limits | None = None
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.limits = limits or Limits()
        self.sealer = Sealer(storage.secret)
        self._full = False
        self.activity = Activity()
        self._events: list[tuple[str, str]] = []  # (dsid, kind) of this batch, recorded on commit
        self.handled = 0
        self.transport: dict[str, int] = {}  # counters the socket adapter keeps, shown in /stats
        # (method, path) -> route: a hot path is matched and its names checked once, not per request.
        self._routes: dict[tuple[str, str], tuple[Handler, list[str]]] = {}
        with storage.read() as txn:
            self.next_lease = txn.next_lease()

    def handle(self, request: Request, now: int) -> Outcome:
        """Handle one request in its own transaction."""
        expired, [outcome] = self.handle_batch([request], now)
        outcome.changes[:0] = expired
        return outcome

    def handle_batch(
        self,
        requests: Sequence[Request],
        now: int,
        wake: Callable[[set[str]], Sequence[Request]] | None = None,
    ) -> tuple[list[Change], list[Outcome]]:
        """Expire leases due by ``now``, then handle ``requests``; all in one commit.

        ``wake``, given the datasources that gained queued jobs, returns the
        waiting takes it has not returned before, to run in the same transaction,
        so a job submitted to a waiting driver costs one commit, not two. Returns the changes made by lease
        expiry and one outcome per request, then one per woken request.
        """
        self._full = self.storage.grow() >= self.limits.full_at
        handled = list(requests)
        self.handled += len(requests)

        def wake_once(dsids: set[str]) -> Sequence[Request]:
            woken = wake(dsids) if wake is not None else []
            handled.extend(woken)
            self.handled += len(woken)
            return woken

        try:
            try:
                expired, outcomes = self._batch(requests, now, wake_once, isolate=False)
            except _Isolate:
                # The takes woken already run again too, after the batch's own requests.
                expired, outcomes = self._batch(list(handled), now, wake_once, isolate=True)
            self.activity.record(self._events, now)
        except JobstoreError as exc:
            return [], [Outcome(_error(r, exc)) for r in handled]
        except lmdb.Error as exc:
            log.exception("commit failed")
            err = JobstoreError(f"the store could not commit this batch ({exc}); retry the request")
            return [], [Outcome(_error(r, err)) for r in handled]
        return expired, outcomes

    def _batch(
        self,
        requests: Sequence[Request],
        now: int,
        wake: Callable[[set[str]], Sequence[Request]] | None,
        *,
        isolate: bool,
    ) -> tuple[list[Change], list[Outcome]]:
        self._events.clear()
        with self.storage.write() as txn:
            expired = self._expire(txn, now)
            outcomes = [self._one(txn, request, now, isolate) for request in requests]
            queued = {c.job.dsid for o in outcomes for c in o.changes if c.job.status.queued}
            queued.update(c.job.dsid for c in expired if c.job.status.queued)
            for i, outcome in enumerate(outcomes):
                # A take that came before a submit in this batch tries again at once.
                if outcome.wait is not None and outcome.wait.dsid in queued:
                    outcomes[i] = self._one(txn, requests[i], now, isolate)
            if wake is not None and queued:
                outcomes += [self._one(txn, request, now, isolate) for request in wake(queued)]
            self._purge(txn, now)
            self.next_lease = txn.next_lease()
        return expired, outcomes

    def _purge(self, txn: Txn, now: int) -> None:
        """Drop a small batch of terminal jobs past retention, so no batch is held up for long."""
        with txn.nested() as child:
            for job in child.ended_before(now - self.limits.retention_ms, self.limits.purge_batch):
                child.delete(job)

    def _one(self, txn: Txn, request: Request, now: int, isolate: bool) -> Outcome:
        mark, writes = len(self._events), txn.writes
        try:
            handler, params = self._route(request)
            if not isolate:
                return handler(self, txn, request, now, params)
            with txn.nested() as child:
                return handler(self, child, request, now, params)
        except Exception as exc:
            if txn.writes != writes:
                raise _Isolate from exc  # only a nested transaction can undo what it wrote
            error = _failure(request, exc)
        del self._events[mark:]  # the request's changes were rolled back, and so are its events
        return Outcome(_error(request, error))

    def _route(self, request: Request) -> tuple[Handler, list[str]]:
        key = (request.method, request.path)
        found = self._routes.get(key)
        if found is None:
            found = route(request)
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
                observe=observe or request.observe is not None,
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

    def _transition(self, txn: Txn, job: Job, event: Event, now: int, **fields: Any) -> Change:
        try:
            status = apply(job.status, event)
        except InvalidTransition as exc:
            exc.body = job.wire()
            raise
        if status is not Status.ACCEPTED:
            fields["lease_until"] = 0
        if status is not job.status:
            fields["history"] = (*job.history, (status.value, now))[-self.limits.history_length :]
        new = job.evolve(status=status, updated=now, seq=txn.next_seq(), **fields)
        kind = EVENT_KINDS.get(event) or ("finished" if status.terminal else None)
        if kind is not None:
            self._events.append((job.dsid, kind))
        return self._store(txn, new, job)

    def _expire(self, txn: Txn, now: int) -> list[Change]:
        if self.next_lease is None or self.next_lease > now:
            return []
        changes = []
        with txn.nested() as child:
            for job in child.expired(now, 1000):
                if job.attempts >= self.limits.max_attempts:
                    response = job.response
                    if response is None:
                        response = {"error": f"lease ran out {job.attempts} times; giving up"}
                    changes.append(
                        self._transition(child, job, Event.LEASE_EXHAUSTED, now, response=response)
                    )
                else:
                    changes.append(self._transition(child, job, Event.LEASE_EXPIRED, now))
        return changes

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

    # Client API (contract section 4)

    def submit(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        dsid = params[0]
        body = body_map(request, required=("job", "client"), optional=("request",))
        job_id, client = check_name("job", body["job"]), check_name("client", body["client"])
        self._authorise(request, client=client)
        payload = body.get("request")
        check_plain("request", payload)
        existing = txn.get(dsid, job_id)
        if existing is not None:
            if existing.client != client:
                raise Conflict(
                    f'job id "{job_id}" already belongs to another client; use a fresh GUID per job'
                )
            if canonical(existing.request) != canonical(payload):
                raise Conflict(
                    f'job id "{job_id}" was already submitted with a different request; '
                    "use a fresh GUID per job",
                    existing.wire(),
                )
            return Outcome(_ok(request, existing.wire()))
        self._admit(txn, dsid, client)
        seq = txn.next_seq()
        history = ((Status.SUBMITTED.value, now),)
        job = Job(dsid, job_id, client, payload, Status.SUBMITTED, now, now, seq, history=history)
        change = self._store(txn, job, None)
        return Outcome(_changed(request, change, 201), [change])

    def _admit(self, txn: Txn, dsid: str, client: str) -> None:
        limits = self.limits
        if self._full:
            raise StorageFull(
                "the store is full: new jobs are refused until old ones are purged (cancels, status "
                "reports and reads still work); ask the operator to raise --max-map-size"
            )
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

    def cancel(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        body = body_map(request, required=("job", "client"))
        job_id, client = check_name("job", body["job"]), check_name("client", body["client"])
        self._authorise(request, client=client)
        job = self._owned(txn, params[0], job_id, client)
        if job.status.terminal or job.cancel_requested:
            return Outcome(_ok(request, job.wire()))
        change = self._transition(txn, job, Event.CLIENT_CANCEL, now, cancel_requested=True)
        return Outcome(_changed(request, change), [change])

    def query(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        body = body_map(request, required=("client",), optional=("job", "since", "limit"))
        client = check_name("client", body["client"])
        if "job" in body:
            if "since" in body or "limit" in body:
                raise BadRequest(
                    "give either job (one job's status) or since/limit (a listing), not both"
                )
            return self._status(request, txn, params[0], client, check_name("job", body["job"]))
        return self._list(request, txn, params[0], client, body)

    def status_by_path(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        return self._status(request, txn, params[0], params[1], params[2])

    def list_by_path(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        dsid, client = params[0], params[1]
        if request.observe is not None:
            self._authorise(request, client=client)
            return Outcome(_ok(request, None), observe=Observe(dsid, client, request.max_age))
        since = {"since": seq_segment(params[2])} if len(params) > 2 else {}
        return self._list(request, txn, dsid, client, since)

    def _status(self, request: Request, txn: Txn, dsid: str, client: str, job_id: str) -> Outcome:
        self._authorise(request, client=client)
        return Outcome(_ok(request, self._owned(txn, dsid, job_id, client).wire()))

    def _list(
        self, request: Request, txn: Txn, dsid: str, client: str | None, body: dict[str, Any]
    ) -> Outcome:
        self._authorise(request, client=client)
        since = int_field(body, "since", 0, 0, 2**63)
        limit = int_field(body, "limit", self.limits.page_size, 1, self.limits.max_page_size)
        status = body.get("status")
        if status is not None:
            status = status_name(status)
        jobs: list[dict[str, Any]] = []
        last, scanned = since, 0
        for seq, job in txn.changed_since(dsid, client, since):
            if len(jobs) == limit or scanned == SCAN_LIMIT:
                return Outcome(_ok(request, {"jobs": jobs, "next": last}))
            scanned, last = scanned + 1, seq
            if status is None or job.status is status:
                jobs.append(job.wire())
        return Outcome(_ok(request, {"jobs": jobs, "next": None}))

    def subscribe(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        dsid = params[0]
        body = body_map(request, required=("client",))
        client = check_name("client", body["client"])
        self._authorise(request, client=client, path=f"/{dsid}/job/{client}", observe=True)
        return self._subscription(request, txn, client_topic(dsid, client))

    def _subscription(self, request: Request, txn: Txn, name: str) -> Outcome:
        reply = {
            "topic": self.sealer.topic(name).decode(),
            "key": self.sealer.key(name),
            "seq": txn.topic_seq(name),
        }
        return Outcome(_ok(request, reply))

    # Server API (contract section 5)

    def server_list(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        dsid = params[0]
        if request.observe is not None:
            self._authorise(request)
            return Outcome(_ok(request, None), observe=Observe(dsid, None, request.max_age))
        body = body_map(request, optional=("status", "client", "since", "limit"))
        client = body.get("client")
        if client is not None:
            check_name("client", client)
        return self._list(request, txn, dsid, client, body)

    def take(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        dsid = params[0]
        body = body_map(request, optional=("max", "lease", "wait"))
        limits = self.limits
        count = int_field(body, "max", 1, 1, limits.max_take)
        lease = int_field(body, "lease", limits.lease_ms, 1, 2**40)
        wait = int_field(body, "wait", 0, 0, limits.max_wait_ms)
        self._authorise(request)
        jobs = txn.queued(dsid, count)
        if not jobs and wait:
            return Outcome(None, wait=Wait(dsid, now + wait))
        changes = [
            self._transition(
                txn, job, Event.TAKE, now, attempts=job.attempts + 1, lease_until=now + lease
            )
            for job in jobs
        ]
        body = {"jobs": [c.wire for c in changes]}
        encoded = jobs_body([c.encoded for c in changes])
        return Outcome(Reply(200, body, id=request.id, encoded_body=encoded), changes)

    def accept(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        body = body_map(request, required=("job",), optional=("lease",))
        job_id = check_name("job", body["job"])
        lease = int_field(body, "lease", self.limits.lease_ms, 1, 2**40)
        self._authorise(request)
        job = self._get(txn, params[0], job_id)
        change = self._transition(
            txn, job, Event.TAKE, now, attempts=job.attempts + 1, lease_until=now + lease
        )
        return Outcome(_changed(request, change), [change])

    def report(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        body = body_map(
            request, required=("job", "status"), optional=("response", "progress", "lease")
        )
        job_id = check_name("job", body["job"])
        status = status_name(body["status"])
        lease = int_field(body, "lease", self.limits.lease_ms, 1, 2**40)
        fields: dict[str, Any] = {k: body[k] for k in ("response", "progress") if k in body}
        for key, value in fields.items():
            check_plain(key, value)
        self._authorise(request)
        job = self._get(txn, params[0], job_id)
        event = REPORTS.get(status)
        if event is None:
            raise Conflict(
                f"a server cannot set status {status.value!r}; report one of " + names(REPORTS),
                job.wire(),
            )
        if status is Status.ACCEPTED:
            fields["lease_until"] = now + lease
        change = self._transition(txn, job, event, now, **fields)
        return Outcome(_changed(request, change), [change])

    # Hypercat (contract section 9)

    def cat_get(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        self._authorise(request)
        return Outcome(_ok(request, hypercat.catalogue(txn.catalogue_items())))

    def cat_post(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        self._authorise(request)
        item = hypercat.check_item(request.body)
        txn.set_catalogue_items(hypercat.upsert(txn.catalogue_items(), item))
        return Outcome(_ok(request, item))

    # Statistics

    def ds_stats(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        dsid = params[0]
        self._authorise(request)
        oldest = txn.oldest_queued(dsid)
        last_minute = {
            kind: self.activity.last_minute(dsid, kind, now)
            for kind in ("taken", "finished", "lease_expired")
        }
        body = {
            "dsid": dsid,
            "by_status": txn.by_status(dsid),
            "unfinished": txn.active(dsid),
            "oldest_queued_ms": None if oldest is None else now - oldest.updated,
            "last_minute": last_minute,
            "lease_expired_since_start": self.activity.totals.get((dsid, "lease_expired"), 0),
        }
        return Outcome(_ok(request, body))

    def store_stats(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        self._authorise(request)
        info, storage = self.storage.env.info(), self.storage
        body = {
            "datasources": txn.datasources(),
            "records": txn.records(),
            "seq": txn.seq(),
            "lmdb": {
                "used_bytes": storage.used(),
                "map_size": info["map_size"],
                "max_map_size": storage.max_map_size,
                "fill": round(storage.fill(), 4),
            },
            "requests_handled": self.handled,
            **self.transport,
        }
        return Outcome(_ok(request, body))

    def subscribe_server(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        dsid = params[0]
        body_map(request)
        self._authorise(request, path=f"/server/{dsid}/job", observe=True)
        return self._subscription(request, txn, server_topic(dsid))


# (path shape, method) -> handler. In a shape, "D" is a datasource id, "N" a name,
# "#" a seq number, and anything else a literal segment.
ROUTES: list[tuple[tuple[str, ...], dict[str, Handler]]] = [
    (("cat",), {"GET": Service.cat_get, "POST": Service.cat_post}),
    (("stats",), {"GET": Service.store_stats}),
    (("server", "D", "stats"), {"GET": Service.ds_stats}),
    (("sub", "server", "D", "job"), {"POST": Service.subscribe_server}),
    (("sub", "D", "job"), {"POST": Service.subscribe}),
    (("server", "D", "job"), {"GET": Service.server_list}),
    (("server", "D", "job", "take"), {"POST": Service.take}),
    (("server", "D", "job", "accept"), {"POST": Service.accept}),
    (("server", "D", "job", "status"), {"POST": Service.report}),
    (("D", "job"), {"POST": Service.submit, "GET": Service.query}),
    (("D", "job", "cancel"), {"POST": Service.cancel}),
    (("D", "job", "N"), {"GET": Service.list_by_path}),
    (("D", "job", "N", "N"), {"GET": Service.status_by_path}),
    (("D", "job", "N", "since", "#"), {"GET": Service.list_by_path}),
]


def route(request: Request) -> tuple[Handler, list[str]]:
    """Find the handler and the path parameters of a request, or raise NotFound/MethodNotAllowed."""
    path = request.path
    segments = path[1:-1].split("/") if path.endswith("/") else path[1:].split("/")
    allowed: list[str] = []
    for shape, methods in ROUTES:
        params = _match(shape, segments)
        if params is None:
            continue
        handler = methods.get(request.method)
        if handler is not None:
            return handler, params
        allowed.extend(methods)
    if allowed:
        raise MethodNotAllowed(
            f"{request.method} is not allowed on {path}; use {' or '.join(allowed)}"
        )
    raise NotFound(
        f"no such path {path[:200]!r}; see docs/protocol.md for the paths this store serves"
    )


def _match(shape: tuple[str, ...], segments: list[str]) -> list[str] | None:
    if len(shape) != len(segments):
        return None
    pairs = list(zip(shape, segments, strict=True))
    if any(want not in "DN#" and want != got for want, got in pairs):
        return None
    if any(want == "D" and got in RESERVED_DSIDS for want, got in pairs):
        return None
    checks: dict[str, Callable[[str], str]] = {
        "D": check_dsid,
        "N": lambda got: check_name("path segment", got),
        "#": str,
    }
    return [checks[want](got) for want, got in pairs if want in checks]


def _failure(request: Request, exc: Exception) -> JobstoreError:
    """The error to answer a request that raised ``exc``."""
    if isinstance(exc, JobstoreError):
        return exc
    if isinstance(exc, lmdb.MapFullError):
        return StorageFull("the store's data file is full")
    log.error("unexpected error handling %s %s", request.method, request.path, exc_info=exc)
    return JobstoreError("internal error in the store; it has been logged, please report it")


def _error(request: Request, exc: JobstoreError) -> Reply:
    return Reply(exc.status, exc.body, exc.message, request.id)


def _ok(request: Request, body: Any) -> Reply:
    return Reply(200, body, id=request.id)


def _changed(request: Request, change: Change, status: int = 200) -> Reply:
    """A reply carrying the changed record, already encoded."""
    return Reply(status, change.wire, id=request.id, encoded_body=change.encoded)
