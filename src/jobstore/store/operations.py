"""The job store's operations (docs/protocol.md), routed from (method, path).

Each operation is a method of :class:`Service` that checks its request, then
reads and writes through the transaction it is given; :mod:`jobstore.store.engine`
runs them in batches, one commit per batch. No sockets here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..databox import hypercat
from ..errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    StorageFull,
    TooMany,
)
from ..protocol import Reply, Request, shown, zest
from ..protocol.cbor import jobs_body
from ..protocol.sealed import Change, client_topic, server_topic
from ..records import RESERVED_DSIDS, Job, check_dsid, check_name
from ..states import QUEUED, REPORTS, Event, Status
from . import function_ops
from .auth import Authoriser
from .engine import (
    Engine,
    Handler,
    Limits,
    Observe,
    Outcome,
    Wait,
    changed_reply,
    jitter,
    ok_reply,
)
from .scheduling import (
    SUBMIT_OPTIONS,
    Settings,
    Timing,
    batch_jobs,
    longest_wait,
    report_delay,
    retry_not_before,
    same_timing,
    submit_timing,
    update_settings,
)
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

__all__ = ["ROUTES", "Limits", "Outcome", "Service", "Wait", "route"]

SCAN_LIMIT = 10_000
BATCH_ITEM = ("job", "request", *SUBMIT_OPTIONS)


class Service(Engine):
    """The job operations over an :class:`~jobstore.store.engine.Engine`."""

    def __init__(
        self, storage: Storage, auth: Authoriser | None = None, limits: Limits | None = None
    ) -> None:
        super().__init__(storage, auth, limits)
        self.functions = function_ops.FunctionCalls.load(storage)

    def route(self, request: Request) -> tuple[Handler, list[str]]:
        return route(request)

    def _internal(self, txn: Txn, now: int) -> list[Change]:
        return function_ops.commit_pending(self, txn, now)

    # Client API (docs/protocol.md, "Client API")

    def submit(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /<DSID>/job/: store a new job (201), or answer a resubmit of the same one (200)."""
        body = body_map(request, required=("job", "client"), optional=("request", *SUBMIT_OPTIONS))
        job_id, client = check_name("job", body["job"]), check_name("client", body["client"])
        self._authorise(request, client=client)
        job, change = self._submit(txn, params[0], client, job_id, body, now)
        if change is None:
            return Outcome(ok_reply(request, job.wire()))
        return Outcome(changed_reply(request, change, 201), [change])

    def _submit(
        self, txn: Txn, dsid: str, client: str, job_id: str, body: dict[str, Any], now: int
    ) -> tuple[Job, Change | None]:
        """Submit one job (a submit, or an item of a batch): the record, and the change unless
        the same job was submitted before."""
        payload = body.get("request")
        check_plain("request", payload)
        timing = submit_timing(body, now)
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
            stored = Timing(existing.priority, existing.not_before, existing.expires)
            started = existing.attempts > 0 or existing.requeued > 0
            if not same_timing(stored, timing, existing.created, now, started):
                raise Conflict(
                    f'job id "{job_id}" was already submitted with another priority, delay, '
                    "not_before or expires; use a fresh GUID per job",
                    existing.wire(),
                )
            return existing, None
        change = self.new_job(txn, dsid, job_id, client, payload, now, timing)
        return change.job, change

    def new_job(
        self,
        txn: Txn,
        dsid: str,
        job_id: str,
        client: str,
        payload: Any,
        now: int,
        timing: Timing | None = None,
    ) -> Change:
        """Store a new ``submitted`` job, within the queue's quotas (a submit, or a function call)."""
        timing = timing or Timing()
        self._admit(txn, dsid, client)
        seq = txn.next_seq()
        history = ((Status.SUBMITTED.value, now),)
        job = Job(
            dsid,
            job_id,
            client,
            payload,
            Status.SUBMITTED,
            now,
            now,
            seq,
            history=history,
            priority=timing.priority,
            not_before=timing.not_before,
            expires=timing.expires,
        )
        return self._store(txn, job, None)

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
        """POST /<DSID>/job/cancel: cancel a queued job, or ask the driver to cancel a running one."""
        body = body_map(request, required=("job", "client"))
        job_id, client = check_name("job", body["job"]), check_name("client", body["client"])
        self._authorise(request, client=client)
        job = self._owned(txn, params[0], job_id, client)
        # Asked already while accepted: the server decides. Once the job is queued again
        # (retrying, the flag kept), a cancel cancels it like any queued job.
        if job.status.terminal or (job.cancel_requested and job.status is Status.ACCEPTED):
            return Outcome(ok_reply(request, job.wire()))
        change = self._transition(txn, job, Event.CLIENT_CANCEL, now, cancel_requested=True)
        return Outcome(changed_reply(request, change), [change])

    def query(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """GET /<DSID>/job/ with a body: one of the client's jobs, or a page of them by seq."""
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
        """GET /<DSID>/job/<client>/<job>: one of the client's jobs."""
        return self._status(request, txn, params[0], params[1], params[2])

    def list_by_path(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """GET /<DSID>/job/<client>[/since/<seq>]: a page of the client's jobs, or a Zest observe."""
        dsid, client = params[0], params[1]
        if request.observe is not None:
            _data_observe(request)
            self._authorise(request, client=client)
            return Outcome(ok_reply(request, None), observe=Observe(dsid, client, request.max_age))
        since = {"since": seq_segment(params[2])} if len(params) > 2 else {}
        return self._list(request, txn, dsid, client, since)

    def _status(self, request: Request, txn: Txn, dsid: str, client: str, job_id: str) -> Outcome:
        self._authorise(request, client=client)
        return Outcome(ok_reply(request, self._owned(txn, dsid, job_id, client).wire()))

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
                return Outcome(ok_reply(request, {"jobs": jobs, "next": last}))
            scanned, last = scanned + 1, seq
            if status is None or job.status is status:
                jobs.append(job.wire())
        return Outcome(ok_reply(request, {"jobs": jobs, "next": None}))

    def subscribe(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /sub/<DSID>/job: the topic, key and last seq of one client's notifications."""
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
        return Outcome(ok_reply(request, reply))

    # Server API (docs/protocol.md, "Server API")

    def server_list(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """GET /server/<DSID>/job: a page of the datasource's jobs, or a Zest observe of them all."""
        dsid = params[0]
        if request.observe is not None:
            _data_observe(request)
            self._authorise(request)
            return Outcome(ok_reply(request, None), observe=Observe(dsid, None, request.max_age))
        body = body_map(request, optional=("status", "client", "since", "limit"))
        client = body.get("client")
        if client is not None:
            check_name("client", client)
        return self._list(request, txn, dsid, client, body)

    def take(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /server/<DSID>/job/take: hand out due jobs in take order, or wait for one."""
        dsid = params[0]
        body = body_map(request, optional=("max", "lease", "wait"))
        limits = self.limits
        count = int_field(body, "max", 1, 1, limits.max_take)
        lease = int_field(body, "lease", 0, 1, 2**40)  # 0: not given
        wait = int_field(body, "wait", 0, 0, limits.max_wait_ms)
        self._authorise(request)
        settings = txn.settings(dsid)
        lease = lease or settings.lease or limits.lease_ms
        jobs: list[Job] = []
        while not settings.paused and len(jobs) < count:
            job = txn.take_next(dsid)
            if job is None:
                break
            jobs.append(job)
        if not jobs and wait:
            return Outcome(None, wait=Wait(dsid, wait))
        changes = [self.hand_out(txn, job, now, lease) for job in jobs]
        body = {"jobs": [c.wire for c in changes]}
        encoded = jobs_body([c.encoded for c in changes])
        return Outcome(Reply(200, body, id=request.id, encoded_body=encoded), changes)

    def accept(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /server/<DSID>/job/accept: take one named job."""
        body = body_map(request, required=("job",), optional=("lease",))
        job_id = check_name("job", body["job"])
        lease = int_field(body, "lease", self.limits.lease_ms, 1, 2**40)
        self._authorise(request)
        job = self._get(txn, params[0], job_id)
        change = self.hand_out(txn, job, now, lease)
        return Outcome(changed_reply(request, change), [change])

    def report(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /server/<DSID>/job/status: a driver's report (progress, outcome, hand-back)."""
        body = body_map(
            request,
            required=("job", "status"),
            optional=("response", "progress", "lease", "attempt", "delay"),
        )
        job_id = check_name("job", body["job"])
        status = status_name(body["status"])
        delay = report_delay(body)
        if delay is not None and status is not Status.RETRYING:
            raise BadRequest(
                f"delay is for a retrying report (when to try the job again), not {status.value!r}; "
                "leave it out"
            )
        lease = int_field(body, "lease", 0, 1, 2**40)  # 0: not given
        attempt = int_field(body, "attempt", -1, 0, 2**63 - 1)  # -1: not given
        fields: dict[str, Any] = {k: body[k] for k in ("response", "progress") if k in body}
        for key, value in fields.items():
            check_plain(key, value)
        self._authorise(request)
        job = self._get(txn, params[0], job_id)
        if attempt >= 0 and attempt != job.attempts:
            raise Conflict(
                f'job "{job_id}" is on attempt {job.attempts}, not {attempt}: the lease of the '
                "attempt reported on ran out and the job went back to the queue (another driver "
                "may hold it now); drop this job and take the next",
                job.wire(),
            )
        event = REPORTS.get(status)
        if event is None:
            raise Conflict(
                f"a server cannot set status {status.value!r}; report one of " + names(REPORTS),
                job.wire(),
            )
        if status is Status.ACCEPTED:
            # Without a lease of its own, a renewal lasts as long as the take's lease.
            fields["lease_until"] = self.clock.now + (lease or job.lease_ms or self.limits.lease_ms)
        elif status is Status.RETRYING:
            settings = txn.settings(job.dsid)
            fields["not_before"] = retry_not_before(now, delay, settings, job.attempts, jitter())
        change = self._transition(txn, job, event, now, **fields)
        return Outcome(changed_reply(request, change), [change])

    def requeue(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /server/<DSID>/job/requeue: send a failed job back to the queue."""
        body = body_map(request, required=("job",), optional=("delay",))
        job_id = check_name("job", body["job"])
        delay = report_delay(body)
        self._authorise(request)
        job = self._get(txn, params[0], job_id)
        change = self._transition(
            txn,
            job,
            Event.REQUEUE,
            now,
            attempts=0,
            requeued=job.requeued + 1,
            not_before=None if delay is None else now + delay,
        )
        return Outcome(changed_reply(request, change), [change])

    def settings_get(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """GET /server/<DSID>/job/settings: the datasource's queue settings."""
        body_map(request)
        self._authorise(request)
        return Outcome(ok_reply(request, self._settings_wire(txn.settings(params[0]))))

    def settings_post(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /server/<DSID>/job/settings: change some of the queue settings; answer all."""
        dsid = params[0]
        self._authorise(request)
        before = txn.settings(dsid)
        after = update_settings(before, {} if request.body is None else request.body)
        outcome = Outcome(ok_reply(request, self._settings_wire(after)))
        if after != before:
            txn.set_settings(dsid, after)
            if before.paused and not after.paused:
                # Resumed: waiting takes may now get the due jobs.
                by_status = txn.by_status(dsid)
                due = sum(by_status.get(s.value, 0) for s in QUEUED) - txn.delayed(dsid)
                if due > 0:
                    outcome.ready[dsid] = due
        return outcome

    def _settings_wire(self, settings: Settings) -> dict[str, Any]:
        return settings.wire(max_attempts=self.limits.max_attempts, lease=self.limits.lease_ms)

    def batch(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /<DSID>/job/batch: submit up to 1000 jobs in one commit; a result per item."""
        dsid = params[0]
        body = body_map(request, required=("client", "jobs"))
        client = check_name("client", body["client"])
        items = batch_jobs(body)
        self._authorise(request, client=client)
        results: list[Any] = []
        changes: list[Change] = []
        for index, item in enumerate(items):
            job_id = item.get("job") if isinstance(item, dict) else None
            try:
                if not isinstance(item, dict):
                    raise BadRequest(
                        f"jobs[{index}] must be a map with job, request and any of "
                        f"{', '.join(SUBMIT_OPTIONS)}, got {type(item).__name__}"
                    )
                for key in item:
                    if key not in BATCH_ITEM:
                        raise BadRequest(
                            f"jobs[{index}] has unknown key {shown(key)}; allowed keys are "
                            + ", ".join(BATCH_ITEM)
                        )
                if "job" not in item:
                    raise BadRequest(f"jobs[{index}] is missing 'job'")
                job_id = check_name("job", item["job"])
                job, change = self._submit(txn, dsid, client, job_id, item, now)
            except (BadRequest, Conflict, TooMany, StorageFull) as exc:
                job_ref = job_id if isinstance(job_id, str) else None
                results.append({"job": job_ref, "status": exc.status, "error": str(exc)})
                continue
            if change is None:
                results.append(job.wire())
            else:
                results.append(change.wire)
                changes.append(change)
        return Outcome(ok_reply(request, {"results": results}), changes)

    # Hypercat (docs/protocol.md, "Hypercat")

    def cat_get(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """GET /cat: the hypercat catalogue."""
        self._authorise(request)
        return Outcome(ok_reply(request, hypercat.catalogue(txn.catalogue_items())))

    def cat_post(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /cat: add or replace a catalogue item."""
        self._authorise(request)
        item = hypercat.check_item(request.body)
        txn.set_catalogue_items(hypercat.upsert(txn.catalogue_items(), item))
        return Outcome(ok_reply(request, item))

    # Statistics

    def ds_stats(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """GET /server/<DSID>/stats: the datasource's counts, queue age and recent activity."""
        dsid = params[0]
        self._authorise(request)
        last_minute = {
            kind: self.activity.last_minute(dsid, kind, now)
            for kind in ("taken", "finished", "lease_expired")
        }
        body = {
            "dsid": dsid,
            "by_status": txn.by_status(dsid),
            "unfinished": txn.active(dsid),
            "oldest_queued_ms": longest_wait(txn.due_heads(dsid), now),
            "delayed": txn.delayed(dsid),
            "paused": txn.settings(dsid).paused,
            "last_minute": last_minute,
            "lease_expired_since_start": self.activity.totals.get((dsid, "lease_expired"), 0),
        }
        return Outcome(ok_reply(request, body))

    def store_stats(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """GET /stats: the store's counts, data file and transport counters."""
        self._authorise(request)
        storage = self.storage
        body = {
            "datasources": txn.datasources(),
            "records": txn.records(),
            "seq": txn.seq(),
            "lmdb": {
                "used_bytes": storage.used(),
                "map_size": storage.map_size(),
                "max_map_size": storage.max_map_size,
                "fill": round(storage.fill(), 4),
            },
            "requests_handled": self.handled,
            **self.transport,
        }
        return Outcome(ok_reply(request, body))

    def subscribe_server(self, txn: Txn, request: Request, now: int, params: list[str]) -> Outcome:
        """POST /sub/server/<DSID>/job: the topic, key and last seq of every change in a datasource."""
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
    (("server", "D", "job", "requeue"), {"POST": Service.requeue}),
    (
        ("server", "D", "job", "settings"),
        {"GET": Service.settings_get, "POST": Service.settings_post},
    ),
    (("D", "job"), {"POST": Service.submit, "GET": Service.query}),
    (("D", "job", "cancel"), {"POST": Service.cancel}),
    (("D", "job", "batch"), {"POST": Service.batch}),
    (("D", "job", "N"), {"GET": Service.list_by_path}),
    (("D", "job", "N", "N"), {"GET": Service.status_by_path}),
    (("D", "job", "N", "since", "#"), {"GET": Service.list_by_path}),
]


def _data_observe(request: Request) -> None:
    if request.observe != zest.OBSERVE_DATA:
        raise BadRequest(
            f"observe mode {request.observe!r} is for function calls on /notification/request/*; "
            "observe jobs with mode data (or an empty option 6)"
        )


# Function calls (docs/databox.md, "Function calls"): GET of a request pattern is an observe, GET of a
# response path a Notify; POSTs are calls and responses.
_FUNCTION_ROUTES: dict[tuple[str, str], Handler] = {
    ("request", "GET"): function_ops.observe,
    ("request", "POST"): function_ops.call,
    ("response", "GET"): function_ops.notify,
    ("response", "POST"): function_ops.respond,
}


def _function_route(request: Request) -> Handler:
    side = request.path.split("/")[2]
    handler = _FUNCTION_ROUTES.get((side, request.method))
    if handler is None:
        sides = " or ".join(m for s, m in _FUNCTION_ROUTES if s == side) or "nothing"
        raise MethodNotAllowed(
            f"{request.method} is not allowed on {request.path[:200]}; use {sides}"
        )
    return handler


def route(request: Request) -> tuple[Handler, list[str]]:
    """Find the handler and the path parameters of a request, or raise NotFound/MethodNotAllowed."""
    path = request.path
    if path.startswith(("/notification/request/", "/notification/response/")):
        return _function_route(request), []
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
    _refuse_reserved(segments)
    raise NotFound(
        f"no such path {path[:200]!r}; see docs/protocol.md for the paths this store serves"
    )


def _refuse_reserved(segments: list[str]) -> None:
    """Raise BadRequest when the path has a route's shape but a reserved word as its datasource."""
    for shape, _ in ROUTES:
        if len(shape) == len(segments) and all(
            want in "DN#" or want == got for want, got in zip(shape, segments, strict=True)
        ):
            for want, got in zip(shape, segments, strict=True):
                if want == "D":
                    check_dsid(got)


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
