"""The job record, the names that key it, and its storage encoding — all pure."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import cbor2

from .errors import BadRequest
from .states import Status

NAME_RE = re.compile(r"[A-Za-z0-9._\-:@~]{1,128}")
_STATUSES = {status.value: status for status in Status}  # faster than Status(value)
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


class Job(NamedTuple):
    """One job record. ``dsid``, ``lease_until`` and ``lease_ms`` are the store's own; the wire
    shows the rest.

    ``lease_until`` is a deadline on the store clock (:class:`jobstore.store.context.StoreClock`, not the
    wall clock; 0 when the job holds no lease) and ``lease_ms`` the lease the job was taken or
    accepted with (0: the store's default), by which a report without ``lease`` renews it.

    A named tuple rather than a dataclass: records are built and copied several
    times per request, and a tuple does both several times faster.
    """

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
    lease_ms: int = 0
    priority: int = 0
    not_before: int | None = None
    expires: int | None = None
    requeued: int = 0

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes`` applied."""
        return self._replace(**changes)

    def wire(self) -> dict[str, Any]:
        """The record as docs/protocol.md ("The job record") shows it; unset response and progress are left out."""
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
            "priority": self.priority,
            "not_before": self.not_before,
            "expires": self.expires,
            "requeued": self.requeued,
        }
        if self.response is not None:
            out["response"] = self.response
        if self.progress is not None:
            out["progress"] = self.progress
        out["history"] = [{"status": status, "at": at} for status, at in self.history]
        return out


def encode(job: Job) -> bytes:
    """The CBOR encoding of :meth:`Job.wire`: made once per change, then stored, sent and sealed."""
    return cbor2.dumps(job.wire())


PREFIX = 16  # bytes before the CBOR of a stored record: lease_until and lease_ms


def dump(job: Job, encoded: bytes) -> bytes:
    """The storage encoding of a record: its lease deadline and lease (8 bytes each, big-endian),
    then :func:`encode`'s bytes.

    The datasource is the first part of the record's key, so it is not repeated here.
    """
    return job.lease_until.to_bytes(8, "big") + job.lease_ms.to_bytes(8, "big") + encoded


def load(dsid: str, data: bytes) -> Job:
    """The record of datasource ``dsid`` stored by :func:`dump`."""
    return _load(dsid, data, PREFIX, int.from_bytes(data[8:PREFIX], "big"))


def load_v2(dsid: str, data: bytes) -> Job:
    """A record in the second storage format (an 8-byte wall-clock lease deadline, then the CBOR);
    used to upgrade. Its lease is unknown: ``lease_ms`` 0."""
    return _load(dsid, data, 8, 0)


def _load(dsid: str, data: bytes, prefix: int, lease_ms: int) -> Job:
    w = cbor2.loads(data[prefix:])
    return Job(
        dsid,
        w["job"],
        w["client"],
        w["request"],
        _STATUSES[w["status"]],
        w["created"],
        w["updated"],
        w["seq"],
        w["attempts"],
        w["cancel_requested"],
        w.get("response"),
        w.get("progress"),
        int.from_bytes(data[:8], "big"),
        tuple((h["status"], h["at"]) for h in w["history"]),
        lease_ms,
        # Records written before scheduling existed read as its defaults.
        w.get("priority", 0),
        w.get("not_before"),
        w.get("expires"),
        w.get("requeued", 0),
    )


def load_v1(data: bytes) -> Job:
    """A record in the first storage format (a CBOR array in field order); used to upgrade."""
    f = cbor2.loads(data)
    history = tuple((status, at) for status, at in f[13])
    # lease_ms 0 and the section 10 defaults: priority 0, no not_before or expires, never requeued.
    return Job._make((*f[:4], Status(f[4]), *f[5:13], history, 0, 0, None, None, 0))
