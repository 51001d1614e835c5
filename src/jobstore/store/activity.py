"""Recent activity per datasource (jobs taken, finished, leases expired), in one-second buckets."""

from __future__ import annotations

from collections import defaultdict, deque

WINDOW_S = 60


class Activity:
    """Counts events per (datasource, kind) over the last minute, and in total since start."""

    def __init__(self) -> None:
        self._buckets: defaultdict[tuple[str, str], deque[list[int]]] = defaultdict(deque)
        self.totals: defaultdict[tuple[str, str], int] = defaultdict(int)

    def record(self, events: list[tuple[str, str]], now_ms: int) -> None:
        second = now_ms // 1000
        for key in events:
            self.totals[key] += 1
            buckets = self._buckets[key]
            if buckets and buckets[-1][0] == second:
                buckets[-1][1] += 1
            else:
                buckets.append([second, 1])
                self._prune(buckets, second)

    def last_minute(self, dsid: str, kind: str, now_ms: int) -> int:
        buckets = self._buckets.get((dsid, kind))
        if not buckets:
            return 0
        self._prune(buckets, now_ms // 1000)
        return sum(count for _, count in buckets)

    @staticmethod
    def _prune(buckets: deque[list[int]], second: int) -> None:
        while buckets and buckets[0][0] <= second - WINDOW_S:
            buckets.popleft()
