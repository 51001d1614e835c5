"""The blocking concurrency glue, written by hand: stopping, waiting, and running a handler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..outcomes import JobContext, Outcome, completed, raised

Event = threading.Event
# What stops Driver.run with a job in hand (Ctrl-C) ...
Interrupted = KeyboardInterrupt
# ... and the word its log lines use for it.
INTERRUPTED = "interrupted"


def wait_for_stop(stop: threading.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; whether it is set."""
    return stop.wait(seconds)


class Work:
    """A handler running on one job, in a thread of its own (so the driver renews the lease)."""

    def __init__(self, handler: Callable[[JobContext], Any], ctx: JobContext) -> None:
        self._job = ctx.id
        self._outcome: Outcome | None = None
        self._thread = threading.Thread(
            target=self._run, args=(handler, ctx), name=f"job-{ctx.id}", daemon=True
        )
        self._thread.start()

    def _run(self, handler: Callable[[JobContext], Any], ctx: JobContext) -> None:
        try:
            response = handler(ctx)
        except Exception as exc:
            self._outcome = raised(exc, ctx.id)
            return
        self._outcome = completed(response)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, seconds: float) -> None:
        """Wait until the handler ends, at most ``seconds``."""
        self._thread.join(seconds)

    def outcome(self) -> Outcome | None:
        """How the handler ended, or None while it runs."""
        return self._outcome

    def result(self) -> Outcome:
        """How the handler ended, once it has."""
        if self._outcome is None:
            raise RuntimeError(f"the handler of job {self._job} ended without an outcome")
        return self._outcome

    def cancel(self) -> None:
        """A thread cannot be stopped: a handler still running finishes on its own, unreported."""
