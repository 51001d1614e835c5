"""Native notifications (contract section 6): topics, their keys, and sealed messages.

Topic names and keys are derived from the store's secret with HMAC-SHA256, so
they survive restarts without being stored. A topic on the wire is 32 hex
characters: every topic has the same length, so none is a prefix of another, and
it reveals neither the datasource nor the client it stands for.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import cbor2
import nacl.exceptions
import nacl.secret

from .errors import ProtocolError
from .records import Job


def client_topic(dsid: str, client: str) -> str:
    """The name of the topic carrying one client's jobs in one datasource."""
    return f"job/{dsid}/{client}"


def server_topic(dsid: str) -> str:
    """The name of the topic carrying every job of one datasource."""
    return f"server/{dsid}"


@dataclass(frozen=True, slots=True)
class Change:
    """A committed change to publish: the record and, per topic name, the previous seq there."""

    job: Job
    prev: dict[str, int]


class Sealer:
    """Derives topics and keys from the store secret and seals messages for them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._boxes: dict[str, tuple[bytes, nacl.secret.SecretBox]] = {}

    def _derive(self, purpose: bytes, name: str) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + name.encode(), hashlib.sha256).digest()

    def topic(self, name: str) -> bytes:
        """The wire topic of a topic name."""
        return self._derive(b"topic", name)[:16].hex().encode()

    def key(self, name: str) -> bytes:
        """The 32-byte SecretBox key of a topic name."""
        return self._derive(b"key", name)

    def _box(self, name: str) -> tuple[bytes, nacl.secret.SecretBox]:
        found = self._boxes.get(name)
        if found is None:
            if len(self._boxes) > 4096:
                self._boxes.clear()
            found = self._boxes[name] = (self.topic(name), nacl.secret.SecretBox(self.key(name)))
        return found

    def messages(self, change: Change) -> list[list[bytes]]:
        """The ``[topic, sealed]`` messages publishing ``change`` on each of its topics."""
        record = change.job.wire()
        out = []
        for name, prev in change.prev.items():
            topic, box = self._box(name)
            out.append([topic, bytes(box.encrypt(cbor2.dumps({"prev": prev, "record": record})))])
        return out


def open_sealed(key: bytes, sealed: bytes) -> dict[str, Any]:
    """Open a sealed notification with its topic's key; raise ProtocolError when it does not open."""
    try:
        plain = nacl.secret.SecretBox(key).decrypt(sealed)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise ProtocolError(
            "notification does not open with this key: it is for another topic"
        ) from None
    msg = cbor2.loads(plain)
    if not isinstance(msg, dict):
        raise ProtocolError("notification payload is not a map")
    return msg
