"""What a driver's handler sees of its job, and what the driver reports for how the handler ended."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..errors import ForbidJob, JobCancelled, RetryJob, SetupError
from .requests import Record

log = logging.getLogger("jobstore.client")

# What a handler's run comes to: the status and response to report, and a SetupError to raise.
Outcome = tuple[str, Any, SetupError | None]


class JobContext:
    """What a ``Driver.run`` handler sees of the job it is running."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self._progress: Any = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        # A job handed back after the client asked to cancel it arrives with the request standing.
        if record.get("cancel_requested"):
            self._cancel.set()

    @property
    def id(self) -> str:
        return str(self.record["job"])

    @property
    def request(self) -> Any:
        return self.record["request"]

    @property
    def cancel_requested(self) -> bool:
        """True once the client asked to cancel; the handler decides (raise JobCancelled to stop)."""
        return self._cancel.is_set()

    def progress(self, value: Any) -> None:
        """Report progress; it is sent with the next lease renewal (at once if none is due)."""
        with self._lock:
            self._progress = value

    def _pop_progress(self) -> Any:
        """The progress set since the last call, or None (for the driver's renewal loop)."""
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def _restore_progress(self, progress: Any) -> None:
        """Put back progress that could not be sent, unless newer progress was set meanwhile."""
        with self._lock:
            if self._progress is None:
                self._progress = progress

    def _renewed(self, record: Record) -> None:
        """Take in the record a renewal returned (for the driver's renewal loop)."""
        if record.get("cancel_requested"):
            self._cancel.set()


def handler_outcome(exc: Exception) -> tuple[str, Any]:
    """The status and response a driver reports for a handler that raised ``exc``."""
    if isinstance(exc, JobCancelled):
        return "cancelled", _error_text(exc) if str(exc) else None
    if isinstance(exc, RetryJob):
        return "retrying", _error_text(exc) if str(exc) else None
    if isinstance(exc, SetupError):
        return "retrying", {"error": f"the driver cannot run jobs: {exc}"}
    if isinstance(exc, ForbidJob):
        return "forbidden", {"error": _error_text(exc)}
    return "failed", {"error": _error_text(exc)}


def completed(response: Any) -> Outcome:
    """The outcome of a handler that returned ``response``."""
    return "complete", response, None


def raised(exc: Exception, job: str) -> Outcome:
    """The outcome of a handler that raised ``exc``; a plain failure is logged with its traceback."""
    status, response = handler_outcome(exc)
    if isinstance(exc, SetupError):
        return status, response, exc
    if status == "failed":
        log.exception("job %s failed", job)
    return status, response, None


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
