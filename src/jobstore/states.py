"""The job state machine of docs/protocol.md ("The job record", "Scheduling and queue control"):
every allowed transition, in one table.

Nothing outside this module decides which status follows which; the service
asks :func:`apply`, and anything not in :data:`TRANSITIONS` is an
:class:`~jobstore.errors.InvalidTransition`.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import InvalidTransition


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


def page() -> str:
    """docs/states.md, generated from :data:`TRANSITIONS` (``make docs`` writes it)."""
    rows = "\n".join(
        f"| {source.value} | {event.value} | {target.value} |"
        for (source, event), target in TRANSITIONS.items()
    )
    return (
        "# Job states\n\n"
        "Generated from `jobstore.states.TRANSITIONS` by `make docs`; a test keeps it current.\n"
        "Terminal: " + ", ".join(s.value for s in Status if s.terminal) + " (a failed job "
        "may be requeued by the server: the one way out of a terminal status). "
        "Any (status, event) pair not listed is refused (409 with the current record).\n\n"
        "```mermaid\n" + diagram() + "```\n\n"
        "| from | event | to |\n|---|---|---|\n" + rows + "\n"
    )


if __name__ == "__main__":
    print(page(), end="")
