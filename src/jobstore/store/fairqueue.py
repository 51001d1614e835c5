"""Which queued job a take gets: priority, fairness between clients, due times (docs/protocol.md,
"Scheduling and queue control").

The order is kept in sorted key-value indexes (LMDB databases in the store, a
sorted dict in the tests) so that every operation costs a few point reads and
writes and a first-key-at-or-after lookup: logarithmic in the queue's size,
whatever the number of clients. Nothing here scans a queue.

Names never contain NUL, so ``ds`` = ``dsid NUL`` ends the datasource; after it
every part is fixed width except the client, which is followed by NUL where
more comes after it. ``rank`` is one byte, ``100 - priority`` (0 = priority
100), so the highest priority sorts first; tickets, seqs and times are 8-byte
big-endian.

=======  ====================================  ======================================
index    key                                   value
=======  ====================================  ======================================
due      ds rank client NUL seq                job id: a due queued job, each client's
                                               jobs at a priority in queue (seq) order
ready    ds rank ticket client                 seq and job id of the client's oldest
                                               due job: the line of clients with due
                                               jobs at a priority, in ticket order
turns    ds rank client                        the client's ticket in that line
later    not_before ds job NUL                 rank seq client: a queued job not yet due
=======  ====================================  ======================================

**The take.** The first ``ready`` key under ``ds`` is the answer: the highest
priority with due jobs, the client at the front of its line, that client's
oldest due job. Serving a client sends it to the back of the line (a new
ticket) if it has due jobs left; otherwise it leaves the line.

**The line is the rotation.** A client joins at the back when it gains a due
job at a priority where it had none, so the first in line is the client that
has waited longest: at the start, the one whose oldest due job has been due
longest. Tickets only grow, so a client in the line waits for at most one job
of each other client before its own: one client's backlog cannot starve
another.

**Due times.** A queued job whose ``not_before`` is after the *watermark* (the
latest time the store has advanced to, never going back) waits in ``later``;
:func:`advance` moves the jobs that fell due into ``due``/``ready``, in due
time order, and the store sleeps until :func:`next_due`. A job entering the
queue goes straight to ``due`` when its ``not_before`` is at or before the
watermark.

Expiry (an ``expires ds job NUL`` index of queued jobs) is a function of the
record alone and lives with the store's other such indexes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

PRIORITY_MIN, PRIORITY_MAX = -100, 100
DUE, READY, TURNS, LATER = "due", "ready", "turns", "later"
INDEXES = (DUE, READY, TURNS, LATER)
WATERMARK = b"due-until"  # counter: the time due jobs have been moved up to
DELAYED = b"d:"  # counter prefix: a datasource's queued jobs not yet due
LINE = b"l:"  # counter prefix, then ds rank: the last ticket given out in that line
_U64 = 8


def u64(n: int) -> bytes:
    return n.to_bytes(_U64, "big")


def rank(priority: int) -> bytes:
    """The one-byte sort key of a priority: higher priorities sort first."""
    return bytes((PRIORITY_MAX - priority,))


class Entry(NamedTuple):
    """A queued job as the order sees it."""

    dsid: str
    job: str
    client: str
    priority: int
    seq: int


class Ordered(Protocol):
    """Sorted key-value indexes and counters, as one transaction sees them."""

    def get_raw(self, db: str, key: bytes) -> bytes | None: ...

    def put_raw(self, db: str, key: bytes, value: bytes) -> None: ...

    def delete_raw(self, db: str, key: bytes) -> bool:
        """Remove a key; False when it was absent."""
        ...

    def first_raw(self, db: str, prefix: bytes) -> tuple[bytes, bytes] | None:
        """The lowest key starting with ``prefix``, and its value."""
        ...

    def counter(self, key: bytes) -> int: ...

    def set_counter(self, key: bytes, value: int) -> None: ...


def _ds(dsid: str) -> bytes:
    return dsid.encode() + b"\0"


def _client_prefix(ds: bytes, r: bytes, client: str) -> bytes:
    return ds + r + client.encode() + b"\0"


def delayed_key(dsid: str) -> bytes:
    return DELAYED + _ds(dsid)


def later_key(dsid: str, job: str, not_before: int) -> bytes:
    return u64(not_before) + _ds(dsid) + job.encode() + b"\0"


def watermark(ix: Ordered) -> int:
    return ix.counter(WATERMARK)


def is_due(ix: Ordered, not_before: int | None) -> bool:
    """Whether a job entering the queue with this ``not_before`` goes straight to the due order."""
    return not_before is None or not_before <= ix.counter(WATERMARK)


def queue(ix: Ordered, entry: Entry, not_before: int | None) -> None:
    """A job enters the queue (submitted, handed back, requeued)."""
    if is_due(ix, not_before):
        _enqueue(ix, entry)
        return
    assert not_before is not None
    value = rank(entry.priority) + u64(entry.seq) + entry.client.encode()
    ix.put_raw(LATER, later_key(entry.dsid, entry.job, not_before), value)
    key = delayed_key(entry.dsid)
    ix.set_counter(key, ix.counter(key) + 1)


def unqueue(ix: Ordered, entry: Entry, not_before: int | None) -> None:
    """A job leaves the queue other than by :func:`take` (cancelled, failed, expired).

    Idempotent: a job :func:`take` removed already is left alone.
    """
    if not_before is not None and ix.delete_raw(
        LATER, later_key(entry.dsid, entry.job, not_before)
    ):
        key = delayed_key(entry.dsid)
        ix.set_counter(key, ix.counter(key) - 1)
        return
    _dequeue(ix, entry)


def delayed(ix: Ordered, dsid: str) -> int:
    """How many of a datasource's queued jobs are not yet due."""
    return ix.counter(delayed_key(dsid))


def next_due(ix: Ordered) -> int | None:
    """The earliest ``not_before`` of a job not yet due, or None."""
    found = ix.first_raw(LATER, b"")
    return None if found is None else int.from_bytes(found[0][:_U64], "big")


def advance(ix: Ordered, now: int, limit: int) -> list[Entry]:
    """Move up to ``limit`` jobs due by ``now`` into the due order; return them.

    The watermark (never going back) becomes ``now``, or the due time of the last job
    moved when ``limit`` stopped the move short: the next call carries on.
    """
    mark = ix.counter(WATERMARK)
    moved: list[Entry] = []
    while True:
        found = ix.first_raw(LATER, b"")
        if found is None or int.from_bytes(found[0][:_U64], "big") > now:
            mark = max(mark, now)
            break
        if len(moved) == limit:
            break
        key, value = found
        mark = max(mark, int.from_bytes(key[:_U64], "big"))
        dsid, job, _ = key[_U64:].decode().split("\0")
        entry = Entry(
            dsid,
            job,
            value[1 + _U64 :].decode(),
            PRIORITY_MAX - value[0],
            int.from_bytes(value[1 : 1 + _U64], "big"),
        )
        ix.delete_raw(LATER, key)
        counted = delayed_key(dsid)
        ix.set_counter(counted, ix.counter(counted) - 1)
        _enqueue(ix, entry)
        moved.append(entry)
    ix.set_counter(WATERMARK, mark)
    return moved


def line_prefix(dsid: str) -> bytes:
    """The prefix of a datasource's ``ready`` entries: the front of each of its lines."""
    return _ds(dsid)


def heads(dsid: str, ready: Iterable[tuple[bytes, bytes]]) -> list[Entry]:
    """The jobs at the front of a datasource's lines (each client's next due job at each
    priority), from its ``ready`` entries (those under :func:`line_prefix`)."""
    return [_ready_entry(dsid, key, value) for key, value in ready]


def peek(ix: Ordered, dsid: str) -> Entry | None:
    """The job the next take of a datasource gets, without taking it."""
    found = ix.first_raw(READY, _ds(dsid))
    return None if found is None else _ready_entry(dsid, *found)


def take(ix: Ordered, dsid: str) -> Entry | None:
    """Remove and return the job the next take of a datasource gets, and rotate the clients."""
    ds = _ds(dsid)
    found = ix.first_raw(READY, ds)
    if found is None:
        return None
    entry = _ready_entry(dsid, *found)
    r = rank(entry.priority)
    ix.delete_raw(READY, found[0])
    client = _client_prefix(ds, r, entry.client)
    ix.delete_raw(DUE, client + u64(entry.seq))
    turn = ds + r + entry.client.encode()
    following = ix.first_raw(DUE, client)
    if following is None:
        ix.delete_raw(TURNS, turn)
    else:  # to the back of the line
        ticket = _ticket(ix, ds + r)
        ix.put_raw(TURNS, turn, u64(ticket))
        ix.put_raw(READY, ds + r + u64(ticket) + entry.client.encode(), _head(following))
    return entry


def _ticket(ix: Ordered, line: bytes) -> int:
    """The next place at the back of a line (the line's counter)."""
    key = LINE + line
    ticket = ix.counter(key) + 1
    ix.set_counter(key, ticket)
    return ticket


def _head(due: tuple[bytes, bytes]) -> bytes:
    """A ``ready`` value: the seq and job id of the ``due`` entry at a client's head."""
    return due[0][-_U64:] + due[1]


def _ready_entry(dsid: str, key: bytes, value: bytes) -> Entry:
    at = len(dsid.encode()) + 1
    client = key[at + 1 + _U64 :].decode()
    seq = int.from_bytes(value[:_U64], "big")
    return Entry(dsid, value[_U64:].decode(), client, PRIORITY_MAX - key[at], seq)


def _enqueue(ix: Ordered, entry: Entry) -> None:
    ds, r, job = _ds(entry.dsid), rank(entry.priority), entry.job.encode()
    client = _client_prefix(ds, r, entry.client)
    seq = u64(entry.seq)
    turn = ds + r + entry.client.encode()
    head = ix.first_raw(DUE, client)
    if head is None:  # joins the line at the back
        ticket = _ticket(ix, ds + r)
        ix.put_raw(TURNS, turn, u64(ticket))
        ix.put_raw(READY, ds + r + u64(ticket) + entry.client.encode(), seq + job)
    elif head[0][-_U64:] > seq:  # older than its head (a delayed job fell due): the new head
        ticket = _number(ix.get_raw(TURNS, turn))
        ix.put_raw(READY, ds + r + u64(ticket) + entry.client.encode(), seq + job)
    ix.put_raw(DUE, client + seq, job)


def _dequeue(ix: Ordered, entry: Entry) -> None:
    ds, r = _ds(entry.dsid), rank(entry.priority)
    client = _client_prefix(ds, r, entry.client)
    seq = u64(entry.seq)
    if not ix.delete_raw(DUE, client + seq):
        return
    head = ix.first_raw(DUE, client)
    if head is not None and head[0][-_U64:] < seq:
        return  # not the client's head: its place in the line stands
    turn = ds + r + entry.client.encode()
    ready = ds + r + u64(_number(ix.get_raw(TURNS, turn))) + entry.client.encode()
    if head is None:  # leaves the line
        ix.delete_raw(READY, ready)
        ix.delete_raw(TURNS, turn)
    else:
        ix.put_raw(READY, ready, _head(head))


def _number(value: bytes | None) -> int:
    return 0 if value is None else int.from_bytes(value, "big")


def audit(
    entries: dict[str, dict[bytes, bytes]],
    counters: dict[bytes, int],
    queued: list[tuple[Entry, int | None]],
) -> list[str]:
    """What is wrong with the take order's indexes (``entries``: each database's contents) and
    counters, given every queued job and its ``not_before``; ``jobstore check`` reports it.

    Each queued job is in ``due`` (not_before null or at most the watermark) or in ``later``
    (at least the watermark), not both; each client with due jobs at a priority has one
    ``ready`` entry, naming its oldest, under the ticket ``turns`` gives it; nothing else (no
    ``turns`` entry of a client without due jobs, which would keep its old place in the line).
    """
    problems: list[str] = []
    mark = counters.get(WATERMARK, 0)
    due, later = dict(entries[DUE]), dict(entries[LATER])
    heads: dict[bytes, tuple[bytes, bytes]] = {}  # ds rank client -> (seq, job) of its oldest
    delayed: dict[str, int] = {}
    for entry, not_before in queued:
        ds, r, job = _ds(entry.dsid), rank(entry.priority), entry.job.encode()
        name = f"{entry.dsid}/{entry.job}"
        in_due = due.pop(_client_prefix(ds, r, entry.client) + u64(entry.seq), None) == job
        in_later = False
        if not_before is not None:
            value = rank(entry.priority) + u64(entry.seq) + entry.client.encode()
            in_later = later.pop(later_key(entry.dsid, entry.job, not_before), None) == value
        if in_due == in_later:
            where = "both due and later" if in_due else "neither due nor later"
            problems.append(f"queued job {name} is in {where} of the take order")
        elif in_due and not_before is not None and not_before > mark:
            problems.append(f"job {name} is due before its not_before (watermark {mark})")
        elif in_later and not_before is not None and not_before < mark:
            problems.append(f"job {name} waits in later past the watermark {mark}")
        if in_later:
            delayed[entry.dsid] = delayed.get(entry.dsid, 0) + 1
        if in_due:
            turn = ds + r + entry.client.encode()
            if turn not in heads or heads[turn][0] > u64(entry.seq):
                heads[turn] = (u64(entry.seq), job)
    problems += [f"due entry {key!r} is no queued job's" for key in due]
    problems += [f"later entry {key!r} is no queued job's" for key in later]
    ready = dict(entries[READY])
    turns = entries[TURNS]
    for turn, (seq, job) in heads.items():
        ticket = turns.get(turn)
        key = turn[: turn.index(b"\0") + 2] + (ticket or b"") + turn[turn.index(b"\0") + 2 :]
        if ticket is None or ready.pop(key, None) != seq + job:
            problems.append(f"client line entry for {turn!r} is missing or not its oldest job")
    problems += [f"ready entry {key!r} is of no client with due jobs" for key in ready]
    stray = turns.keys() - heads.keys()
    problems += [f"turn entry {key!r} is of a client with no due job" for key in stray]
    for counted, number in counters.items():
        if counted.startswith(DELAYED):
            dsid = counted[len(DELAYED) : -1].decode()
            if number != delayed.pop(dsid, 0):
                problems.append(
                    f"delayed count of {dsid} is {number}, the take order says otherwise"
                )
    problems += [f"delayed count of {dsid} is missing ({n})" for dsid, n in delayed.items() if n]
    return problems
