"""Codec-neutral request and reply values, shared by the CBOR and Zest codecs.

Nothing under this package touches a socket: codecs turn bytes into a
:class:`Request` (or raise :class:`~jobstore.errors.ProtocolError`) and a
:class:`Reply` back into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

METHODS = ("GET", "POST", "DELETE")
_SHOWN_TYPES = (bool, float, type(None))


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error message quotes it: at most about ``limit`` characters, and never raises.

    Values come from the wire, so nothing here may fail on them: Python refuses ``str()`` of an
    integer of more than 4300 digits, and a container's repr can be huge or deeply recursive.
    """
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > 64:
                return f"an integer of {value.bit_length()} bits"
            return str(value)
        if isinstance(value, (str, bytes)):
            text = repr(value[: limit + 1])
            return text if len(text) <= limit else text[: limit - 3] + "..."
        if isinstance(value, _SHOWN_TYPES):
            return repr(value)
        if isinstance(value, (list, tuple)):
            return f"an array of {_count(len(value), 'item')}"
        if isinstance(value, dict):
            return f"a map of {_count(len(value), 'entry', 'entries')}"
        return f"a value of type {type(value).__name__}"
    except Exception:  # a hostile __len__ or the like: say no more than the type
        return f"a value of type {type(value).__name__}"


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


class Request(NamedTuple):
    """One decoded request, whichever codec carried it (a named tuple: one is built per request).

    ``observe`` is the Zest observe mode (``"data"`` or ``"notification"``) or ``None``; ``max_age`` is
    the Zest observation lifetime in seconds (0 = no expiry). ``content_format``
    is the Zest content format the reply must use, ``None`` for native requests.
    """

    method: str
    path: str
    token: str | None = None
    body: Any = None
    id: int | str | None = None
    observe: str | None = None
    max_age: int = 0
    content_format: int | None = None
    host: str | None = None


@dataclass(slots=True)
class Reply:
    """One reply: an HTTP-style ``status``, a ``body``, and ``error`` when status >= 400.

    ``encoded_body`` is the CBOR encoding of ``body`` when the service already
    made it (a record is encoded once per change); the native codec sends it as is.
    """

    status: int
    body: Any = None
    error: str | None = None
    id: int | str | None = None
    options: dict[int, bytes] = field(default_factory=dict)
    encoded_body: bytes | None = None
