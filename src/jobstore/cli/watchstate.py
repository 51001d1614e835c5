"""The state behind ``jobstore watch``, pure: job records folded into counts by status,
throughput, the most recent changes and the progress of running jobs. No sockets, no terminal.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from ..client.requests import Record
from ..states import QUEUED, TERMINAL, Status

# Queue first, then running, then the ways a job ends.
DISPLAY_ORDER = tuple(
    s.value
    for s in (
        Status.SUBMITTED,
        Status.RETRYING,
        Status.ACCEPTED,
        Status.COMPLETE,
        Status.CANCELLED,
        Status.FORBIDDEN,
        Status.FAILED,
    )
)
FINISHED = frozenset(s.value for s in TERMINAL)
WAITING = frozenset(s.value for s in QUEUED)
BUCKETS = 20  # a throughput window is this many buckets, rates move a bucket at a time
# What the views call a status: an accepted job is one a driver is running.
LABELS = {Status.ACCEPTED.value: "running"}


def label(status: str) -> str:
    """A status as the views name it (``accepted`` is ``running``)."""
    return LABELS.get(status, status)


@dataclass(frozen=True, slots=True)
class RecentChange:
    """One line of the watch view's recent changes (not :class:`jobstore.protocol.sealed.Change`)."""

    seq: int
    job: str
    client: str
    status: str
    updated: int  # ms since the epoch, by the store's clock
    cancel_requested: bool = False
    progress: tuple[float, float] | None = None  # (done, total) of a running job

    @property
    def label(self) -> str:
        """The status as the views show it: ``running 3/10, cancel requested``."""
        text = label(self.status)
        if self.progress:
            text += f" {self.progress[0]:g}/{self.progress[1]:g}"
        if self.cancel_requested and self.status == Status.ACCEPTED:
            text += ", cancel requested"
        return text


@dataclass(frozen=True, slots=True)
class Progress:
    """A running (accepted) job whose progress is ``{"done": n, "total": m}``."""

    job: str
    client: str
    done: float
    total: float
    seq: int

    @property
    def fraction(self) -> float:
        """How far along, from 0 to 1 (a ``done`` past ``total`` shows as 1)."""
        return min(self.done / self.total, 1.0)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_progress(value: Any) -> tuple[float, float] | None:
    """``(done, total)`` of a ``{"done": n, "total": m}`` progress; None for any other shape."""
    if not isinstance(value, dict):
        return None
    done, total = value.get("done"), value.get("total")
    if not (_number(done) and _number(total)) or total <= 0 or done < 0:
        return None
    return done, total


def _requeued(record: Record) -> bool:
    """Whether a record is a failed job just sent back to the queue (requeue)."""
    return bool(
        record["status"] == Status.RETRYING
        and record.get("requeued")
        and not record.get("attempts")
    )


class WatchState:
    """Job records folded into what the watch view shows; no I/O, no terminal.

    Each job is counted once, in the status of its latest record. Only unfinished
    jobs are remembered one by one (a terminal record never changes again, but for a
    failed job requeued, which its record says), so
    memory stays bounded by the datasource's unfinished jobs however long the view
    runs; finished jobs the store later purges stay in the counts. Records with a
    ``seq`` at or below ``baseline_seq`` are history caught up at start: counted,
    but not throughput. Throughput is over the last ``window`` seconds of
    ``clock``, in whole buckets of ``window / 20`` seconds.

    ``delayed`` is the datasource's count from its stats when they give one (a watch of
    the whole datasource); a client's watch counts its own queued jobs whose
    ``not_before`` is after ``wall`` (seconds since the epoch), as they fall due.
    """

    def __init__(
        self,
        *,
        baseline_seq: int = 0,
        window: float = 5.0,
        recent: int = 50,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.baseline_seq = baseline_seq
        self.window = window
        self.seq = 0  # of the latest record applied
        self.changes = 0  # records applied
        self._clock = clock
        self._width = window / BUCKETS
        self._unfinished: dict[tuple[str, str], str] = {}
        self._counts: Counter[str] = Counter()
        self._progress: dict[tuple[str, str], Progress] = {}
        self._recent: deque[RecentChange] = deque(maxlen=recent)
        self._buckets: deque[list[int]] = deque()  # [bucket index, changes, finished]
        self._first_bucket = self._bucket()
        self._wall = wall
        self._not_before: dict[tuple[str, str], int] = {}  # queued jobs with a due time
        # From the datasource's stats: its queued jobs not yet due, and whether it is paused.
        self._stats_delayed: int | None = None
        self.paused = False

    def set_queue(self, delayed: int | None, paused: bool) -> None:
        """The datasource's pause and delayed count (None: count the records'), as its stats
        last said."""
        self._stats_delayed, self.paused = delayed, paused

    @property
    def delayed(self) -> int:
        """Queued jobs not yet due."""
        if self._stats_delayed is not None:
            return self._stats_delayed
        now = self._wall() * 1000
        return sum(1 for not_before in self._not_before.values() if not_before > now)

    def apply(self, record: Record) -> None:
        """Fold in one job record; one no newer than the last applied is a repeat and ignored."""
        seq: int = record["seq"]
        if seq <= self.seq:
            return
        self.seq = seq
        self.changes += 1
        key = (record["client"], record["job"])
        status: str = record["status"]
        old = self._unfinished.pop(key, None)
        if old is not None:
            self._counts[old] -= 1
        elif _requeued(record) and seq > self.baseline_seq and self._counts[Status.FAILED]:
            # A failed job the server sent back: counted as failed when it failed (live, or
            # in the history caught up at start, which shows every job at its last change).
            self._counts[Status.FAILED] -= 1
        self._counts[status] += 1
        finished = status in FINISHED
        if not finished:
            self._unfinished[key] = status
        not_before = record.get("not_before")
        if status in WAITING and isinstance(not_before, int):
            self._not_before[key] = not_before
        else:
            self._not_before.pop(key, None)
        progress = parse_progress(record.get("progress")) if status == Status.ACCEPTED else None
        if progress is None:
            self._progress.pop(key, None)
        else:
            self._progress[key] = Progress(key[1], key[0], *progress, seq)
        if old == status:
            # A progress report or a cancel request of a running job: one updating line per
            # job in the recent changes, not a line per report.
            self._drop_recent(key)
        cancel = bool(record.get("cancel_requested"))
        self._recent.append(
            RecentChange(seq, key[1], key[0], status, record["updated"], cancel, progress)
        )
        if seq > self.baseline_seq:
            self._tick(finished)

    def _drop_recent(self, key: tuple[str, str]) -> None:
        for i in range(len(self._recent) - 1, -1, -1):  # newest first: the job's last line
            change = self._recent[i]
            if (change.client, change.job) == key:
                del self._recent[i]
                return

    def _bucket(self) -> int:
        return math.floor(self._clock() / self._width)

    def _tick(self, finished: bool) -> None:
        index = self._bucket()
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
            while self._buckets[0][0] < index - BUCKETS:
                self._buckets.popleft()
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += finished

    @property
    def counts(self) -> dict[str, int]:
        """Jobs in each status (none left out), queued first, then running, then finished."""
        order = {name: i for i, name in enumerate(DISPLAY_ORDER)}
        present = [(name, n) for name, n in self._counts.items() if n]
        return dict(sorted(present, key=lambda item: order.get(item[0], len(order))))

    @property
    def unfinished(self) -> int:
        """Jobs not in a terminal status."""
        return len(self._unfinished)

    def rates(self) -> tuple[float, float]:
        """Changes and finished jobs per second over the window (its buckets that are complete)."""
        now = self._bucket()
        span = min(BUCKETS, now - self._first_bucket)
        if span <= 0:
            return 0.0, 0.0
        changes = finished = 0
        for index, bucket_changes, bucket_finished in self._buckets:
            if now - span <= index < now:
                changes += bucket_changes
                finished += bucket_finished
        seconds = span * self._width
        return changes / seconds, finished / seconds

    @property
    def recent(self) -> list[RecentChange]:
        """The latest changes, newest first."""
        return list(reversed(self._recent))

    @property
    def running(self) -> list[Progress]:
        """Accepted jobs reporting done/total progress, most recently changed first."""
        return sorted(self._progress.values(), key=lambda p: p.seq, reverse=True)

    def summary(self, limit: int = 10) -> dict[str, Any]:
        """The state as plain data (for ``--json``), with at most ``limit`` recent and running jobs."""
        changes_per_s, finished_per_s = self.rates()
        return {
            "seq": self.seq,
            "changes": self.changes,
            "counts": self.counts,
            "unfinished": self.unfinished,
            "delayed": self.delayed,
            "paused": self.paused,
            "changes_per_s": round(changes_per_s, 2),
            "finished_per_s": round(finished_per_s, 2),
            "running_with_progress": len(self._progress),
            "running": [
                {"job": p.job, "client": p.client, "done": p.done, "total": p.total}
                for p in self.running[:limit]
            ],
            "recent": [
                {
                    "seq": c.seq,
                    "job": c.job,
                    "client": c.client,
                    "status": c.status,
                    "updated": c.updated,
                    "cancel_requested": c.cancel_requested,
                }
                for c in self.recent[:limit]
            ],
        }
