"""Codec-neutral request and reply values, shared by the CBOR and Zest codecs.

Nothing under this package touches a socket: codecs turn bytes into a
:class:`Request` (or raise :class:`~jobstore.errors.ProtocolError`) and a
:class:`Reply` back into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

METHODS = ("GET", "POST", "DELETE")


class Request(NamedTuple):
    """One decoded request, whichever codec carried it (a named tuple: one is built per request).

    ``observe`` is the Zest observe mode (``"data"``) or ``None``; ``max_age`` is
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
