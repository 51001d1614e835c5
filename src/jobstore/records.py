"""The job record, the names that key it, and its storage encoding — all pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import cbor2

from .errors import BadRequest
from .states import Status

NAME_RE = re.compile(r"[A-Za-z0-9._\-:@~]{1,128}")
RESERVED_DSIDS = frozenset({"server", "sub", "cat", "stats"})


def check_name(field: str, value: Any) -> str:
    """Return ``value`` if it is a valid DSID, job id or client id, else raise BadRequest."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be text, got {type(value).__name__}")
    if NAME_RE.fullmatch(value) is None:
        raise BadRequest(
            f"{field} {value[:140]!r} is not a valid name: use 1-128 characters "
            "from A-Z a-z 0-9 . _ - : @ ~"
        )
    return value


def check_dsid(value: Any) -> str:
    """Return ``value`` if it is a valid datasource id, else raise BadRequest."""
    dsid = check_name("dsid", value)
    if dsid in RESERVED_DSIDS:
        raise BadRequest(
            f"dsid {dsid!r} is reserved: choose a name other than server, sub, cat, stats"
        )
    return dsid


@dataclass(frozen=True, slots=True)
class Job:
    """One job record. ``dsid`` and ``lease_until`` are the store's own; the wire shows the rest."""

    dsid: str
    job: str
    client: str
    request: Any
    status: Status
    created: int
    updated: int
    seq: int
    attempts: int = 0
    cancel_requested: bool = False
    response: Any = None
    progress: Any = None
    lease_until: int = 0
    history: tuple[tuple[str, int], ...] = ()

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def wire(self) -> dict[str, Any]:
        """The record as contract section 3 shows it; unset response and progress are left out."""
        out: dict[str, Any] = {
            "job": self.job,
            "client": self.client,
            "request": self.request,
            "status": self.status.value,
            "cancel_requested": self.cancel_requested,
            "attempts": self.attempts,
            "created": self.created,
            "updated": self.updated,
            "seq": self.seq,
        }
        if self.response is not None:
            out["response"] = self.response
        if self.progress is not None:
            out["progress"] = self.progress
        out["history"] = [{"status": status, "at": at} for status, at in self.history]
        return out


def dump(job: Job) -> bytes:
    """The storage encoding of a record: a CBOR array in field order."""
    return cbor2.dumps(
        [
            job.dsid,
            job.job,
            job.client,
            job.request,
            job.status.value,
            job.created,
            job.updated,
            job.seq,
            job.attempts,
            job.cancel_requested,
            job.response,
            job.progress,
            job.lease_until,
            job.history,
        ]
    )


def load(data: bytes) -> Job:
    """The record stored by :func:`dump`."""
    f = cbor2.loads(data)
    created, updated, seq, attempts, cancel_requested, response, progress, lease_until = f[5:13]
    history = tuple((status, at) for status, at in f[13])
    return Job(
        f[0],
        f[1],
        f[2],
        f[3],
        Status(f[4]),
        created,
        updated,
        seq,
        attempts,
        cancel_requested,
        response,
        progress,
        lease_until,
        history,
    )
