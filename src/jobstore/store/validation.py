"""Checks of request bodies and values, each failing with a BadRequest that names the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cbor2

from ..errors import BadRequest
from ..protocol import Request, shown
from ..states import Status

MAX_DEPTH = 32  # nested arrays and maps in a stored value, counting the outermost
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # a signed 64-bit integer: what JSON peers can parse
_LEAVES = frozenset({type(None), bool, str})
_PLAIN = (
    "only JSON-compatible data is stored: null, booleans, integers from -2^63 to 2^63-1, "
    "finite numbers, text, arrays and maps with text keys"
)


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
                f"body has unknown key {shown(key)}; allowed keys are {', '.join(allowed) or '(none)'}"
            )
    return body


def optional_int(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    """``body[key]`` as an integer from ``low`` to ``high``, or None when absent (or null)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}, got {shown(value)}")
    return value


def int_field(body: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    """``body[key]`` as an integer from ``low`` to ``high``, or ``default`` when absent."""
    value = optional_int(body, key, low, high)
    return default if value is None else value


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
        raise BadRequest(f"status must be one of {names(Status)}, got {shown(value)}") from None


def check_plain(name: str, value: Any) -> None:
    """Refuse, naming the field and the place in it, a value that JSON could not carry back.

    Every stored value must go out again on every codec (native CBOR, Zest CBOR and Zest
    JSON), so bytes, tags (dates, decimals, sets...), NaN, infinities, integers beyond 64 bits,
    non-text map keys and nesting deeper than MAX_DEPTH are refused at write.
    """
    try:
        _plain(value, 1)
    except _NotPlain as exc:
        raise BadRequest(f"{name}{''.join(reversed(exc.where))} {exc.what}") from None


class _NotPlain(Exception):
    """Why a value is not plain; ``where`` gathers its place on the way out, innermost first."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.where: list[str] = []


def _plain(value: Any, depth: int) -> None:
    # Runs on every submit and report: common leaves are checked inline, without a call each,
    # and the place of a refused value is only worked out when one is refused.
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise _NotPlain(f"is {shown(value)}, outside the 64-bit range; {_PLAIN}")
        return
    if kind is float:
        if value - value != 0.0:  # NaN and the infinities, which JSON has no way to write
            shown_float = "NaN" if value != value else f"{'-' if value < 0 else ''}Infinity"
            raise _NotPlain(f"is {shown_float}; {_PLAIN}")
        return
    if kind is list or kind is dict:
        if depth > MAX_DEPTH:
            raise _NotPlain(f"is nested deeper than {MAX_DEPTH} levels of arrays and maps")
        inner = depth + 1
        if kind is list:
            item = None
            try:
                for item in value:
                    sub = type(item)
                    if sub in _LEAVES or (sub is int and INT_MIN <= item <= INT_MAX):
                        continue
                    _plain(item, inner)
            except _NotPlain as exc:
                # Its index, found only now: enumerating every array up front costs every request.
                # The same object earlier in the array would have been refused there.
                index = next(i for i, other in enumerate(value) if other is item)
                exc.where.append(f"[{index}]")
                raise
            return
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain(f"has a map key that is not text ({shown(key, 40)}); use text keys")
            sub = type(item)
            if sub in _LEAVES or (sub is int and INT_MIN <= item <= INT_MAX):
                continue
            try:
                _plain(item, inner)
            except _NotPlain as exc:
                exc.where.append(f"[{shown(key, 40)}]")
                raise
        return
    if kind is bytes:
        raise _NotPlain(f"is bytes; {_PLAIN}: send binary data as base64 text")
    raise _NotPlain(f"is {shown(value)} (a CBOR tag or a type JSON lacks); {_PLAIN}")


def canonical(value: Any) -> bytes:
    """A byte string equal for equal values (for idempotent submit)."""
    return cbor2.dumps(value, canonical=True)
