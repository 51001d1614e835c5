"""The take order over in-memory sorted indexes, against a brute-force reference."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from jobstore.store import fairqueue, keys
from jobstore.store.fairqueue import Entry


class MemoryIndex:
    """:class:`jobstore.fairqueue.Ordered` over dicts and sorted key lists; counts its lookups."""

    def __init__(self) -> None:
        self.values: dict[str, dict[bytes, bytes]] = {db: {} for db in keys.ORDER_INDEXES}
        self.keys: dict[str, list[bytes]] = {db: [] for db in keys.ORDER_INDEXES}
        self.counters: dict[bytes, int] = {}
        self.operations = 0

    def get_raw(self, db: str, key: bytes) -> bytes | None:
        self.operations += 1
        return self.values[db].get(key)

    def put_raw(self, db: str, key: bytes, value: bytes) -> None:
        self.operations += 1
        if key not in self.values[db]:
            insort(self.keys[db], key)
        self.values[db][key] = value

    def delete_raw(self, db: str, key: bytes) -> bool:
        self.operations += 1
        if key not in self.values[db]:
            return False
        del self.values[db][key]
        self.keys[db].remove(key)
        return True

    def first_raw(self, db: str, prefix: bytes, start: bytes = b"") -> tuple[bytes, bytes] | None:
        self.operations += 1
        keys = self.keys[db]
        at = bisect_left(keys, max(prefix, start))
        if at < len(keys) and keys[at].startswith(prefix):
            return keys[at], self.values[db][keys[at]]
        return None

    def delete_first(self, db: str, prefix: bytes, count: int) -> None:
        self.operations += 1
        keys = self.keys[db]
        at = bisect_left(keys, prefix)
        end = at
        while end < len(keys) and end - at < count and keys[end].startswith(prefix):
            del self.values[db][keys[end]]
            end += 1
        del keys[at:end]

    def counter(self, key: bytes) -> int:
        return self.counters.get(key, 0)

    def set_counter(self, key: bytes, value: int) -> None:
        self.counters[key] = value


class Reference:
    """The take order of docs/protocol.md stated by brute force: every take looks at every queued job.

    Each (datasource, priority) has a line of the clients with due jobs there: a client joins
    at the back when it gains one, leaves when it has none, and goes to the back when served.
    """

    def __init__(self) -> None:
        self.now = 0
        self.queued: dict[tuple[str, str], tuple[str, int, int, int | None]] = {}
        self.lines: dict[tuple[str, int], list[str]] = defaultdict(list)

    def due(self, dsid: str) -> list[Entry]:
        return [
            Entry(ds, job, client, priority, seq)
            for (ds, job), (client, priority, seq, not_before) in self.queued.items()
            if ds == dsid and (not_before is None or not_before <= self.now)
        ]

    def _has_due(self, dsid: str, priority: int, client: str) -> bool:
        return any(e.client == client and e.priority == priority for e in self.due(dsid))

    def _join(self, dsid: str, job: str) -> None:
        client, priority, _seq, _not_before = self.queued[dsid, job]
        if client not in self.lines[dsid, priority]:
            self.lines[dsid, priority].append(client)

    def queue(
        self, dsid: str, job: str, client: str, priority: int, seq: int, nb: int | None
    ) -> None:
        self.queued[dsid, job] = (client, priority, seq, nb)
        if nb is None or nb <= self.now:
            self._join(dsid, job)

    def remove(self, dsid: str, job: str) -> Entry:
        client, priority, seq, _not_before = self.queued.pop((dsid, job))
        if not self._has_due(dsid, priority, client) and client in self.lines[dsid, priority]:
            self.lines[dsid, priority].remove(client)
        return Entry(dsid, job, client, priority, seq)

    def advance(self, now: int) -> None:
        falling_due = sorted(
            (not_before, f"{dsid}\0{job}\0".encode(), dsid, job)
            for (dsid, job), (*_, not_before) in self.queued.items()
            if not_before is not None and self.now < not_before <= now
        )
        self.now = max(self.now, now)
        for *_, dsid, job in falling_due:
            self._join(dsid, job)

    def take(self, dsid: str) -> Entry | None:
        due = self.due(dsid)
        if not due:
            return None
        top = max(e.priority for e in due)
        line = self.lines[dsid, top]
        client = line.pop(0)
        job = min((e for e in due if e.client == client and e.priority == top), key=lambda e: e.seq)
        del self.queued[dsid, job.job]
        if self._has_due(dsid, top, client):
            line.append(client)
        return job


DSIDS = ("q", "q2")
CLIENTS = ("a", "b", "c", "ab", "d")
PRIORITIES = (-100, -1, 0, 0, 0, 5, 100)


class TakeOrder(RuleBasedStateMachine):
    """Submits, takes, cancels, hand-backs and the clock, on the indexes and the reference alike.

    Beyond agreeing with the reference, every take is checked against the documented words:
    due jobs only, the highest priority, a client's jobs in queue order, and no client served
    twice at a priority while another client waits there with due jobs (since it last gained
    a place in the line: one that had none left and gains one again queues at the back).
    """

    collect_at = fairqueue.COLLECT_AT  # taken jobs' entries a client leaves before they go

    @initialize()
    def start(self) -> None:
        self.default_collect_at = fairqueue.COLLECT_AT
        fairqueue.COLLECT_AT = self.collect_at
        self.ix = MemoryIndex()
        self.ref = Reference()
        self.seq = 0
        self.names = 0
        self.not_before: dict[tuple[str, str], int | None] = {}
        self.taken: list[Entry] = []
        # (dsid, priority, waiting client) -> clients served there since it began to wait
        self.served_while_waiting: dict[tuple[str, int, str], set[str]] = {}

    def _queue(self, dsid: str, job: str, client: str, priority: int, delay: int | None) -> None:
        self.seq += 1
        not_before = None if delay is None else self.ref.now + delay
        entry = Entry(dsid, job, client, priority, self.seq)
        fairqueue.queue(self.ix, entry, not_before)
        self.ref.queue(dsid, job, client, priority, self.seq, not_before)
        self.not_before[dsid, job] = not_before

    @rule(
        dsid=st.sampled_from(DSIDS),
        client=st.sampled_from(CLIENTS),
        priority=st.sampled_from(PRIORITIES),
        delay=st.none() | st.integers(0, 30),
    )
    def submit(self, dsid: str, client: str, priority: int, delay: int | None) -> None:
        self.names += 1
        self._queue(dsid, f"j{self.names}", client, priority, delay)

    @rule(dsid=st.sampled_from(DSIDS), count=st.integers(1, 4))
    def take(self, dsid: str, count: int) -> None:
        for _ in range(count):
            expected = self.ref.take(dsid)
            due_before = self.ref.due(dsid) + ([] if expected is None else [expected])
            got = fairqueue.take(self.ix, dsid)
            assert got == expected
            if got is None:
                return
            self._check_contract(got, due_before)
            self.taken.append(got)

    def _check_contract(self, got: Entry, due_before: list[Entry]) -> None:
        assert got.priority == max(e.priority for e in due_before)
        own = [e.seq for e in due_before if e.client == got.client and e.priority == got.priority]
        assert got.seq == min(own)
        waiting = {e.client for e in due_before if e.priority == got.priority}
        key = (got.dsid, got.priority)
        for (dsid, priority, client), served in list(self.served_while_waiting.items()):
            if (dsid, priority) != key:
                continue
            if client not in waiting:
                del self.served_while_waiting[dsid, priority, client]
            elif client != got.client:
                assert got.client not in served, f"{got.client} served twice while {client} waited"
                served.add(got.client)
        for client in waiting:
            self.served_while_waiting.setdefault((*key, client), set())
        self.served_while_waiting[(*key, got.client)] = set()

    @precondition(lambda self: bool(self.ref.queued))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.cancel_job(*data.draw(st.sampled_from(sorted(self.ref.queued))))

    def cancel_job(self, dsid: str, job: str) -> None:
        not_before = self.ref.queued[dsid, job][3]
        entry = self.ref.remove(dsid, job)
        fairqueue.unqueue(self.ix, entry, not_before)
        # Its last due job there gone, the client no longer waits (docs/protocol.md: it leaves
        # the line, and gains a new place at the back with its next due job). Takes alone do
        # not see this when it rejoins before the next take there.
        if entry.client not in self.ref.lines[dsid, entry.priority]:
            self.served_while_waiting.pop((dsid, entry.priority, entry.client), None)

    @precondition(lambda self: bool(self.taken))
    @rule(data=st.data(), delay=st.none() | st.integers(0, 30))
    def hand_back(self, data: st.DataObject, delay: int | None) -> None:
        entry = self.taken.pop(data.draw(st.integers(0, len(self.taken) - 1)))
        self._queue(entry.dsid, entry.job, entry.client, entry.priority, delay)

    @rule(step=st.integers(0, 20), limit=st.integers(1, 1000))
    def tick(self, step: int, limit: int) -> None:
        now = self.ref.now + step
        moved = fairqueue.advance(self.ix, now, limit)
        assert len(moved) <= limit
        if len(moved) == limit:
            fairqueue.advance(self.ix, now, 10**6)  # the rest, as the store's next batch would
        self.ref.advance(now)

    @invariant()
    def counts_agree(self) -> None:
        if not hasattr(self, "ref"):
            return
        for dsid in DSIDS:
            expected = sum(
                1
                for (ds, _job), (*_, not_before) in self.ref.queued.items()
                if ds == dsid and not_before is not None and not_before > self.ref.now
            )
            assert fairqueue.delayed(self.ix, dsid) == expected
            head = fairqueue.peek(self.ix, dsid)
            assert (head is None) == (not self.ref.due(dsid))
        queued = [
            (Entry(dsid, job, client, priority, seq), not_before)
            for (dsid, job), (client, priority, seq, not_before) in self.ref.queued.items()
        ]
        assert fairqueue.audit(self.ix.values, self.ix.counters, queued) == []
        pending = [
            nb for *_, nb in self.ref.queued.values() if nb is not None and nb > self.ref.now
        ]
        assert fairqueue.next_due(self.ix) == (min(pending) if pending else None)

    def teardown(self) -> None:
        if hasattr(self, "default_collect_at"):
            fairqueue.COLLECT_AT = self.default_collect_at


class TakeOrderCollectingOften(TakeOrder):
    """The same, with a client's taken jobs' entries collected every 2 takes, not 64."""

    collect_at = 2


TakeOrder.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_take_order_matches_the_reference = TakeOrder.TestCase
TakeOrderCollectingOften.TestCase.settings = TakeOrder.TestCase.settings
test_take_order_collecting_often_matches_the_reference = TakeOrderCollectingOften.TestCase


def test_the_model_counts_a_wait_from_when_the_client_last_joined_the_line() -> None:
    """a waits while b is served, then cancels its only job and leaves the line; b and a
    rejoin, b first: b goes first again, which is no second turn while a waited (Hypothesis
    found the model saying so)."""
    model = TakeOrder()
    model.start()
    try:
        for client in "aab":
            model.submit(dsid="q", client=client, priority=0, delay=None)
        model.take(dsid="q", count=2)  # a (j1), then b (j3) while a waits with j2
        model.cancel_job("q", "j2")  # a has no due job left: out of the line
        for client in "ba":
            model.submit(dsid="q", client=client, priority=0, delay=None)
        model.take(dsid="q", count=1)  # b (j4), at the front of the new line
        assert [e.job for e in model.taken] == ["j1", "j3", "j4"]
    finally:
        model.teardown()


def test_the_client_with_the_oldest_due_job_goes_first_then_clients_rotate() -> None:
    ix = MemoryIndex()
    for seq, client in enumerate("bbbaac", start=1):
        fairqueue.queue(ix, Entry("q", f"j{seq}", client, 0, seq), None)
    order = [fairqueue.take(ix, "q") for _ in range(7)]
    assert [e.job if e else None for e in order] == ["j1", "j4", "j6", "j2", "j5", "j3", None]


def test_higher_priority_goes_first_and_delayed_jobs_wait() -> None:
    ix = MemoryIndex()
    fairqueue.queue(ix, Entry("q", "low", "a", -5, 1), None)
    fairqueue.queue(ix, Entry("q", "later", "a", 100, 2), 50)
    fairqueue.queue(ix, Entry("q", "high", "b", 7, 3), None)
    assert fairqueue.take(ix, "q") == Entry("q", "high", "b", 7, 3)
    assert fairqueue.next_due(ix) == 50
    assert fairqueue.advance(ix, 49, 10) == []
    assert fairqueue.advance(ix, 50, 10) == [Entry("q", "later", "a", 100, 2)]
    assert [fairqueue.take(ix, "q"), fairqueue.take(ix, "q")] == [
        Entry("q", "later", "a", 100, 2),
        Entry("q", "low", "a", -5, 1),
    ]


def test_taken_jobs_leave_due_together_and_an_older_job_due_goes_first() -> None:
    """A take leaves its entry in due until COLLECT_AT pile up; a delayed job older than the
    client's head collects them first, so the next takes still find the right job."""
    ix = MemoryIndex()
    total = fairqueue.COLLECT_AT + 10
    fairqueue.queue(ix, Entry("q", "old", "a", 0, 1), 5)
    for seq in range(2, total + 2):
        fairqueue.queue(ix, Entry("q", f"j{seq}", "a", 0, seq), None)
    for seq in range(2, 12):
        assert fairqueue.take(ix, "q") == Entry("q", f"j{seq}", "a", 0, seq)
    assert len(ix.keys[keys.DUE]) == total  # the 10 taken, and the rest
    fairqueue.advance(ix, 5, 10)  # old (seq 1) falls due, older than the head j12
    assert len(ix.keys[keys.DUE]) == total - 10 + 1
    assert fairqueue.take(ix, "q") == Entry("q", "old", "a", 0, 1)
    taken = [fairqueue.take(ix, "q") for _ in range(total)]
    assert [e.seq for e in taken if e] == list(range(12, total + 2))
    assert ix.keys[keys.DUE] == [] and ix.keys[keys.TURNS] == []


def test_a_client_that_left_the_line_rejoins_at_the_back() -> None:
    """b, served while a waits, runs out of jobs and gains an old delayed one: a still goes first."""
    ix = MemoryIndex()
    fairqueue.queue(ix, Entry("q", "b-late", "b", 0, 1), 10)
    fairqueue.queue(ix, Entry("q", "b1", "b", 0, 2), None)
    fairqueue.queue(ix, Entry("q", "a1", "a", 0, 3), None)
    assert fairqueue.take(ix, "q") == Entry("q", "b1", "b", 0, 2)
    fairqueue.advance(ix, 10, 10)
    assert fairqueue.take(ix, "q") == Entry("q", "a1", "a", 0, 3)


def test_a_client_whose_last_due_job_is_cancelled_leaves_the_line() -> None:
    """a, waiting behind b, cancels its only job; b and then a gain one: b goes first again."""
    ix = MemoryIndex()
    fairqueue.queue(ix, Entry("q", "b1", "b", 0, 1), None)
    fairqueue.queue(ix, Entry("q", "a1", "a", 0, 2), None)
    assert fairqueue.take(ix, "q") == Entry("q", "b1", "b", 0, 1)
    fairqueue.unqueue(ix, Entry("q", "a1", "a", 0, 2), None)
    fairqueue.queue(ix, Entry("q", "b2", "b", 0, 3), None)
    fairqueue.queue(ix, Entry("q", "a2", "a", 0, 4), None)
    assert fairqueue.take(ix, "q") == Entry("q", "b2", "b", 0, 3)


@pytest.mark.parametrize("clients", [1, 1000])
def test_a_take_costs_a_bounded_number_of_index_operations_whatever_the_clients(
    clients: int,
) -> None:
    """Each operation is one B-tree lookup; their number does not grow with queue or clients."""
    ix = MemoryIndex()
    for seq in range(5000):
        fairqueue.queue(ix, Entry("q", f"j{seq}", f"c{seq % clients}", seq % 3, seq), None)
    counts = []
    for _ in range(2000):
        before = ix.operations
        assert fairqueue.take(ix, "q") is not None
        counts.append(ix.operations - before)
    # first, delete, first, 2 puts (the line's ticket is a counter), and every COLLECT_AT takes
    # of a client (or when it leaves the line) one range delete of its taken jobs' entries
    assert max(counts) <= 6
    assert sum(counts) / len(counts) < 5.1


def test_a_turn_without_its_ready_entry_is_refused_naming_check() -> None:
    ix = MemoryIndex()
    fairqueue.queue(ix, Entry("q", "j1", "a", 0, 1), None)
    ix.delete_raw(keys.READY, ix.keys[keys.READY][0])  # damage: the line lost a
    with pytest.raises(RuntimeError, match="run jobstore check"):
        fairqueue.queue(ix, Entry("q", "j2", "a", 0, 2), None)
