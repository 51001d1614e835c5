"""The notify socket's subscriptions, kept from XPUB's events without a socket."""

from __future__ import annotations

from jobstore.protocol.sealed import TOPIC_LENGTH
from jobstore.store.subscriptions import Subscriptions

TOPIC = b"t" * TOPIC_LENGTH


def test_a_topic_is_wanted_by_its_own_subscription_or_a_prefix_of_it() -> None:
    subs = Subscriptions()
    assert not subs.wanted(TOPIC)
    subs.apply(b"\x01" + TOPIC[:4])
    assert subs.wanted(TOPIC) and not subs.wanted(b"u" * TOPIC_LENGTH)


def test_an_empty_subscription_wants_everything() -> None:
    subs = Subscriptions()
    subs.apply(b"\x01")
    assert subs.wanted(TOPIC) and subs.wanted(b"u" * TOPIC_LENGTH)


def test_an_unsubscribe_forgets_the_topic_and_its_length() -> None:
    subs = Subscriptions()
    subs.apply(b"\x01" + TOPIC)
    subs.apply(b"\x00" + TOPIC)
    assert not subs.wanted(TOPIC) and subs.by_length == {}


def test_a_subscription_longer_than_any_topic_is_ignored() -> None:
    subs = Subscriptions()
    subs.apply(b"\x01" + TOPIC + b"x")
    assert subs.by_length == {}
