"""What the watch view says about running jobs: one updating line each, called running."""

from __future__ import annotations

import io
from typing import Any

import pytest

from jobstore.cli.watch import _PlainView
from jobstore.cli.watchstate import WatchState


def rec(job: str, status: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {"job": job, "client": "app1", "status": status, "seq": seq, "updated": seq, **extra}


def test_progress_reports_update_one_recent_line_per_job() -> None:
    state = WatchState()
    state.apply(rec("a", "submitted", 1))
    state.apply(rec("a", "accepted", 2))
    state.apply(rec("b", "submitted", 3))
    for seq, done in ((4, 1), (5, 2), (6, 3)):
        state.apply(rec("a", "accepted", seq, progress={"done": done, "total": 10}))
    assert [(c.job, c.status, c.seq) for c in state.recent] == [
        ("a", "accepted", 6),
        ("b", "submitted", 3),
        ("a", "submitted", 1),
    ]
    assert state.recent[0].label == "running 3/10"


def test_accepted_reads_as_running() -> None:
    state = WatchState()
    state.apply(rec("a", "accepted", 1))
    out = io.StringIO()
    _PlainView(out, "ds").draw(state, None)
    assert "running 1" in out.getvalue() and "accepted" not in out.getvalue()
    assert state.recent[0].label == "running"


def test_a_cancel_request_shows() -> None:
    state = WatchState()
    state.apply(rec("a", "accepted", 1))
    state.apply(rec("a", "accepted", 2, cancel_requested=True))
    assert [c.label for c in state.recent] == ["running, cancel requested"]
    assert state.summary()["recent"][0]["cancel_requested"] is True


def test_the_live_view_shows_running_and_the_cancel_request() -> None:
    pytest.importorskip("rich")
    from jobstore.cli.watch import _LiveView

    state = WatchState()
    state.apply(rec("a", "accepted", 1, cancel_requested=True))
    out = io.StringIO()
    view = _LiveView(out, "ds")
    view.draw(state, None)
    view.close()
    assert "running, cancel requested" in out.getvalue()
