"""Durable function calls (docs/databox.md, "Function calls"): the decisions, as pure values and functions.

A call to function F with call id J is the job J of datasource F, client ``notification``.
This module decides, without sockets or storage:

* which observations a call goes to: every ``notification`` observation whose path pattern
  matches the call's request path and whose content format equals the call's (zestdb's
  rule: a pattern ending ``*`` matches paths that start with the rest and are at least one
  character longer); every one of them gets it, as zestdb broadcasts, since a Go driver
  ignores calls to functions it did not register;
* what a call to nobody gets: kept (65) when F is known (registered in ``/cat``, observed,
  or called before), else 163 as zestdb;
* what a response POST does: the first one ends the call (Status 0 ``complete``, any other
  ``failed``), later ones change nothing and get 65; a response for an unknown call is 404;
* how observations are kept across a restart (encoded per DEALER identity).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import cbor2

from ..protocol import notification
from ..states import Status


class Observation(NamedTuple):
    """A Zest observation: the observe socket's DEALER ``ident`` and what it asked for.

    ``expires`` is the wall-clock ms it ends at (None: never, max_age 0).
    """

    ident: bytes
    pattern: str
    content_format: int
    mode: str
    expires: int | None = None


def matches(pattern: str, path: str) -> bool:
    """zestdb's match: equal, or ``prefix*`` and ``path`` starts with prefix and is longer."""
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return path.startswith(prefix) and len(path) > len(prefix)
    return pattern == path


class Observations:
    """The notification-mode observations of the store, by DEALER identity."""

    def __init__(self, items: Iterable[Observation] = ()) -> None:
        self._items: dict[bytes, Observation] = {}
        self.expiring = 0  # how many have an expiry: none, and nobody needs to look for one
        for obs in items:
            self.add(obs)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Observation]:
        return iter(self._items.values())

    def __contains__(self, ident: object) -> bool:
        return ident in self._items

    def add(self, obs: Observation) -> None:
        self.remove(obs.ident)
        self._items[obs.ident] = obs
        self.expiring += obs.expires is not None

    def remove(self, ident: bytes) -> Observation | None:
        obs = self._items.pop(ident, None)
        if obs is not None:
            self.expiring -= obs.expires is not None
        return obs

    def get(self, ident: bytes) -> Observation | None:
        return self._items.get(ident)

    def for_call(self, function: str, call: str, content_format: int) -> list[Observation]:
        """The observations a call goes to, in identity order (a stable order for tests)."""
        path = notification.request_path(function, call)
        return sorted(
            (
                obs
                for obs in self._items.values()
                if obs.content_format == content_format and matches(obs.pattern, path)
            ),
            key=lambda obs: obs.ident,
        )

    def watch(self, function: str) -> bool:
        """Whether some observation, whatever its format, could receive calls to ``function``."""
        path = notification.request_path(function, "x")
        return any(matches(obs.pattern, path) for obs in self._items.values())

    def expired(self, now: int) -> list[Observation]:
        return [
            obs for obs in self._items.values() if obs.expires is not None and obs.expires <= now
        ]


def dump_observation(obs: Observation) -> bytes:
    """The stored form of an observation (keyed by its identity)."""
    return cbor2.dumps([obs.pattern, obs.content_format, obs.mode, obs.expires])


def load_observation(ident: bytes, data: bytes) -> Observation:
    pattern, content_format, mode, expires = cbor2.loads(data)
    return Observation(ident, pattern, content_format, mode, expires)


class CallVerdict(enum.Enum):
    """What a call POST gets."""

    DELIVER = "deliver"  # stored; pushed to the observations that match now
    KEEP = "keep"  # stored, 65; delivered when a matching driver observes
    UNAVAILABLE = "unavailable"  # nothing stored, 163: nobody serves F


def call_verdict(*, observed: bool, known: bool) -> CallVerdict:
    """``observed``: a matching observation exists now. ``known``: F is registered in /cat, or
    some observation could receive it, or it was called before (its datasource has jobs)."""
    if observed:
        return CallVerdict.DELIVER
    return CallVerdict.KEEP if known else CallVerdict.UNAVAILABLE


class ResponseVerdict(enum.Enum):
    """What a response POST does to its call."""

    END = "end"  # the call was waiting for it: complete or failed, pushed to the caller
    END_QUEUED = "end queued"  # handed back (lease ran out) but answered: taken, then ended
    DUPLICATE = "duplicate"  # the call already ended: 65, nothing changes


def response_verdict(status: Status) -> ResponseVerdict:
    """The first response wins, whether or not the lease it was delivered under still runs."""
    if status.terminal:
        return ResponseVerdict.DUPLICATE
    if status is Status.ACCEPTED:
        return ResponseVerdict.END
    return ResponseVerdict.END_QUEUED


def ending(func_response: dict[str, Any]) -> Status:
    """The status a posted ``FuncResponse`` ends its call with: Status 0 complete, else failed."""
    return Status.COMPLETE if func_response["Status"] == notification.STATUS_OK else Status.FAILED


def is_call(client: str) -> bool:
    """Whether a job of client ``client`` is a function call (its end is pushed to a caller)."""
    return client == notification.CALL_CLIENT
