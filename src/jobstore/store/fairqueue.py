"""Which queued job a take gets: priority, fairness between clients, due times (docs/protocol.md,
"Scheduling and queue control").

The order is kept in sorted key-value indexes (LMDB databases in the store, a
sorted dict in the tests) so that every operation costs a few point reads and
writes and a first-key-at-or-after lookup: logarithmic in the queue's size,
whatever the number of clients. Nothing here scans a queue.

The key layouts are :mod:`jobstore.store.keys`'s, with every other key's.
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
                                               due job [NUL, one byte: how many taken
                                               jobs it has left in due]: the line of
                                               clients with due jobs at a priority,
                                               in ticket order
turns    ds rank client                        the client's ticket in that line
later    not_before ds job NUL                 rank seq client: a queued job not yet due
=======  ====================================  ======================================

**The take.** The first ``ready`` key under ``ds`` is the answer: the highest
priority with due jobs, the client at the front of its line, that client's
oldest due job. Serving a client sends it to the back of the line (a new
ticket) if it has due jobs left; otherwise it leaves the line.

**Taken jobs leave ``due`` in bunches.** Each client's due jobs sit together in
``due``, so deleting each taken one at once would dirty a page per client per
commit: with 100 clients, 100 takes wrote about 120 more pages than a FIFO
queue. A take leaves its job's entry behind instead, below the client's head
(the next job is the first entry after the one taken), and counts it in the
``ready`` value; once :data:`COLLECT_AT` have piled up, or the client leaves
the line, or an older job becomes its head, they go in one range delete, which
touches one or two pages. Entries below a client's head are always its taken
ones, and their number is the count.

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

from .keys import (
    DELAYED_PREFIX,
    DUE,
    LATER,
    LINE_PREFIX,
    READY,
    TURNS,
    U64,
    WATERMARK_KEY,
    client_prefix,
    delayed_key,
    later_key,
    rank,
    u64,
)
from .keys import name as ds_key  # ``dsid NUL``: the prefix of a datasource's entries

PRIORITY_MIN, PRIORITY_MAX = -100, 100
COLLECT_AT = 64  # taken entries a client leaves in ``due`` before they are deleted together


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

    def first_raw(self, db: str, prefix: bytes, start: bytes = b"") -> tuple[bytes, bytes] | None:
        """The lowest key starting with ``prefix`` (and not below ``start``), and its value."""
        ...

    def delete_first(self, db: str, prefix: bytes, count: int) -> None:
        """Remove the ``count`` lowest keys starting with ``prefix`` (fewer if there are fewer)."""
        ...

    def counter(self, key: bytes) -> int: ...

    def set_counter(self, key: bytes, value: int) -> None: ...


def watermark(ix: Ordered) -> int:
    return ix.counter(WATERMARK_KEY)


def is_due(ix: Ordered, not_before: int | None) -> bool:
    """Whether a job entering the queue with this ``not_before`` goes straight to the due order."""
    return not_before is None or not_before <= ix.counter(WATERMARK_KEY)


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
    return None if found is None else int.from_bytes(found[0][:U64], "big")


def advance(ix: Ordered, now: int, limit: int) -> list[Entry]:
    """Move up to ``limit`` jobs due by ``now`` into the due order; return them.

    The watermark (never going back) becomes ``now``, or the due time of the last job
    moved when ``limit`` stopped the move short: the next call carries on.
    """
    mark = ix.counter(WATERMARK_KEY)
    moved: list[Entry] = []
    while True:
        found = ix.first_raw(LATER, b"")
        if found is None or int.from_bytes(found[0][:U64], "big") > now:
            mark = max(mark, now)
            break
        if len(moved) == limit:
            break
        key, value = found
        mark = max(mark, int.from_bytes(key[:U64], "big"))
        dsid, job, _ = key[U64:].decode().split("\0")
        entry = Entry(
            dsid,
            job,
            value[1 + U64 :].decode(),
            PRIORITY_MAX - value[0],
            int.from_bytes(value[1 : 1 + U64], "big"),
        )
        ix.delete_raw(LATER, key)
        counted = delayed_key(dsid)
        ix.set_counter(counted, ix.counter(counted) - 1)
        _enqueue(ix, entry)
        moved.append(entry)
    ix.set_counter(WATERMARK_KEY, mark)
    return moved


def line_prefix(dsid: str) -> bytes:
    """The prefix of a datasource's ``ready`` entries: the front of each of its lines."""
    return ds_key(dsid)


def heads(dsid: str, ready: Iterable[tuple[bytes, bytes]]) -> list[Entry]:
    """The jobs at the front of a datasource's lines (each client's next due job at each
    priority), from its ``ready`` entries (those under :func:`line_prefix`)."""
    return [_ready_entry(dsid, key, value) for key, value in ready]


def peek(ix: Ordered, dsid: str) -> Entry | None:
    """The job the next take of a datasource gets, without taking it."""
    found = ix.first_raw(READY, ds_key(dsid))
    return None if found is None else _ready_entry(dsid, *found)


def take(ix: Ordered, dsid: str) -> Entry | None:
    """Remove and return the job the next take of a datasource gets, and rotate the clients."""
    ds = ds_key(dsid)
    found = ix.first_raw(READY, ds)
    if found is None:
        return None
    key, value = found
    entry = _ready_entry(dsid, key, value)
    r = rank(entry.priority)
    name = entry.client.encode()
    client = ds + r + name + b"\0"
    taken = _taken(value) + 1  # its entry stays in due, below the next head
    following = ix.first_raw(DUE, client, client + u64(entry.seq + 1))
    if following is None:  # leaves the line, and due
        ix.delete_raw(READY, key)
        ix.delete_first(DUE, client, taken)
        ix.delete_raw(TURNS, ds + r + name)
        return entry
    if taken == COLLECT_AT:
        ix.delete_first(DUE, client, taken)
        taken = 0
    ticket = u64(_ticket(ix, ds + r))  # to the back of the line
    ix.put_raw(TURNS, ds + r + name, ticket)
    # Put before the delete: a line of one client would otherwise empty the database and
    # LMDB would write a freed page at every take.
    ix.put_raw(READY, ds + r + ticket + name, _head(following, taken))
    ix.delete_raw(READY, key)
    return entry


def _ticket(ix: Ordered, line: bytes) -> int:
    """The next place at the back of a line (the line's counter)."""
    key = LINE_PREFIX + line
    ticket = ix.counter(key) + 1
    ix.set_counter(key, ticket)
    return ticket


def _head(due: tuple[bytes, bytes], taken: int = 0) -> bytes:
    """A ``ready`` value: the seq and job id of the ``due`` entry at a client's head, and how
    many taken jobs the client has left in ``due`` (format 4 had no count: none)."""
    return due[0][-U64:] + due[1] + (b"\0" + bytes((taken,)) if taken else b"")


def _split(value: bytes) -> tuple[bytes, int]:
    """A ``ready`` value's head (seq and job id) and how many taken jobs its client has left in
    ``due``."""
    at = value.find(b"\0", U64)
    return (value, 0) if at < 0 else (value[:at], value[at + 1])


def _taken(value: bytes) -> int:
    return _split(value)[1]


def _ready_entry(dsid: str, key: bytes, value: bytes) -> Entry:
    at = len(dsid.encode()) + 1
    client = key[at + 1 + U64 :].decode()
    seq = int.from_bytes(value[:U64], "big")
    job = _split(value)[0][U64:].decode()
    return Entry(dsid, job, client, PRIORITY_MAX - key[at], seq)


def _line_place(ix: Ordered, ds: bytes, r: bytes, name: bytes) -> tuple[bytes, bytes] | None:
    """A client's ``ready`` key and value in a line, or None when it is not in the line."""
    ticket = ix.get_raw(TURNS, ds + r + name)
    if ticket is None:
        return None
    key = ds + r + ticket + name
    value = ix.get_raw(READY, key)
    if value is None:
        raise RuntimeError(
            f"take order: turns entry without its ready entry {key!r}: run jobstore check"
        )
    return key, value


def _enqueue(ix: Ordered, entry: Entry) -> None:
    ds, r, job, name = (
        ds_key(entry.dsid),
        rank(entry.priority),
        entry.job.encode(),
        entry.client.encode(),
    )
    client = ds + r + name + b"\0"
    seq = u64(entry.seq)
    place = _line_place(ix, ds, r, name)
    if place is None:  # joins the line at the back
        ticket = u64(_ticket(ix, ds + r))
        ix.put_raw(TURNS, ds + r + name, ticket)
        ix.put_raw(READY, ds + r + ticket + name, seq + job)
    elif place[1][:U64] > seq:  # older than its head (a delayed job fell due): the new head
        ix.delete_first(DUE, client, _taken(place[1]))  # taken entries may sort after it
        ix.put_raw(READY, place[0], seq + job)
    ix.put_raw(DUE, client + seq, job)


def _dequeue(ix: Ordered, entry: Entry) -> None:
    ds, r, name = ds_key(entry.dsid), rank(entry.priority), entry.client.encode()
    client = ds + r + name + b"\0"
    seq = u64(entry.seq)
    place = _line_place(ix, ds, r, name)
    if place is None:
        return
    ready, value = place
    head = value[:U64]
    if seq < head or not ix.delete_raw(DUE, client + seq):
        return  # taken already (its entry waits to be collected), or not queued here
    if seq > head:
        return  # not the client's head: its place in the line stands
    taken = _taken(value)
    following = ix.first_raw(DUE, client, client + seq)
    if following is None:  # leaves the line, and due
        ix.delete_first(DUE, client, taken)
        ix.delete_raw(READY, ready)
        ix.delete_raw(TURNS, ds + r + name)
    else:
        ix.put_raw(READY, ready, _head(following, taken))


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
    ``turns`` entry of a client without due jobs, which would keep its old place in the line)
    but the taken jobs' entries a client's ``ready`` value counts, all below its head.
    """
    problems: list[str] = []
    mark = counters.get(WATERMARK_KEY, 0)
    due, later = dict(entries[DUE]), dict(entries[LATER])
    heads: dict[bytes, tuple[bytes, bytes]] = {}  # ds rank client -> (seq, job) of its oldest
    delayed: dict[str, int] = {}
    for entry, not_before in queued:
        ds, r, job = ds_key(entry.dsid), rank(entry.priority), entry.job.encode()
        name = f"{entry.dsid}/{entry.job}"
        in_due = due.pop(client_prefix(ds, r, entry.client) + u64(entry.seq), None) == job
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
    problems += [f"later entry {key!r} is no queued job's" for key in later]
    left: dict[bytes, list[bytes]] = {}  # ds rank client -> seqs of entries no queued job owns
    for key in due:
        left.setdefault(key[: -U64 - 1], []).append(key[-U64:])
    ready = dict(entries[READY])
    turns = entries[TURNS]
    for turn, (seq, job) in heads.items():
        ticket = turns.get(turn)
        key = turn[: turn.index(b"\0") + 2] + (ticket or b"") + turn[turn.index(b"\0") + 2 :]
        head, count = _split(ready.pop(key, b"") if ticket is not None else b"")
        if head != seq + job:
            problems.append(f"client line entry for {turn!r} is missing or not its oldest job")
            continue
        taken = left.pop(turn, [])
        if len(taken) != count or any(other > seq for other in taken):
            problems.append(
                f"client line entry for {turn!r} counts {count} taken jobs left in due, "
                f"which holds {len(taken)} entries of no queued job"
            )
    problems += [f"due entry of {turn!r} is no queued job's" for turn in left]
    problems += [f"ready entry {key!r} is of no client with due jobs" for key in ready]
    stray = turns.keys() - heads.keys()
    problems += [f"turn entry {key!r} is of a client with no due job" for key in stray]
    for counted, number in counters.items():
        if counted.startswith(DELAYED_PREFIX):
            dsid = counted[len(DELAYED_PREFIX) : -1].decode()
            if number != delayed.pop(dsid, 0):
                problems.append(
                    f"delayed count of {dsid} is {number}, the take order says otherwise"
                )
    problems += [f"delayed count of {dsid} is missing ({n})" for dsid, n in delayed.items() if n]
    return problems
