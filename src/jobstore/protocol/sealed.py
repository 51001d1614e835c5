"""Native notifications (docs/protocol.md, "Notifications"): topics, their keys, and sealed messages.

Topic names and keys are derived from the store's secret with HMAC-SHA256, so
they survive restarts without being stored. A topic on the wire is 32 hex
characters: every topic has the same length, so none is a prefix of another, and
it reveals neither the datasource nor the client it stands for.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

import cbor2
import nacl.bindings
import nacl.exceptions
import nacl.secret

from ..errors import ProtocolError
from ..records import Job
from .cbor import head

TOPIC_LENGTH = 32
_MAP_PREV = b"\xa2" + cbor2.dumps("prev")  # a two-entry map, then its first key
_RECORD = cbor2.dumps("record")


def client_topic(dsid: str, client: str) -> str:
    """The name of the topic carrying one client's jobs in one datasource."""
    return f"job/{dsid}/{client}"


def server_topic(dsid: str) -> str:
    """The name of the topic carrying every job of one datasource."""
    return f"server/{dsid}"


class Change(NamedTuple):
    """A committed change to publish: the record and, per topic name, the previous seq there.

    ``wire`` is the record as docs/protocol.md shows it and ``encoded`` its CBOR encoding.
    """

    job: Job
    prev: dict[str, int]
    wire: dict[str, Any]
    encoded: bytes


class Sealer:
    """Derives topics and keys from the store secret and seals messages for them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._boxes: dict[str, tuple[bytes, bytes]] = {}  # name -> (topic, key)
        self._nonce_prefix = secrets.token_bytes(nacl.secret.SecretBox.NONCE_SIZE - 8)
        self._count = 0

    def _derive(self, purpose: bytes, name: str) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + name.encode(), hashlib.sha256).digest()

    def topic(self, name: str) -> bytes:
        """The wire topic of a topic name."""
        return self._derive(b"topic", name)[: TOPIC_LENGTH // 2].hex().encode()

    def key(self, name: str) -> bytes:
        """The 32-byte SecretBox key of a topic name."""
        return self._derive(b"key", name)

    def _box(self, name: str) -> tuple[bytes, bytes]:
        found = self._boxes.get(name)
        if found is None:
            if len(self._boxes) > 4096:
                self._boxes.clear()
            found = self._boxes[name] = (self.topic(name), self.key(name))
        return found

    def messages(
        self, change: Change, wanted: Callable[[bytes], bool] = lambda _: True
    ) -> list[list[bytes]]:
        """The ``[topic, sealed]`` messages publishing ``change`` on those of its topics ``wanted``."""
        out = []
        for name, prev in change.prev.items():
            topic, key = self._box(name)
            if not wanted(topic):
                continue  # nobody subscribes: sealing it would be wasted work
            # {"prev": prev, "record": record}, the record encoded once per change
            plain = b"".join((_MAP_PREV, head(0, prev), _RECORD, change.encoded))
            # What SecretBox(key).encrypt(plain, nonce) makes, without its wrapper objects.
            nonce = self._nonce()
            out.append([topic, nonce + nacl.bindings.crypto_secretbox_easy(plain, nonce, key)])
        return out

    def _nonce(self) -> bytes:
        # Unique per key without a syscall: a random prefix per process, then a counter.
        self._count += 1
        return self._nonce_prefix + self._count.to_bytes(8, "big")


def open_sealed(key: bytes, sealed: bytes) -> dict[str, Any]:
    """Open a sealed notification with its topic's key; raise ProtocolError when it does not open."""
    nonce_size = nacl.secret.SecretBox.NONCE_SIZE
    try:
        # What SecretBox(key).decrypt(sealed) does, without building a box per message.
        plain = nacl.bindings.crypto_secretbox_open_easy(
            sealed[nonce_size:], sealed[:nonce_size], key
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise ProtocolError(
            "notification does not open with this key: it is for another topic"
        ) from None
    msg = cbor2.loads(plain)
    if not isinstance(msg, dict):
        raise ProtocolError("notification payload is not a map")
    return msg
