"""What the notify socket's subscribers asked for, from the (un)subscribe events XPUB reports."""

from __future__ import annotations

from ..protocol.sealed import TOPIC_LENGTH


class Subscriptions:
    """Subscribed topics and prefixes by length (b"" is everything).

    A change looks up each prefix of its topic, so its cost does not grow with the
    number of subscriptions; nobody's changes are sealed for nothing.
    """

    def __init__(self) -> None:
        self.by_length: dict[int, set[bytes]] = {}

    def apply(self, event: bytes) -> None:
        """Apply one XPUB event: first byte 1 (subscribe) or 0 (unsubscribe), then the topic."""
        topic = event[1:]
        if len(topic) > TOPIC_LENGTH:
            return  # matches no topic: every topic is TOPIC_LENGTH bytes
        same_length = self.by_length.setdefault(len(topic), set())
        if event[:1] == b"\x01":
            same_length.add(topic)
        elif event[:1] == b"\x00":
            same_length.discard(topic)
        if not same_length:
            del self.by_length[len(topic)]

    def wanted(self, topic: bytes) -> bool:
        """Whether some subscriber's topic or prefix matches ``topic``."""
        return any(topic[:length] in same for length, same in self.by_length.items())
