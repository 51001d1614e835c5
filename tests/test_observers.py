"""The Zest observer registry without sockets: expiry on the monotonic clock."""

from __future__ import annotations

from jobstore.store.observers import Observers


def test_the_next_expiry_is_an_observers_still_here_not_one_forgotten() -> None:
    # Else the store wakes at a gone observer's expiry for nothing.
    observers = Observers(10, 10)
    gone = observers.add("ds", "app1", 1, b"peer", 0)  # max_age in seconds
    observers.add("ds", "app2", 5, b"peer", 0)
    observers.forget(gone)
    assert observers.next_expiry() == 5_000
    assert observers.expire(5_000) and observers.next_expiry() is None
