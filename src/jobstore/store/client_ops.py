"""The client API's operations (docs/protocol.md, "Client API"): submit, batch, cancel, read, subscribe.

Each is a plain function ``(ctx, request, params) -> Outcome`` that checks its
request, then reads and writes through its :class:`~jobstore.store.context.Context`;
:mod:`jobstore.store.routes` maps paths to them. The job listing, the subscription
and the observe check are the server API's too.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ..errors import BadRequest, Conflict, StorageFull, TooMany
from ..protocol import Request, shown, zest
from ..protocol.sealed import Change, client_topic
from ..records import Job, check_name
from ..states import Event, Status
from .context import Context
from .engine import Observe, Outcome, changed_reply, ok_reply
from .scheduling import SUBMIT_OPTIONS, Timing, batch_jobs, same_timing, submit_timing
from .validation import body_map, canonical, check_plain, int_field, seq_segment, status_name

PAYLOADS = ("request", "response", "progress")  # what a truncated batch result leaves out
SCAN_LIMIT = 10_000
BATCH_ITEM = ("job", "request", *SUBMIT_OPTIONS)


def submit(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /<DSID>/job/: store a new job (201), or answer a resubmit of the same one (200)."""
    body = body_map(request, required=("job", "client"), optional=("request", *SUBMIT_OPTIONS))
    job_id, client = check_name("job", body["job"]), check_name("client", body["client"])
    ctx.authorise(request, client=client)
    job, change = _submit(ctx, params[0], client, job_id, body)
    if change is None:
        return Outcome(ok_reply(request, job.wire()))
    return Outcome(changed_reply(request, change, 201), [change])


def _submit(
    ctx: Context, dsid: str, client: str, job_id: str, body: dict[str, Any]
) -> tuple[Job, Change | None]:
    """Submit one job (a submit, or an item of a batch): the record, and the change unless
    the same job was submitted before."""
    payload = body.get("request")
    check_plain("request", payload)
    now = ctx.now
    timing = submit_timing(body, now)
    existing = ctx.txn.get(dsid, job_id)
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
    change = ctx.new_job(dsid, job_id, client, payload, timing)
    return change.job, change


def batch(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /<DSID>/job/batch: submit up to 1000 jobs in one commit; a result per item."""
    dsid = params[0]
    body = body_map(request, required=("client", "jobs"))
    client = check_name("client", body["client"])
    items = batch_jobs(body)
    ctx.authorise(request, client=client)
    results: list[Any] = []
    changes: list[Change] = []
    resent = 0  # bytes of the records of jobs submitted before, in this reply so far
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
            job, change = _submit(ctx, dsid, client, job_id, item)
        except (BadRequest, Conflict, TooMany, StorageFull) as exc:
            job_ref = job_id if isinstance(job_id, str) else None
            results.append({"job": job_ref, "status": exc.status, "error": str(exc)})
            continue
        if change is None:
            # A resubmit answers with the stored record, whose response and progress the batch's
            # own frame does not bound: past page_bytes of them, the record comes without its
            # payloads (docs/protocol.md, "Batch submit").
            record = job.wire()
            if resent >= ctx.limits.page_bytes:
                record = {k: v for k, v in record.items() if k not in PAYLOADS}
                record["truncated"] = True
            else:
                resent += len(cbor2.dumps(record))
            results.append(record)
        else:
            results.append(change.wire)
            changes.append(change)
    return Outcome(ok_reply(request, {"results": results}), changes)


def cancel(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /<DSID>/job/cancel: cancel a queued job, or ask the driver to cancel a running one."""
    body = body_map(request, required=("job", "client"))
    job_id, client = check_name("job", body["job"]), check_name("client", body["client"])
    ctx.authorise(request, client=client)
    job = ctx.owned(params[0], job_id, client)
    # Asked already while accepted: the server decides. Once the job is queued again
    # (retrying, the flag kept), a cancel cancels it like any queued job.
    if job.status.terminal or (job.cancel_requested and job.status is Status.ACCEPTED):
        return Outcome(ok_reply(request, job.wire()))
    change = ctx.transition(job, Event.CLIENT_CANCEL)
    return Outcome(changed_reply(request, change), [change])


def query(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /<DSID>/job/ with a body: one of the client's jobs, or a page of them by seq."""
    body = body_map(request, required=("client",), optional=("job", "since", "limit"))
    client = check_name("client", body["client"])
    if "job" in body:
        if "since" in body or "limit" in body:
            raise BadRequest(
                "give either job (one job's status) or since/limit (a listing), not both"
            )
        return _status(ctx, request, params[0], client, check_name("job", body["job"]))
    return list_jobs(ctx, request, params[0], client, body)


def status_by_path(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /<DSID>/job/<client>/<job>: one of the client's jobs."""
    return _status(ctx, request, params[0], params[1], params[2])


def list_by_path(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /<DSID>/job/<client>[/since/<seq>]: a page of the client's jobs, or a Zest observe."""
    dsid, client = params[0], params[1]
    if request.observe is not None:
        data_observe(request)
        ctx.authorise(request, client=client)
        return Outcome(ok_reply(request, None), observe=Observe(dsid, client, request.max_age))
    since = {"since": seq_segment(params[2])} if len(params) > 2 else {}
    return list_jobs(ctx, request, dsid, client, since)


def _status(ctx: Context, request: Request, dsid: str, client: str, job_id: str) -> Outcome:
    ctx.authorise(request, client=client)
    return Outcome(ok_reply(request, ctx.owned(dsid, job_id, client).wire()))


def list_jobs(
    ctx: Context, request: Request, dsid: str, client: str | None, body: dict[str, Any]
) -> Outcome:
    """A page of the datasource's jobs (one client's when ``client`` is set) by seq, after the
    token is checked; ``body`` may give since, limit and status. The page ends at ``limit``
    jobs, SCAN_LIMIT changes scanned, or once its records reach ``page_bytes``."""
    ctx.authorise(request, client=client)
    limits = ctx.limits
    since = int_field(body, "since", 0, 0, 2**63)
    limit = int_field(body, "limit", limits.page_size, 1, limits.max_page_size)
    status = body.get("status")
    if status is not None:
        status = status_name(status)
    jobs: list[dict[str, Any]] = []
    last, scanned, size = since, 0, 0
    for seq, job, encoded in ctx.txn.changed_since(dsid, client, since):
        if len(jobs) == limit or scanned == SCAN_LIMIT or size >= limits.page_bytes:
            return Outcome(ok_reply(request, {"jobs": jobs, "next": last}))
        scanned, last = scanned + 1, seq
        if status is None or job.status is status:
            jobs.append(job.wire())
            size += encoded
    return Outcome(ok_reply(request, {"jobs": jobs, "next": None}))


def subscribe(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /sub/<DSID>/job: the topic, key and last seq of one client's notifications."""
    dsid = params[0]
    body = body_map(request, required=("client",))
    client = check_name("client", body["client"])
    ctx.authorise(request, client=client, path=f"/{dsid}/job/{client}", observe=True)
    return subscription(ctx, request, client_topic(dsid, client))


def subscription(ctx: Context, request: Request, name: str) -> Outcome:
    """The reply to a subscribe: the sealed topic ``name``'s wire name, key and last seq."""
    sealer = ctx.shared.sealer
    reply = {
        "topic": sealer.topic(name).decode(),
        "key": sealer.key(name),
        "seq": ctx.txn.topic_seq(name),
    }
    return Outcome(ok_reply(request, reply))


def data_observe(request: Request) -> None:
    """Raise BadRequest unless a jobs observe is in mode data."""
    if request.observe != zest.OBSERVE_DATA:
        raise BadRequest(
            f"observe mode {request.observe!r} is for function calls on /notification/request/*; "
            "observe jobs with mode data (or an empty option 6)"
        )
