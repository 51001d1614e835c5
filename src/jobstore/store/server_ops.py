"""The server API's operations (docs/protocol.md, "Server API"): what a driver asks of its queue.

List, take (or wait for) jobs, accept one by name, report on one, requeue a failed
one, subscribe to every change; plain functions ``(ctx, request, params) -> Outcome``.
"""

from __future__ import annotations

from ..errors import BadRequest, Conflict
from ..protocol import Reply, Request
from ..protocol.cbor import jobs_body
from ..protocol.sealed import Change, server_topic
from ..records import check_name
from ..states import REPORTS, UNSET, Event, Status, Unset
from .client_ops import data_observe, list_jobs, subscription
from .context import Context
from .engine import Observe, Outcome, Wait, changed_reply, jitter, ok_reply
from .scheduling import report_delay, retry_not_before
from .validation import body_map, check_plain, int_field, names, status_name


def server_list(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /server/<DSID>/job: a page of the datasource's jobs, or a Zest observe of them all."""
    dsid = params[0]
    if request.observe is not None:
        data_observe(request)
        ctx.authorise(request)
        return Outcome(ok_reply(request, None), observe=Observe(dsid, None, request.max_age))
    body = body_map(request, optional=("status", "client", "since", "limit"))
    client = body.get("client")
    if client is not None:
        check_name("client", client)
    return list_jobs(ctx, request, dsid, client, body)


def take(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /server/<DSID>/job/take: hand out due jobs in take order (up to ``max``, fewer once
    their records reach ``page_bytes``), or wait for one."""
    dsid = params[0]
    body = body_map(request, optional=("max", "lease", "wait"))
    limits, txn = ctx.limits, ctx.txn
    count = int_field(body, "max", 1, 1, limits.max_take)
    lease = int_field(body, "lease", 0, 1, 2**40)  # 0: not given
    wait = int_field(body, "wait", 0, 0, limits.max_wait_ms)
    ctx.authorise(request)
    settings = txn.settings(dsid)
    lease = lease or settings.lease or limits.lease_ms
    changes: list[Change] = []
    size = 0  # like a listing page, the reply ends once its records reach page_bytes
    while not settings.paused and len(changes) < count and size < limits.page_bytes:
        job = txn.take_next(dsid)
        if job is None:
            break
        changes.append(ctx.hand_out(job, lease))
        size += len(changes[-1].encoded)
    if not changes and wait:
        return Outcome(None, wait=Wait(dsid, wait))
    body = {"jobs": [c.wire for c in changes]}
    encoded = jobs_body([c.encoded for c in changes])
    return Outcome(Reply(200, body, id=request.id, encoded_body=encoded), changes)


def accept(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /server/<DSID>/job/accept: take one named job."""
    body = body_map(request, required=("job",), optional=("lease",))
    job_id = check_name("job", body["job"])
    lease = int_field(body, "lease", ctx.limits.lease_ms, 1, 2**40)
    ctx.authorise(request)
    change = ctx.hand_out(ctx.get(params[0], job_id), lease)
    return Outcome(changed_reply(request, change), [change])


def report(ctx: Context, request: Request, params: list[str]) -> Outcome:
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
    response, progress = body.get("response", UNSET), body.get("progress", UNSET)
    for key in ("response", "progress"):
        if key in body:
            check_plain(key, body[key])
    ctx.authorise(request)
    job = ctx.get(params[0], job_id)
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
    not_before: int | Unset | None = UNSET
    if status is Status.RETRYING:
        settings = ctx.txn.settings(job.dsid)
        not_before = retry_not_before(ctx.now, delay, settings, job.attempts, jitter())
    # Without a lease of its own, a renewal lasts as long as the take's lease.
    lease = lease or job.lease_ms or ctx.limits.lease_ms
    change = ctx.transition(
        job, event, lease=lease, not_before=not_before, response=response, progress=progress
    )
    return Outcome(changed_reply(request, change), [change])


def requeue(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /server/<DSID>/job/requeue: send a failed job back to the queue."""
    body = body_map(request, required=("job",), optional=("delay",))
    job_id = check_name("job", body["job"])
    delay = report_delay(body)
    ctx.authorise(request)
    job = ctx.get(params[0], job_id)
    not_before = None if delay is None else ctx.now + delay
    change = ctx.transition(job, Event.REQUEUE, not_before=not_before)
    return Outcome(changed_reply(request, change), [change])


def subscribe_server(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /sub/server/<DSID>/job: the topic, key and last seq of every change in a datasource."""
    dsid = params[0]
    body_map(request)
    ctx.authorise(request, path=f"/server/{dsid}/job", observe=True)
    return subscription(ctx, request, server_topic(dsid))
