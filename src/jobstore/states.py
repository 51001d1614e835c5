"""The job state machine of docs/protocol.md ("The job record", "Scheduling and queue control"):
every allowed transition, and what each does to a record, in two tables.

Nothing outside this module decides which status follows which, or which fields a
transition changes; the store asks :func:`follow`, and anything not in
:data:`TRANSITIONS` is an :class:`~jobstore.errors.InvalidTransition`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TYPE_CHECKING

from .errors import InvalidTransition

if TYPE_CHECKING:
    from .records import Job


class Status(StrEnum):
    """A job's status, as it appears on the wire."""

    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    FORBIDDEN = "forbidden"
    FAILED = "failed"
    RETRYING = "retrying"

    @property
    def terminal(self) -> bool:
        """A terminal record never changes again, except a failed one the server requeues."""
        return self in TERMINAL

    @property
    def queued(self) -> bool:
        """Waiting for a server to take it."""
        return self in QUEUED


class Event(StrEnum):
    """Something that happens to a job: a server report, a client cancel, or a lease running out."""

    TAKE = "take"
    CLIENT_CANCEL = "client-cancel"
    PROGRESS = "progress"
    REPORT_COMPLETE = "report-complete"
    REPORT_CANCELLED = "report-cancelled"
    REPORT_RETRYING = "report-retrying"
    REPORT_FORBIDDEN = "report-forbidden"
    REPORT_FAILED = "report-failed"
    LEASE_EXPIRED = "lease-expired"
    LEASE_EXHAUSTED = "lease-exhausted"
    EXPIRED = "expired"
    REQUEUE = "requeue"


TERMINAL = frozenset({Status.COMPLETE, Status.CANCELLED, Status.FORBIDDEN, Status.FAILED})
QUEUED = frozenset({Status.SUBMITTED, Status.RETRYING})  # waiting for a server to take them

S, E = Status, Event

TRANSITIONS: dict[tuple[Status, Event], Status] = {
    (S.SUBMITTED, E.TAKE): S.ACCEPTED,
    (S.RETRYING, E.TAKE): S.ACCEPTED,
    (S.SUBMITTED, E.CLIENT_CANCEL): S.CANCELLED,
    (S.RETRYING, E.CLIENT_CANCEL): S.CANCELLED,
    (S.SUBMITTED, E.REPORT_FORBIDDEN): S.FORBIDDEN,
    (S.RETRYING, E.REPORT_FORBIDDEN): S.FORBIDDEN,
    (S.ACCEPTED, E.REPORT_FORBIDDEN): S.FORBIDDEN,
    (S.SUBMITTED, E.REPORT_FAILED): S.FAILED,
    (S.RETRYING, E.REPORT_FAILED): S.FAILED,
    (S.ACCEPTED, E.REPORT_FAILED): S.FAILED,
    (S.ACCEPTED, E.REPORT_COMPLETE): S.COMPLETE,
    (S.ACCEPTED, E.REPORT_CANCELLED): S.CANCELLED,
    (S.ACCEPTED, E.REPORT_RETRYING): S.RETRYING,
    (S.ACCEPTED, E.PROGRESS): S.ACCEPTED,
    # The server is told and decides; the record gains cancel_requested.
    (S.ACCEPTED, E.CLIENT_CANCEL): S.ACCEPTED,
    (S.ACCEPTED, E.LEASE_EXPIRED): S.RETRYING,
    (S.ACCEPTED, E.LEASE_EXHAUSTED): S.FAILED,
    # Still queued at its `expires`.
    (S.SUBMITTED, E.EXPIRED): S.FAILED,
    (S.RETRYING, E.EXPIRED): S.FAILED,
    # A dead letter sent back by the server: the one way out of a terminal status.
    (S.FAILED, E.REQUEUE): S.RETRYING,
}

del S, E

# What a server's `status` report means, by the status it names.
REPORTS: dict[Status, Event] = {
    Status.ACCEPTED: Event.PROGRESS,
    Status.COMPLETE: Event.REPORT_COMPLETE,
    Status.CANCELLED: Event.REPORT_CANCELLED,
    Status.RETRYING: Event.REPORT_RETRYING,
    Status.FORBIDDEN: Event.REPORT_FORBIDDEN,
    Status.FAILED: Event.REPORT_FAILED,
}


class Lease(StrEnum):
    """What a transition does to the job's lease (``lease_until`` on the store clock, ``lease_ms``)."""

    GRANT = "granted"  # lease_until = store clock + the lease given, lease_ms = it (0: no lease)
    RENEW = "renewed"  # lease_until = store clock + the lease given; lease_ms kept
    KEEP = "kept"  # a queued job holds none, an accepted one keeps its own
    CLEAR = "cleared"  # lease_until = lease_ms = 0: only an accepted job holds a lease


class Count(StrEnum):
    """What a transition does to a counter (``attempts``, ``requeued``)."""

    KEEP = "kept"
    ADD = "+1"
    RESET = "0"


class Field(StrEnum):
    """What a transition does to a field the operation may give (``response``...)."""

    KEEP = "kept"
    SET = "set"  # the operation always gives it
    GIVEN = "set if given"  # as the report carries it or not


@dataclass(frozen=True, slots=True)
class Effects:
    """What one event does to a record besides its status. Every transition also takes the next
    seq, sets ``updated`` (never back in time) and, when the status changes, appends it to the
    history (the last ``Limits.history_length`` kept)."""

    lease: Lease = Lease.CLEAR
    attempts: Count = Count.KEEP
    requeued: Count = Count.KEEP
    cancel_requested: bool = False  # set it (nothing clears it: a retried job keeps the flag)
    not_before: Field = Field.KEEP
    response: Field = Field.KEEP
    progress: Field = Field.KEEP


_REPORT = Effects(response=Field.GIVEN, progress=Field.GIVEN)

EFFECTS: dict[Event, Effects] = {
    Event.TAKE: Effects(lease=Lease.GRANT, attempts=Count.ADD),
    Event.CLIENT_CANCEL: Effects(lease=Lease.KEEP, cancel_requested=True),
    Event.PROGRESS: Effects(lease=Lease.RENEW, response=Field.GIVEN, progress=Field.GIVEN),
    Event.REPORT_COMPLETE: _REPORT,
    Event.REPORT_CANCELLED: _REPORT,
    Event.REPORT_RETRYING: Effects(
        not_before=Field.SET, response=Field.GIVEN, progress=Field.GIVEN
    ),
    Event.REPORT_FORBIDDEN: _REPORT,
    Event.REPORT_FAILED: _REPORT,
    Event.LEASE_EXPIRED: Effects(not_before=Field.SET),
    Event.LEASE_EXHAUSTED: Effects(response=Field.SET),
    Event.EXPIRED: Effects(response=Field.SET),
    Event.REQUEUE: Effects(attempts=Count.RESET, requeued=Count.ADD, not_before=Field.SET),
}


class Unset(Enum):
    """The type of :data:`UNSET`: a field the operation does not give (None may be a value)."""

    UNSET = "unset"


UNSET = Unset.UNSET


def follow(
    job: Job,
    event: Event,
    *,
    now: int,
    clock: int,
    history_length: int,
    lease: int = 0,
    not_before: int | Unset | None = UNSET,
    response: object = UNSET,
    progress: object = UNSET,
) -> dict[str, object]:
    """The fields ``event`` changes in ``job`` (all but its seq), by :data:`TRANSITIONS` and
    :data:`EFFECTS`, at wall time ``now`` and store time ``clock``; raise InvalidTransition.

    ``lease`` is the lease a take grants or a renewal runs for (ms); the other arguments are the
    values of the fields the event sets.
    """
    try:
        status = apply(job.status, event)
    except InvalidTransition as exc:
        exc.body = job.wire()
        raise
    effects = EFFECTS[event]
    # The wall clock may have been set back: a record's times never go back.
    updated = max(now, job.updated)
    fields: dict[str, object] = {"status": status, "updated": updated}
    if status is not job.status:
        fields["history"] = (*job.history, (status.value, updated))[-history_length:]
    change = effects.lease
    if change is _CLEAR:
        fields["lease_until"] = fields["lease_ms"] = 0
    elif change is _GRANT:
        fields["lease_until"], fields["lease_ms"] = (clock + lease if lease else 0), lease
    elif change is _RENEW:
        fields["lease_until"] = clock + lease
    if effects.attempts is not _KEEP_COUNT:
        fields["attempts"] = job.attempts + 1 if effects.attempts is _ADD else 0
    if effects.requeued is not _KEEP_COUNT:
        fields["requeued"] = job.requeued + 1 if effects.requeued is _ADD else 0
    if effects.cancel_requested:
        fields["cancel_requested"] = True
    if effects.not_before is not _KEEP:
        _give(fields, event, "not_before", effects.not_before, not_before)
    if effects.response is not _KEEP:
        _give(fields, event, "response", effects.response, response)
    if effects.progress is not _KEEP:
        _give(fields, event, "progress", effects.progress, progress)
    return fields


# For follow, which runs for every change: an enum member costs ten times more to look up on its
# class than as a module global.
_GRANT, _RENEW, _CLEAR = Lease.GRANT, Lease.RENEW, Lease.CLEAR
_KEEP_COUNT, _ADD = Count.KEEP, Count.ADD
_KEEP = Field.KEEP


def _give(fields: dict[str, object], event: Event, name: str, mode: Field, value: object) -> None:
    if value is not UNSET:
        fields[name] = value
    elif mode is Field.SET:
        raise ValueError(f"event {event.value!r} sets {name}: give its value")


def apply(status: Status, event: Event) -> Status:
    """Return the status that ``event`` leads to from ``status``, or raise InvalidTransition."""
    try:
        return TRANSITIONS[status, event]
    except KeyError:
        raise InvalidTransition(
            f"a job in status {status.value!r} cannot take event {event.value!r}; "
            "fetch the job to see its current status"
        ) from None


def diagram() -> str:
    """The transition table as a Mermaid state diagram, for docs/states.md."""
    lines = ["stateDiagram-v2", "    [*] --> submitted: client submits"]
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {event.value}")
    lines.extend(f"    {status.value} --> [*]" for status in Status if status.terminal)
    return "\n".join(lines) + "\n"


def effects_table() -> str:
    """:data:`EFFECTS` as a Markdown table, one row per event, for docs/states.md."""
    names = [f.name for f in dataclasses.fields(Effects)]
    rows = [
        "| event | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for event, effects in EFFECTS.items():
        cells = [_cell(getattr(effects, name)) for name in names]
        rows.append(f"| {event.value} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "set" if value else "kept"
    return str(value)


def page() -> str:
    """docs/states.md, generated from :data:`TRANSITIONS` and :data:`EFFECTS` (``make docs``)."""
    rows = "\n".join(
        f"| {source.value} | {event.value} | {target.value} |"
        for (source, event), target in TRANSITIONS.items()
    )
    return (
        "# Job states\n\n"
        "Generated from `jobstore.states.TRANSITIONS` and `EFFECTS` by `make docs`; a test keeps "
        "it current.\n"
        "Terminal: " + ", ".join(s.value for s in Status if s.terminal) + " (a failed job "
        "may be requeued by the server: the one way out of a terminal status). "
        "Any (status, event) pair not listed is refused (409 with the current record).\n\n"
        "```mermaid\n" + diagram() + "```\n\n"
        "| from | event | to |\n|---|---|---|\n" + rows + "\n\n"
        "## What each event does to the record\n\n"
        "Every transition also takes the next seq and sets `updated` (never back in time); when "
        "the status changes, the new one is appended to `history` (the last 20 by default). "
        "A lease is granted for the lease the take asks for (or the queue's, or the store's); a "
        "renewal runs for the report's lease, or the one the job was taken with. Only an "
        "accepted job holds a lease, and nothing clears `cancel_requested`: a job retried "
        "after a cancel was asked keeps it, and a cancel then cancels it at once.\n\n"
        + effects_table()
    )


if __name__ == "__main__":
    print(page(), end="")
