"""The decisions both flavours make, without sockets, sleeping or an event loop; each takes its clock.

A watch's (what to yield, when to catch up, how long to wait, when to give up), a driver's
lease renewals (when one is due), and a driver's outage (how long to back off, what to log).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from ..errors import ClientError, RequestFailed, Timeout
from .requests import Record

Clock = Callable[[], float]


class WatchCursor:
    """A watch's decisions: what to yield, when to catch up, when to give up.

    ``last`` is the seq of the last record yielded; ``stale`` says the live stream
    cannot be trusted until the watch has listed with ``since = last``. While it is
    not stale, a watch reads every notification that has arrived (they come in
    bursts); a gap makes it stale, and the rest of the burst is caught up by listing.
    """

    def __init__(
        self, since: int, idle: float, timeout: float | None, *, clock: Clock = time.monotonic
    ) -> None:
        self.last = since
        self.stale = True  # catch up before trusting the live stream
        self.idle = idle
        self.timeout = timeout
        self._clock = clock
        self._quiet_since = clock()

    def listed(self, record: Record) -> bool:
        """Whether a record found by catching up is new, and so is to be yielded."""
        if record["seq"] <= self.last:
            return False
        self.last = record["seq"]
        return True

    def notified(self, msg: dict[str, Any]) -> Record | None:
        """The record of an opened notification to yield, or None (seen already, or after a gap)."""
        record: Record = msg["record"]
        if record["seq"] <= self.last:
            return None
        if msg["prev"] != self.last:
            self.stale = True
            return None
        self.last = record["seq"]
        return record

    def connected(self) -> None:
        """The SUB socket (re)connected: anything published meanwhile was lost."""
        self.stale = True

    def quiet(self, seq: int) -> None:
        """Nothing arrived for ``idle`` seconds; ``seq`` is the store's last seq on the topic now."""
        self.stale = seq != self.last

    def delivered(self) -> None:
        """The consumer came back for more after a record: the timeout counts from now."""
        self._quiet_since = self._clock()

    def wait(self) -> float:
        """Seconds to wait for the next event; raise Timeout when the watch's timeout has run out."""
        wait = self.idle
        if self.timeout is not None:
            wait = min(wait, self._quiet_since + self.timeout - self._clock())
            if wait <= 0:
                raise Timeout(f"no change to watch within {self.timeout:g} s")
        return wait


class Renewals:
    """When a driver renews the lease of the job its handler runs: three times per lease (at
    most every 50 ms), and at once when the handler reported progress, unless the store is
    away (then progress waits for the next try)."""

    def __init__(self, lease_ms: int, *, clock: Clock = time.monotonic) -> None:
        self.every = max(lease_ms / 3000, 0.05)
        self._clock = clock
        self._next = clock() + self.every

    def due(self, progress: bool, store_down: bool) -> bool:
        """Whether to send a renewal now, given whether progress waits to be sent."""
        return self._clock() >= self._next or (progress and not store_down)

    def renewed(self) -> None:
        """A renewal went through: the next is due a third of a lease from now."""
        self._next = self._clock() + self.every

    def postpone(self, seconds: float) -> None:
        """A renewal found the store away: try again in ``seconds``."""
        self._next = self._clock() + seconds


# How a driver waits while the store does not answer: doubling from FIRST_RETRY to MAX_RETRY s.
FIRST_RETRY = 0.1
MAX_RETRY = 5.0


def store_unavailable(exc: BaseException) -> bool:
    """Whether a failed call means the store is away (no reply, or shutting down: 503), so a
    driver should wait and try again rather than stop."""
    return isinstance(exc, Timeout) or (isinstance(exc, RequestFailed) and exc.status == 503)


class Outage:
    """A driver's decisions while its store does not answer, without sockets or sleeping.

    ``failed`` gives the seconds to wait before trying again: doubling from ``first``
    to ``cap``, each with jitter (between half and all of it, so drivers that lost the
    same store do not all come back in step). It gives a line to log on the first
    failure only, and ``answered`` gives one when the store answers again, so an outage
    is logged once however long it lasts. ``clock`` and ``jitter`` are injected for tests.
    """

    def __init__(
        self,
        first: float = FIRST_RETRY,
        cap: float = MAX_RETRY,
        *,
        clock: Clock = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.first, self.cap = first, cap
        self._clock, self._jitter = clock, jitter
        self._failures = 0
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """True from a failure until the store answers again."""
        return self._since is not None

    def failed(self, error: ClientError) -> tuple[float, str | None]:
        """Seconds to wait before the next try, and the line to log if this failure starts an outage."""
        delay = min(self.cap, self.first * 2 ** min(self._failures, 32))
        self._failures += 1
        message = None
        if self._since is None:
            self._since = self._clock()
            message = (
                f"the store does not answer ({error.message}); "
                f"trying again every {self.first:g} to {self.cap:g} s until it does"
            )
        return delay * (0.5 + self._jitter() / 2), message

    def answered(self) -> str | None:
        """The store answered: the line to log if that ends an outage."""
        if self._since is None:
            return None
        lasted = self._clock() - self._since
        self._since, self._failures = None, 0
        return f"the store answers again, after {lasted:.1f} s"
