"""Scheduling options of a submit, a datasource's queue settings and the retry backoff
(docs/protocol.md, "Scheduling and queue control").

Pure checks: each refuses bad input with a :class:`BadRequest` naming the field.
Times are ms since the Unix epoch, at most 2^53 - 1 so that JavaScript peers
(JSON numbers are doubles there) read them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ..errors import BadRequest
from ..protocol import shown
from ..records import Job
from .fairqueue import PRIORITY_MAX, PRIORITY_MIN
from .validation import optional_int

MAX_TIME = (1 << 53) - 1
MAX_DURATION = 1 << 40  # ms, about 35 years: as the lease bounds of take and status
MAX_ATTEMPTS = 1_000_000
SUBMIT_OPTIONS = ("priority", "delay", "not_before", "expires")
DEFAULT_MAX_BACKOFF = 300_000
JITTER = (0.8, 1.2)


class Timing(NamedTuple):
    """When and in which order a job may be taken: its record's scheduling fields."""

    priority: int = 0
    not_before: int | None = None
    expires: int | None = None


def submit_timing(body: Mapping[str, Any], now: int) -> Timing:
    """The timing a submit (or a batch item) asks for at wall time ``now``.

    ``delay`` counts from ``now``; ``expires`` must be after the job's start.
    """
    priority = optional_int(body, "priority", PRIORITY_MIN, PRIORITY_MAX)
    delay = optional_int(body, "delay", 0, MAX_TIME - now)
    not_before = optional_int(body, "not_before", 0, MAX_TIME)
    if delay is not None and not_before is not None:
        raise BadRequest(
            f"delay and not_before were both given ({shown(delay)} and {shown(not_before)}): "
            "give delay (ms from now) or not_before (ms since the epoch), not both"
        )
    if delay is not None:
        not_before = now + delay
    expires = optional_int(body, "expires", 0, MAX_TIME)
    if expires is not None:
        start, named = (now, "now") if not_before is None else (not_before, "its not_before")
        if expires <= start:
            raise BadRequest(
                f"expires {expires} is not after the job's start ({start}, {named}): "
                "give an expires later than the start, or none"
            )
    return Timing(0 if priority is None else priority, not_before, expires)


def same_timing(stored: Timing, asked: Timing, created: int, asked_at: int, started: bool) -> bool:
    """Whether a resubmit asking ``asked`` (at ``asked_at``) matches the job stored with ``stored``.

    Omitted fields are their defaults. A ``delay`` counts from the first submit (the record's
    ``created``), so resending the same submit is idempotent. Once the job has ``started``
    (taken or requeued, so its ``not_before`` says when it is retried), only priority and
    expires are compared.
    """
    if stored.priority != asked.priority or stored.expires != asked.expires:
        return False
    if started:
        return True
    return stored.not_before == asked.not_before or (
        asked.not_before is not None
        and stored.not_before is not None
        and stored.not_before - created == asked.not_before - asked_at
    )


class Settings(NamedTuple):
    """A datasource's queue settings; None: the store's own limit."""

    paused: bool = False
    backoff: int = 0
    max_backoff: int = DEFAULT_MAX_BACKOFF
    max_attempts: int | None = None
    lease: int | None = None

    def wire(self, max_attempts: int, lease: int) -> dict[str, Any]:
        """All settings, the store's limits (``max_attempts``, ``lease``) filling those unset."""
        return {
            "paused": self.paused,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "max_attempts": max_attempts if self.max_attempts is None else self.max_attempts,
            "lease": lease if self.lease is None else self.lease,
        }

    def stored(self) -> dict[str, Any]:
        """The settings that differ from the defaults (what the store keeps)."""
        default = Settings()
        return {k: v for k, v in self._asdict().items() if v != getattr(default, k)}


SETTINGS = Settings._fields


def settings_from(stored: Mapping[str, Any]) -> Settings:
    """Settings kept by :meth:`Settings.stored` (keys this version does not know are ignored)."""
    return Settings(**{k: v for k, v in stored.items() if k in SETTINGS})


def update_settings(current: Settings, body: Any) -> Settings:
    """``current`` with the settings in a POST body changed; any bad key or value refuses all."""
    if not isinstance(body, Mapping):
        raise BadRequest(
            f"body must be a map with any of {', '.join(SETTINGS)}, got {type(body).__name__}"
        )
    for key in body:
        if key not in SETTINGS:
            raise BadRequest(
                f"body has unknown setting {shown(key)}; the settings are {', '.join(SETTINGS)}"
            )
    changes: dict[str, Any] = {}
    if "paused" in body:
        paused = body["paused"]
        if not isinstance(paused, bool):
            raise BadRequest(f"paused must be true or false, got {shown(paused)}")
        changes["paused"] = paused
    bounds = {
        "backoff": (0, MAX_DURATION),
        "max_backoff": (0, MAX_DURATION),
        "max_attempts": (1, MAX_ATTEMPTS),
        "lease": (1, MAX_DURATION),
    }
    for key, (low, high) in bounds.items():
        if key in body:
            value = optional_int(body, key, low, high)
            if value is None:
                raise BadRequest(f"{key} must be an integer from {low} to {high}, got null")
            changes[key] = value
    return current._replace(**changes)


def backoff_delay(backoff: int, max_backoff: int, attempts: int, factor: float) -> int:
    """The retry delay (ms) of a job handed back after ``attempts`` attempts.

    ``min(backoff * 2^(attempts - 1), max_backoff) * factor``, where the caller draws
    ``factor`` uniformly from :data:`JITTER` so that jobs failing together do not come
    back together. ``backoff`` 0 retries at once.
    """
    if backoff == 0:
        return 0
    exponent = max(attempts, 1) - 1
    base = max_backoff if exponent >= 64 else min(backoff << exponent, max_backoff)
    return round(base * factor)


def retry_not_before(
    now: int, delay: int | None, settings: Settings, attempts: int, factor: float
) -> int | None:
    """When a job handed back (a ``retrying`` report, a lease run out) may be taken again.

    A report's own ``delay`` wins; else the datasource's backoff applies, with ``attempts``
    as at hand-back. None (due at once, as before scheduling existed) when neither delays it.
    """
    if delay is None:
        delay = backoff_delay(settings.backoff, settings.max_backoff, attempts, factor)
        if delay == 0:
            return None
    return min(now + delay, MAX_TIME)


def report_delay(body: Mapping[str, Any]) -> int | None:
    """The ``delay`` of a server's status report (ms), or None."""
    return optional_int(body, "delay", 0, MAX_DURATION)


EXPIRED_RESPONSE = {"error": "expired before it was taken"}
MAX_BATCH = 1000


def batch_jobs(body: Mapping[str, Any]) -> list[Any]:
    """The items of a batch submit: an array of 1 to :data:`MAX_BATCH`."""
    jobs = body.get("jobs")
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_BATCH:
        got = f"{len(jobs)} items" if isinstance(jobs, list) else shown(jobs)
        raise BadRequest(
            f"jobs must be an array of 1 to {MAX_BATCH} jobs, got {got}; split a larger batch"
        )
    return jobs


def longest_wait(due: Iterable[Job], now: int) -> int | None:
    """How long the longest-waiting of these due jobs has waited since it could run (since it was
    queued, or since its ``not_before``), in ms; None for no jobs.

    Never below 0: after the wall clock is set back, ``now`` may be before those times.
    """
    waits = [now - max(job.updated, job.not_before or 0) for job in due]
    return max(0, *waits) if waits else None
