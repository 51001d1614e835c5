"""The request socket's frames for the store's ZeroMQ adapter: limits, codec choice, encoding.

No sockets here: :class:`Envelopes` puts a request's routing frames together within
the limits, :func:`decode_frame` picks the codec of a request frame, :func:`encode`
answers in it, and :func:`zest_push_payload` is what a Zest observe push carries.
"""

from __future__ import annotations

import logging

from ..errors import ProtocolError, TooLarge
from ..protocol import Reply, Request, cbor, zest
from ..protocol.sealed import Change

log = logging.getLogger(__name__)

ZEST_CODES = frozenset({0x01, 0x02, 0x04})
# Room above --max-frame on the request socket, so a frame a little too large gets a 413
# saying so; ZeroMQ disconnects a peer whose frame is larger still, before holding it.
FRAME_ROOM = 64 * 1024
# Largest frame a peer may send to the observe and notify sockets. Those peers send nothing
# but the handshake (CURVE's largest command is well under this) and subscriptions.
SMALL_FRAME = 1024
UNENCODABLE = (
    "the store cannot encode its reply to this request in this format (a record written by an "
    "older version holds a value such as NaN that JSON lacks); run `jobstore check` on the "
    "data directory and report it"
)


class Envelopes:
    """Routing frames kept until their request frame arrives, within the envelope limits."""

    def __init__(self, max_envelope: int, max_envelope_frame: int) -> None:
        self.max_envelope = max_envelope
        self.max_envelope_frame = max_envelope_frame
        self._partial: list[bytes] = []  # routing frames of a request still arriving
        self._discarding = False  # the request arriving broke the envelope limits
        self.discarded = 0  # requests dropped unanswered: too many or too large routing frames

    def add(self, frame: bytes, more: bool) -> list[bytes] | None:
        """The whole message once ``frame`` completes one within the envelope limits, else None.

        A message with more or larger routing frames than allowed is dropped as it
        arrives and counted, never held whole (ZeroMQ bounds each frame, not the
        number of frames in a message).
        """
        if more:
            if not self._discarding and (
                len(frame) > self.max_envelope_frame or len(self._partial) >= self.max_envelope
            ):
                self._partial, self._discarding = [], True
            if not self._discarding:
                self._partial.append(frame)
            return None
        if self._discarding:
            self._discarding = False
            self.discarded += 1
            return None
        msg, self._partial = [*self._partial, frame], []
        return msg


def is_zest(frame: bytes) -> bool:
    """Whether a request frame is Zest's (else it is native CBOR, or neither)."""
    return bool(frame) and frame[0] in ZEST_CODES


def decode_frame(frame: bytes, max_frame: int) -> tuple[Request, bool]:
    """The request in a frame, and whether it came as Zest; TooLarge or ProtocolError if not."""
    if len(frame) > max_frame:
        raise TooLarge(
            f"request frame is {len(frame)} bytes; the limit is {max_frame}: "
            "send smaller request bodies"
        )
    if is_zest(frame):
        return zest.decode_request(frame), True
    if cbor.is_native(frame):
        return cbor.decode_request(frame), False
    first = f"0x{frame[0]:02x}" if frame else "an empty frame"
    raise ProtocolError(
        f"unrecognised request frame (first byte {first}): send a CBOR map "
        "(native protocol) or a Zest GET/POST/DELETE frame"
    )


def encode(reply: Reply, request: Request | None) -> bytes:
    """``reply`` as a frame: Zest answering ``request``, or native when ``request`` is None.

    A reply that cannot be encoded (a record an older version stored with a value JSON
    lacks) becomes a 500 for this request alone; the store goes on.
    """
    try:
        return cbor.encode_reply(reply) if request is None else zest.encode_reply(reply, request)
    except Exception:
        codec = "native" if request is None else f"Zest format {request.content_format}"
        log.exception("cannot encode a %d reply (%s)", reply.status, codec)
        failed = Reply(500, error=UNENCODABLE, id=reply.id)
        return cbor.encode_reply(failed) if request is None else zest.encode_reply(failed, request)


def zest_push_payload(change: Change) -> bytes:
    """The payload of a Zest observe push: ``<ms> <path> json <record as JSON>``."""
    job = change.job
    path = f"/{job.dsid}/job/{job.client}/{job.job}"
    return f"{job.updated} {path} json ".encode() + zest.encode_json(change.wire)
