"""The decisions both client flavours make, on an injected clock: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from jobstore.client.decisions import Renewals, WatchCursor
from jobstore.errors import Timeout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def notification(seq: int, prev: int) -> dict[str, object]:
    return {"record": {"seq": seq}, "prev": prev}


def test_a_watch_waits_idle_seconds_until_its_timeout_draws_near() -> None:
    clock = Clock()
    cursor = WatchCursor(0, idle=1.0, timeout=2.5, clock=clock)
    assert cursor.wait() == 1.0
    clock.now += 2.0
    assert cursor.wait() == pytest.approx(0.5)


def test_a_watch_times_out_after_its_timeout_without_a_delivery() -> None:
    clock = Clock()
    cursor = WatchCursor(0, idle=1.0, timeout=2.5, clock=clock)
    clock.now += 2.5
    with pytest.raises(Timeout, match=r"within 2\.5 s"):
        cursor.wait()


def test_a_delivery_restarts_the_watchs_timeout() -> None:
    clock = Clock()
    cursor = WatchCursor(0, idle=1.0, timeout=2.5, clock=clock)
    clock.now += 2.0
    cursor.delivered()
    clock.now += 2.0
    assert cursor.wait() == pytest.approx(0.5)


def test_a_burst_is_read_until_a_gap_makes_the_watch_catch_up() -> None:
    cursor = WatchCursor(0, idle=1.0, timeout=None, clock=Clock())
    cursor.stale = False
    burst = [notification(1, 0), notification(2, 1), notification(4, 3), notification(5, 4)]
    read = []
    for msg in burst:
        if cursor.stale:
            break  # the rest of the burst is listed when the watch catches up
        read.append(cursor.notified(msg))
    assert read == [{"seq": 1}, {"seq": 2}, None] and cursor.stale and cursor.last == 2


def test_a_quiet_topic_whose_seq_moved_on_makes_the_watch_catch_up() -> None:
    cursor = WatchCursor(7, idle=1.0, timeout=None, clock=Clock())
    cursor.quiet(7)
    assert not cursor.stale
    cursor.quiet(9)
    assert cursor.stale


def test_renewals_come_three_times_a_lease() -> None:
    clock = Clock()
    renewals = Renewals(3000, clock=clock)
    clock.now += 0.99
    assert not renewals.due(progress=False, store_down=False)
    clock.now += 0.01
    assert renewals.due(progress=False, store_down=False)
    renewals.renewed()
    assert not renewals.due(progress=False, store_down=False)


def test_progress_is_renewed_at_once_but_waits_while_the_store_is_away() -> None:
    clock = Clock()
    renewals = Renewals(30_000, clock=clock)
    assert renewals.due(progress=True, store_down=False)
    assert not renewals.due(progress=True, store_down=True)
    renewals.postpone(2.0)
    clock.now += 2.0
    assert renewals.due(progress=True, store_down=True)


def test_renewals_of_a_short_lease_come_at_most_every_50_ms() -> None:
    assert Renewals(30).every == 0.05
