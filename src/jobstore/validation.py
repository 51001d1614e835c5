"""Checks of request bodies and values, each failing with a BadRequest that names the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cbor2

from .errors import BadRequest
from .protocol import Request
from .states import Status

MAX_DEPTH = 32
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def names(statuses: Any) -> str:
    """Status names for a message: ``submitted, accepted, ...``."""
    return ", ".join(s.value for s in statuses)


def body_map(
    request: Request, required: Sequence[str] = (), optional: Sequence[str] = ()
) -> dict[str, Any]:
    """The request's body as a map with the ``required`` keys and no keys but those and ``optional``."""
    body = request.body
    allowed = (*required, *optional)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(
            f"body must be a map with keys {', '.join(allowed) or '(none)'}, got {type(body).__name__}"
        )
    for key in required:
        if key not in body:
            raise BadRequest(
                f"body is missing {key!r}; {request.method} {request.path} needs {', '.join(required)}"
            )
    for key in body:
        if key not in allowed:
            raise BadRequest(
                f"body has unknown key {key!r:.60}; allowed keys are {', '.join(allowed) or '(none)'}"
            )
    return body


def int_field(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """``body[key]`` as an integer from ``low`` to ``high``, or ``default`` when absent."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}, got {value!r:.60}")
    return value


def seq_segment(text: str) -> int:
    """A seq number given as a path segment."""
    if not text.isdigit() or len(text) > 19:
        raise BadRequest(f"since must be a decimal seq number in the path, got {text[:60]!r}")
    return int(text)


def status_name(value: Any) -> Status:
    """The status a text names."""
    try:
        return Status(value)
    except ValueError:
        raise BadRequest(f"status must be one of {names(Status)}, got {value!r:.60}") from None


def check_plain(name: str, value: Any, depth: int = 0) -> None:
    """Reject values that are not plain data (so every codec, JSON included, can carry them)."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"{name} is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    # Scalar items are checked in the loops rather than by a call each: bodies are checked per request.
    inner = depth + 1
    leaf = _SCALARS if inner <= MAX_DEPTH else frozenset()
    if isinstance(value, list):
        for item in value:
            if type(item) not in leaf:
                check_plain(name, item, inner)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadRequest(
                    f"{name} has a map key that is not text ({key!r:.40}); use text keys"
                )
            if type(item) not in leaf:
                check_plain(name, item, inner)
        return
    raise BadRequest(
        f"{name} holds a {type(value).__name__}; only maps, arrays, text, bytes, numbers, "
        "booleans and null are stored"
    )


def canonical(value: Any) -> bytes:
    """A byte string equal for equal values (for idempotent submit)."""
    return cbor2.dumps(value, canonical=True)
