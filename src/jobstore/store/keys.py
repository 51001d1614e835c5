"""Every LMDB key the store writes: the databases, their key layouts, prefixes and builders.

Names never contain NUL, so NUL separates key parts; seq and times are 8-byte
big-endian so keys sort numerically.

The store speaks of twelve logical tables (the rows below). Since format 6 they live in
three LMDB databases (:data:`PLACES`), because a commit copies the root-to-leaf path of
every database it touches: ``jobs`` alone; ``log`` holds ``clients``, ``changes`` and
``done``; ``hot`` holds ``meta`` and the seven small indexes. Each table's keys start with
its one-byte prefix in its database, except meta's, which start with a lower-case letter
and so never meet the indexes' upper-case prefixes. Formats 1 to 5 kept one database per
table, named after it, with no prefix (:data:`OLD_PLACES`).

=========  ==============================  =====================================
table      key                             value
=========  ==============================  =====================================
jobs       dsid NUL job NUL                record (:func:`jobstore.records.dump`)
queue      dsid NUL seq                    job id of a submitted/retrying job
clients    dsid NUL client NUL seq         job id, one entry per job at its last change
changes    dsid NUL seq                    job id, one entry per job at its last change
leases     lease_until dsid NUL job NUL    empty: accepted jobs by lease deadline
done       updated dsid NUL job NUL        empty: terminal jobs by when they ended (retention)
expiry     expires dsid NUL job NUL        empty: queued jobs with an ``expires``, by it
due        dsid NUL rank client NUL seq    job id: a due queued job (take order, below)
ready      dsid NUL rank ticket client     seq and job id of the client's oldest due job [NUL,
                                           one byte: its taken jobs still in due]: the line
turns      dsid NUL rank client            the client's ticket in that line
later      not_before dsid NUL job NUL     rank seq client: a queued job not yet due
meta       b"seq", b"secret", b"t:"topic   change counter, notification secret, last seq per topic,
           b"cat", b"n:"dsid NUL[client    the hypercat items (a CBOR array), active job counts,
           NUL], b"s:"dsid NUL status NUL, job counts by status, the storage format (absent in
           b"format", b"clock",            format 1, which stored records as CBOR arrays), the
           b"q:"dsid NUL, b"d:"dsid NUL,   store clock's last committed reading (ms), a datasource's
           b"due-until", b"l:"dsid NUL     queue settings (a CBOR map), its jobs not yet due, the
           rank                            time due jobs have been moved up to, and the last
                                           ticket of each line of clients (fairqueue)
=========  ==============================  =====================================

The index entries of a record are a function of the record alone
(:func:`entries`), so a write replaces exactly the old record's entries with the
new one's; ``check`` rebuilds them with the same function. The take order's
indexes (``due``, ``ready``, ``turns``, ``later``; ``rank`` is one byte, 100 -
priority, tickets are 8-byte big-endian) also depend on the order jobs arrived in:
:mod:`jobstore.store.fairqueue` keeps them, from :meth:`jobstore.store.txn.Txn.put`,
with the prefixes and builders below.
"""

from __future__ import annotations

from ..records import Job
from ..states import QUEUED, TERMINAL

FORMAT = 7  # the storage format this jobstore writes (:mod:`jobstore.store.formats`)
SHARED_FORMAT = 6  # the first format with the three shared databases (:data:`PLACES`)
SEQ_KEY = b"seq"
SECRET_KEY = b"secret"
CATALOGUE_KEY = b"cat"
FORMAT_KEY = b"format"
CLOCK_KEY = b"clock"
JOURNAL_KEY = b"journal"  # the number of the last journaled batch the data file holds
TOPIC_PREFIX = b"t:"  # then the topic name: the last seq published there
COUNT_PREFIX = b"n:"  # then dsid NUL [client NUL]: unfinished jobs
STATUS_PREFIX = b"s:"  # then dsid NUL status NUL: jobs in that status
SETTINGS_PREFIX = b"q:"  # then dsid NUL: the datasource's queue settings
WATERMARK_KEY = b"due-until"  # the time due jobs have been moved up to (take order)
DELAYED_PREFIX = b"d:"  # then dsid NUL: a datasource's queued jobs not yet due
LINE_PREFIX = b"l:"  # then dsid NUL rank: the last ticket given out in that line of clients
# Every meta key is one of these or starts with one: all start with a lower-case letter.
META_PREFIXES = (
    SEQ_KEY,
    SECRET_KEY,
    CATALOGUE_KEY,
    FORMAT_KEY,
    CLOCK_KEY,
    JOURNAL_KEY,
    WATERMARK_KEY,
    TOPIC_PREFIX,
    COUNT_PREFIX,
    STATUS_PREFIX,
    SETTINGS_PREFIX,
    DELAYED_PREFIX,
    LINE_PREFIX,
)

INDEXES = ("clients", "changes", "queue", "leases", "done", "expiry")
DUE, READY, TURNS, LATER = "due", "ready", "turns", "later"
ORDER_INDEXES = (DUE, READY, TURNS, LATER)  # the take order's, kept by fairqueue
TABLES = ("jobs", *INDEXES, *ORDER_INDEXES, "meta")
# table -> (LMDB database, key prefix), from format 6 on.
PLACES = {
    "jobs": ("jobs", b""),
    "clients": ("log", b"C"),
    "changes": ("log", b"S"),
    "done": ("log", b"D"),
    "meta": ("hot", b""),  # its keys start with a lower-case letter: below the prefixes
    "queue": ("hot", b"Q"),
    "leases": ("hot", b"L"),
    "expiry": ("hot", b"E"),
    DUE: ("hot", b"D"),
    READY: ("hot", b"R"),
    TURNS: ("hot", b"T"),
    LATER: ("hot", b"N"),
}
OLD_PLACES = {table: (table, b"") for table in TABLES}  # formats 1 to 5
EMPTY_VALUED = frozenset({"leases", "done", "expiry"})  # the others hold the job id
NO_ENTRIES = (None,) * len(INDEXES)
U64 = 8


def u64(n: int) -> bytes:
    return n.to_bytes(U64, "big")


def name(*parts: str) -> bytes:
    """Key parts, each ended by NUL: ``name(dsid)`` prefixes a datasource's keys."""
    return "\0".join(parts).encode() + b"\0"


def rank(priority: int) -> bytes:
    """The one-byte sort key of a priority (-100 to 100): higher priorities sort first."""
    return bytes((100 - priority,))


def client_prefix(ds: bytes, r: bytes, client: str) -> bytes:
    """The prefix of a client's ``due`` entries at rank ``r`` (``ds`` = ``name(dsid)``)."""
    return ds + r + client.encode() + b"\0"


def later_key(dsid: str, job: str, not_before: int) -> bytes:
    """A job's ``later`` key: waiting until ``not_before``."""
    return u64(not_before) + name(dsid, job)


def delayed_key(dsid: str) -> bytes:
    """The meta key of a datasource's count of queued jobs not yet due."""
    return DELAYED_PREFIX + name(dsid)


def record_key(dsid: str, job: str) -> bytes:
    """The key of a record in ``jobs``; the tail of its ``leases`` and ``done`` keys."""
    return name(dsid, job)


def timed_key(when: int, record: bytes) -> bytes:
    """A ``leases``, ``done`` or ``expiry`` key: the time, then the record's key."""
    return u64(when) + record


def count_key(*parts: str) -> bytes:
    """The meta key of the unfinished-job count of a datasource, or of one client in it."""
    return COUNT_PREFIX + name(*parts)


def status_key(dsid: str, status: str) -> bytes:
    """The meta key of the count of a datasource's jobs in one status."""
    return STATUS_PREFIX + name(dsid, status)


def settings_key(dsid: str) -> bytes:
    """The meta key of a datasource's queue settings."""
    return SETTINGS_PREFIX + name(dsid)


def topic_key(topic: str) -> bytes:
    """The meta key of the last seq published on a topic."""
    return TOPIC_PREFIX + topic.encode()


def entries(job: Job, ds: bytes, key: bytes) -> tuple[bytes | None, ...]:
    """The index keys a record owns, in :data:`INDEXES` order (None where it has none).

    ``ds`` is ``name(job.dsid)`` and ``key`` the record's own key, ``record_key(job.dsid, job.job)``:
    the hot path has them already.
    """
    seq = job.seq.to_bytes(U64, "big")
    status = job.status
    queued = status in QUEUED
    return (
        ds + job.client.encode() + b"\0" + seq,
        ds + seq,
        ds + seq if queued else None,
        job.lease_until.to_bytes(U64, "big") + key if job.lease_until else None,
        job.updated.to_bytes(U64, "big") + key if status in TERMINAL else None,
        job.expires.to_bytes(U64, "big") + key if queued and job.expires is not None else None,
    )


def index_keys(job: Job) -> dict[str, bytes]:
    """The index entries (database name -> key) a record owns."""
    found = entries(job, name(job.dsid), record_key(job.dsid, job.job))
    return {db: key for db, key in zip(INDEXES, found, strict=True) if key is not None}


def dsid_of(key: bytes) -> str:
    """The datasource of a key that starts with one (``jobs``, ``queue``, ``changes`` and
    ``clients`` keys, and meta keys once their prefix is cut off)."""
    return key.split(b"\0", 1)[0].decode()


def time_of(key: bytes) -> int:
    """The time a ``leases``, ``done`` or ``expiry`` key starts with."""
    return int.from_bytes(key[:U64], "big")


def split_timed(key: bytes) -> tuple[int, str, str]:
    """(time, dsid, job) of a ``leases``, ``done`` or ``expiry`` key."""
    dsid, job, _ = bytes(key[U64:]).decode().split("\0")
    return time_of(key), dsid, job
