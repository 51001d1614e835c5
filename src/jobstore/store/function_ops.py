"""Function-call operations (docs/databox.md, "Function calls"): the routes under ``/notification/``.

A call is the job J of datasource F, client ``notification``. The handlers here answer the
driver's observe, the caller's Notify, the call and the response; :class:`FunctionCalls`
holds what the socket adapter needs between batches (observations, functions with calls
waiting, deliveries to commit). Decisions are :mod:`jobstore.store.functions`'; no sockets here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import cbor2

from ..errors import BadRequest, Conflict, NotFound, TooMany, Unavailable
from ..protocol import Reply, Request, zest
from ..protocol import notification as nt
from ..protocol.sealed import Change
from ..states import Event, Status
from . import functions
from .context import Context
from .engine import Outcome, ok_reply
from .functions import CallVerdict, Observation, Observations, ResponseVerdict
from .storage import Storage, Txn
from .validation import canonical, check_plain

OBSERVATIONS_KEY = b"fn-observations"  # meta: {ident: [pattern, format, mode, expires]}


@dataclass(slots=True)
class Effect:
    """What a function-call request asks of the socket adapter once its batch is committed.

    ``observation``: register it (reply: its UUID and the observe key). ``key``: put the observe
    key (option 2048) in the reply. ``answer``: push this ``FuncResponse`` body to the caller.
    """

    observation: Observation | None = None
    key: bool = False
    answer: tuple[str, str, bytes] | None = None


@dataclass
class FunctionCalls:
    """The function-call state a store keeps between batches."""

    observations: Observations
    waiting: set[str]  # functions that may have calls queued for delivery
    delivered: list[tuple[str, str, int]] = field(default_factory=list)  # (F, J, attempts)
    forget: set[bytes] = field(default_factory=set)  # observations to drop at the next commit
    max_observations: int = 10_000

    @property
    def pending(self) -> bool:
        """Whether the next batch has deliveries or dropped observations to commit."""
        return bool(self.delivered or self.forget)

    @property
    def expiring(self) -> bool:
        """Whether some observation has a max_age (the serve loop must look for its end)."""
        return self.observations.expiring > 0

    @classmethod
    def load(cls, storage: Storage) -> FunctionCalls:
        with storage.read() as txn:
            stored = txn.meta(OBSERVATIONS_KEY)
            items = cbor2.loads(stored) if stored else {}
            waiting = {
                dsid
                for dsid in txn.datasources()
                if any(functions.is_call(job.client) for job in txn.queued(dsid, 1000))
            }
        return cls(
            Observations(functions.load_observation(k, cbor2.dumps(v)) for k, v in items.items()),
            waiting,
        )

    def save(self, txn: Txn, items: list[Observation]) -> None:
        """Store ``items`` as the whole set of observations (a few, rarely changed)."""
        txn.set_meta(
            OBSERVATIONS_KEY,
            cbor2.dumps({o.ident: [o.pattern, o.content_format, o.mode, o.expires] for o in items}),
        )


def observe(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """A driver's observe of ``/notification/request/...`` in mode ``notification``."""
    if request.observe != zest.OBSERVE_NOTIFICATION:
        raise BadRequest(
            f"GET {request.path[:100]} is an observe for function calls: send observe (option 6) "
            "= notification, as lib-go-databox's Func.Register does"
        )
    ctx.authorise(request)
    calls = ctx.shared.functions
    if len(calls.observations) >= calls.max_observations:
        raise TooMany(
            f"this store has {calls.max_observations} function-call observers, its limit: "
            "observe with max_age so observations end"
        )
    fmt = zest.FORMAT_JSON if request.content_format is None else request.content_format
    expires = ctx.now + request.max_age * 1000 if request.max_age else None
    obs = Observation(
        str(uuid.uuid4()).encode(), request.path, fmt, zest.OBSERVE_NOTIFICATION, expires
    )
    calls.save(ctx.txn, [*calls.observations, obs])
    return Outcome(ok_reply(request, obs.ident.decode()), fn=Effect(observation=obs))


def notify(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """A caller's Notify: 65 with the observe key; a call already ended is answered at once."""
    path = _call_path(request, "response")
    if request.observe is not None:
        raise BadRequest(
            "a Notify of a function response is a GET without observe (option 6); "
            "observe /notification/request/* to serve calls"
        )
    ctx.authorise(request)
    job = ctx.txn.get(path.function, path.call)
    answer = None
    if job is not None and functions.is_call(job.client) and job.status.terminal:
        body = nt.response_for_caller(job.status.value, job.response, job.request)
        answer = (path.function, path.call, body)
    return Outcome(Reply(201, None, id=request.id), fn=Effect(key=True, answer=answer))


def call(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """A call: stored as a job (65) for a known function, else 163 as zestdb."""
    path = _call_path(request, "request")
    function, call_id = path.function, path.call
    ctx.authorise(request)
    fmt = zest.FORMAT_JSON if request.content_format is None else request.content_format
    stored = nt.call_request(request.body, fmt, request.host)
    check_plain("payload", stored["payload"])
    existing = ctx.txn.get(function, call_id)
    if existing is not None:
        if not functions.is_call(existing.client) or canonical(existing.request) != canonical(
            stored
        ):
            raise Conflict(
                f'call id "{call_id}" of function "{function}" was already used for another '
                "call; use a fresh UUID per call"
            )
        return Outcome(Reply(201, None, id=request.id))
    calls = ctx.shared.functions
    known = (
        calls.observations.watch(function)
        or any(nt.registered_function(item) == function for item in ctx.txn.catalogue_items())
        or bool(ctx.txn.by_status(function))
    )
    observed = bool(calls.observations.for_call(function, call_id, fmt))
    if functions.call_verdict(observed=observed, known=known) is CallVerdict.UNAVAILABLE:
        raise Unavailable(
            f'no driver serves function "{function}": none registered it in /cat or observes '
            "/notification/request/*; start the driver, then call again"
        )
    change = ctx.new_job(function, call_id, nt.CALL_CLIENT, stored)
    return Outcome(Reply(201, None, id=request.id), [change])


def respond(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """A driver's response: the first one ends the call; later ones get 65 and change nothing."""
    path = _call_path(request, "response")
    ctx.authorise(request)
    posted = nt.parse_func_response(request.body)
    job = ctx.txn.get(path.function, path.call)
    if job is None or not functions.is_call(job.client):
        raise NotFound(
            f'no call "{path.call}" of function "{path.function}" in this store: answer the '
            "response path of a call you received"
        )
    verdict = functions.response_verdict(job.status)
    if verdict is ResponseVerdict.DUPLICATE:
        return Outcome(Reply(201, None, id=request.id))
    changes: list[Change] = []
    if verdict is ResponseVerdict.END_QUEUED:
        taken = ctx.hand_out(job, 0)  # answered before its delivery: no lease to hold
        changes.append(taken)
        job = taken.job
    status = functions.ending(posted)
    event = Event.REPORT_COMPLETE if status is Status.COMPLETE else Event.REPORT_FAILED
    changes.append(ctx.transition(job, event, response=posted))
    return Outcome(Reply(201, None, id=request.id), changes)


def commit_pending(ctx: Context) -> list[Change]:
    """In each batch: take the calls pushed to a driver since the last one (accepted, with a
    lease), and drop the observations the adapter found gone or expired."""
    calls, txn = ctx.shared.functions, ctx.txn
    changes = []
    delivered, calls.delivered = calls.delivered, []
    for function, call_id, attempts in delivered:
        job = txn.get(function, call_id)
        if job is None or not job.status.queued or job.attempts != attempts:
            continue  # answered or taken meanwhile
        changes.append(ctx.hand_out(job, ctx.limits.lease_ms))
    if calls.forget:
        for ident in calls.forget:
            calls.observations.remove(ident)
        calls.forget.clear()
        calls.save(txn, list(calls.observations))
    return changes


def _call_path(request: Request, side: str) -> nt.CallPath:
    path = nt.parse_path(request.path)
    if path is None or path.side != side:  # routes send only /notification/<side>/F/J here
        raise BadRequest(f"{request.path[:200]!r} is not a function {side} path")
    return path
