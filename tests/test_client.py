"""The sync JobClient against a real store: what is tested for this flavour only
(tests/_async/ holds what both flavours share, generated into tests/_sync/)."""

from __future__ import annotations

from .conftest import RunningStore


# Sync only: the blocking watch subscribes when it is made, which an asyncio constructor cannot
# (test_aio.py has the asyncio twin, a watch that is awaited).
def test_a_watch_made_without_with_is_subscribed_at_once(store: RunningStore) -> None:
    with store.client() as app:
        watch = app.watch(timeout=10)
        try:
            app.submit(1, job="j1")
            for record in watch:
                assert record["job"] == "j1" and watch.last == record["seq"]
                break
        finally:
            watch.close()
