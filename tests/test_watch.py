"""jobstore watch: the state model alone, then the command against a real store."""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
from collections.abc import Generator
from typing import Any

import pytest

from jobstore.cli import watch as watch_module
from jobstore.cli.watch import add_cli, run_watch
from jobstore.cli.watchstate import WatchState, parse_progress
from jobstore.cli.watchview import RICH_HINT, LiveView, PlainView
from jobstore.errors import ConfigError, Timeout

from .conftest import RunningStore

WAIT = 10.0  # seconds, for every wait on another thread


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rec(
    job: str, status: str, seq: int, client: str = "app1", progress: Any = None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "job": job,
        "client": client,
        "status": status,
        "seq": seq,
        "updated": 1_700_000_000_000 + seq,
    }
    if progress is not None:
        record["progress"] = progress
    return record


class FakeSource:
    """A finite source: its watch yields the records and ends."""

    dsid = "ds"

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def watch(
        self, since: int = 0, *, idle: float = 1.0, timeout: float | None = None
    ) -> Generator[dict[str, Any], None, None]:
        return (r for r in self.records if r["seq"] > since)


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


# The state model


def test_a_job_is_counted_once_in_its_current_status() -> None:
    state = WatchState()
    for record in (
        rec("j1", "submitted", 1),
        rec("j2", "submitted", 2),
        rec("j1", "accepted", 3),
        rec("j1", "accepted", 4, progress={"done": 1, "total": 2}),
        rec("j1", "complete", 5),
        rec("j3", "submitted", 6, client="app2"),
    ):
        state.apply(record)
    assert state.counts == {"submitted": 2, "complete": 1}
    assert state.unfinished == 2 and state.changes == 6 and state.seq == 6


def test_a_failed_job_requeued_counts_as_queued_again_not_as_failed() -> None:
    state = WatchState(baseline_seq=2)
    state.apply(rec("old", "failed", 1))  # history caught up at start
    state.apply(rec("j1", "submitted", 3))
    state.apply(rec("j1", "failed", 4))
    for job, seq in (("j1", 5), ("old", 6)):
        state.apply({**rec(job, "retrying", seq), "attempts": 0, "requeued": 1})
    assert state.counts == {"retrying": 2} and state.unfinished == 2


def test_the_same_job_id_of_two_clients_is_two_jobs() -> None:
    state = WatchState()
    state.apply(rec("j1", "submitted", 1, client="app1"))
    state.apply(rec("j1", "accepted", 2, client="app2"))
    assert state.counts == {"submitted": 1, "accepted": 1}


def test_a_record_no_newer_than_the_last_is_ignored() -> None:
    state = WatchState()
    state.apply(rec("j1", "submitted", 5))
    state.apply(rec("j1", "complete", 5))
    state.apply(rec("j2", "submitted", 3))
    assert state.counts == {"submitted": 1} and state.changes == 1


def test_counts_list_the_queue_then_running_then_finished() -> None:
    state = WatchState()
    for seq, status in enumerate(["failed", "complete", "accepted", "retrying", "submitted"], 1):
        state.apply(rec(f"j{seq}", status, seq))
    assert list(state.counts) == ["submitted", "retrying", "accepted", "complete", "failed"]


def test_throughput_is_over_a_sliding_window() -> None:
    clock = FakeClock(100.0)
    state = WatchState(window=5.0, clock=clock)
    clock.now = 101.0
    for seq in range(1, 51):
        state.apply(rec(f"j{seq}", "complete" if seq % 5 == 0 else "submitted", seq))
    clock.now = 102.0  # two seconds of the window have passed, with 50 changes, 10 finished
    assert state.rates() == (25.0, 5.0)
    clock.now = 105.0
    assert state.rates() == (10.0, 2.0)
    clock.now = 106.5  # the burst has left the window
    assert state.rates() == (0.0, 0.0)
    assert state.counts == {"submitted": 40, "complete": 10}


def test_history_before_the_baseline_is_counted_but_is_not_throughput() -> None:
    clock = FakeClock(100.0)
    state = WatchState(baseline_seq=10, clock=clock)
    for seq in range(1, 13):
        state.apply(rec(f"j{seq}", "submitted", seq))
    clock.now = 101.0
    assert state.counts == {"submitted": 12}
    assert state.rates() == (2.0, 0.0)


def test_the_recent_list_is_bounded_and_newest_first() -> None:
    state = WatchState(recent=5)
    for seq in range(1, 21):
        state.apply(rec(f"j{seq}", "submitted", seq))
    assert [c.job for c in state.recent] == ["j20", "j19", "j18", "j17", "j16"]
    first = state.recent[0]
    assert (first.client, first.status, first.updated) == ("app1", "submitted", 1_700_000_000_020)


def test_progress_bars_are_only_for_accepted_jobs_with_done_and_total() -> None:
    state = WatchState()
    state.apply(rec("queued", "submitted", 1, progress={"done": 1, "total": 4}))
    state.apply(rec("plain", "accepted", 2))
    state.apply(rec("half", "accepted", 3, progress={"done": 5, "total": 10}))
    state.apply(rec("float", "accepted", 4, client="app2", progress={"done": 0.5, "total": 2.0}))
    assert [(p.job, p.client, p.fraction) for p in state.running] == [
        ("float", "app2", 0.25),
        ("half", "app1", 0.5),
    ]
    state.apply(rec("half", "complete", 5, progress={"done": 10, "total": 10}))
    assert [p.job for p in state.running] == ["float"]


def test_a_job_that_stops_reporting_progress_loses_its_bar() -> None:
    state = WatchState()
    state.apply(rec("j1", "accepted", 1, progress={"done": 1, "total": 4}))
    state.apply(rec("j1", "accepted", 2, progress="almost"))
    assert state.running == []


def test_progress_past_its_total_shows_as_full() -> None:
    state = WatchState()
    state.apply(rec("j1", "accepted", 1, progress={"done": 12, "total": 10}))
    assert state.running[0].fraction == 1.0


@pytest.mark.parametrize(
    "progress",
    [
        "50%",
        42,
        [1, 2],
        {"done": 1},
        {"total": 3},
        {"done": "1", "total": 3},
        {"done": 1, "total": 0},
        {"done": -1, "total": 3},
        {"done": True, "total": 3},
        {"done": 1, "total": float("inf")},
        {"done": float("nan"), "total": 3},
        {"done": None, "total": None},
    ],
)
def test_malformed_progress_is_ignored(progress: Any) -> None:
    assert parse_progress(progress) is None
    state = WatchState()
    state.apply(rec("j1", "accepted", 1, progress=progress))
    assert state.running == [] and state.counts == {"accepted": 1}


def test_fifty_thousand_changes_fold_into_a_bounded_state() -> None:
    state = WatchState(recent=50)
    seq = 0
    for n in range(10_000):
        for status, progress in (
            ("submitted", None),
            ("accepted", None),
            ("accepted", {"done": 1, "total": 2}),
            ("accepted", {"done": 2, "total": 2}),
            ("complete" if n % 100 else "failed", None),
        ):
            seq += 1
            state.apply(rec(f"j{n}", status, seq, progress=progress))
    assert state.changes == 50_000
    assert state.counts == {"complete": 9_900, "failed": 100}
    assert state.unfinished == 0 and state.running == [] and len(state.recent) == 50


def test_the_summary_is_plain_json_data() -> None:
    state = WatchState()
    state.apply(rec("j1", "accepted", 1, progress={"done": 1, "total": 4}))
    summary = json.loads(json.dumps(state.summary()))
    assert summary["counts"] == {"accepted": 1} and summary["unfinished"] == 1
    assert summary["running"] == [{"job": "j1", "client": "app1", "done": 1, "total": 4}]
    assert summary["recent"][0]["job"] == "j1" and summary["running_with_progress"] == 1


# Drawing


def test_fifty_thousand_changes_are_drawn_once_not_once_each() -> None:
    records = [rec(f"j{seq}", "complete", seq) for seq in range(1, 50_001)]
    out = io.StringIO()
    # With an hour between draws, only the source ending draws.
    assert run_watch(FakeSource(records), output="json", interval=3600, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["changes"] == 50_000 and summary["counts"] == {"complete": 50_000}


def test_without_rich_a_terminal_gets_plain_lines_and_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = TtyBuffer()
    run_watch(FakeSource([rec("j1", "submitted", 1)]), out=out)
    assert RICH_HINT in capsys.readouterr().err
    line = out.getvalue()
    assert line.count("\n") == 1 and "ds  submitted 1 |" in line and "\x1b" not in line


def test_when_stdout_is_not_a_terminal_lines_are_plain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    run_watch(FakeSource([rec("j1", "submitted", 1), rec("j1", "failed", 2)]), out=out)
    assert "failed 1" in out.getvalue() and "\x1b" not in out.getvalue()
    assert capsys.readouterr().err == ""


def test_a_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    out = TtyBuffer()
    run_watch(FakeSource([rec("j1", "submitted", 1)]), out=out)
    assert "submitted 1" in out.getvalue() and "\x1b" not in out.getvalue()


def test_the_live_view_shows_counts_recent_changes_and_progress_bars() -> None:
    pytest.importorskip("rich")
    records = [
        rec("job-half", "accepted", 1, progress={"done": 5, "total": 10}),
        rec("job-done", "complete", 2, client="app2"),
    ]
    out = TtyBuffer()
    run_watch(FakeSource(records), output="live", out=out)
    screen = out.getvalue()
    for text in ("jobstore watch", "running", "complete", "job-half", "5/10", "50%", "app2"):
        assert text in screen
    assert "━" in screen  # the bar


def test_a_clients_view_counts_its_own_delayed_jobs_until_they_fall_due() -> None:
    wall = [1000.0]
    state = WatchState(wall=lambda: wall[0])
    state.apply({**rec("soon", "submitted", 1), "not_before": 1_001_000})
    state.apply({**rec("later", "retrying", 2), "not_before": 2_000_000})
    state.apply({**rec("now", "submitted", 3), "not_before": None})
    state.set_queue(None, True)  # a client's watch: the pause from the stats, not the count
    assert (state.delayed, state.paused) == (2, True)
    wall[0] = 1001.0  # "soon" is due now
    assert state.delayed == 1
    state.apply({**rec("later", "cancelled", 4), "not_before": 2_000_000})
    assert state.delayed == 0 and state.summary()["delayed"] == 0


def test_the_views_show_a_paused_queue_and_its_delayed_jobs() -> None:
    pytest.importorskip("rich")
    state = WatchState()
    state.apply(rec("j1", "submitted", 1))
    state.set_queue(3, True)
    plain = io.StringIO()
    PlainView(plain, "ds").draw(state, None)
    assert plain.getvalue().rstrip().endswith("| 3 delayed | PAUSED")
    live = TtyBuffer()
    view = LiveView(live, "ds")
    view.draw(state, None)
    view.close()
    assert "PAUSED" in live.getvalue() and "3 delayed" in live.getvalue()


# The command against a real store


def watch_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="jobstore")
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["watch", *argv])
    result: int = args.func(args)
    return result


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


class ManualClock:
    """A clock the test moves: the watch's loop waits on it until it is moved far enough."""

    def __init__(self, now: float = 100.0) -> None:
        self._now = now
        self._cond = threading.Condition()
        self._waits = 0  # how many times the loop has come to wait
        self._done = False

    def now(self) -> float:
        with self._cond:
            return self._now

    def wait(self, event: threading.Event, seconds: float) -> None:
        with self._cond:
            until = self._now + seconds
            self._waits += 1
            self._cond.notify_all()
            while self._now < until and not event.is_set():
                self._cond.wait(0.05)  # the feeder's event does not notify this condition

    def started(self) -> None:
        """Wait until the watch has subscribed and its loop waits for the first draw."""
        with self._cond:
            assert self._cond.wait_for(lambda: self._waits > 0 or self._done, WAIT)

    def advance(self, to: float) -> None:
        """Move the clock to ``to`` and wait until the loop has acted on it."""
        with self._cond:
            seen, self._now = self._waits, to
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: self._waits > seen or self._done, WAIT)

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()


class Tracer:
    """Tells the test when the watch's feeder has handed on every record up to a seq."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queued = 0

    def trace(self, source: Any) -> Any:
        real = source.watch

        def watch(since: int = 0, **kw: Any) -> TracedStream:
            return TracedStream(real(since, **kw), self)

        source.watch = watch
        return source

    def handed_on(self, seq: int) -> None:
        with self._cond:
            self._queued = max(self._queued, seq)
            self._cond.notify_all()

    def wait_for(self, seq: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self._queued >= seq, WAIT), "the watch lags"


class TracedStream:
    def __init__(self, inner: Any, tracer: Tracer) -> None:
        self._inner, self._tracer, self._last = inner, tracer, 0

    def __iter__(self) -> TracedStream:
        return self

    def __next__(self) -> dict[str, Any]:
        # The feeder asks for a record only once it has queued the one before.
        self._tracer.handed_on(self._last)
        record: dict[str, Any] = next(self._inner)
        self._last = record["seq"]
        return record

    def close(self) -> None:
        self._inner.close()


def start_command(
    monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[ManualClock, Tracer, io.StringIO, threading.Thread, list[Any]]:
    """Run ``jobstore watch`` in a thread on a manual clock, once it has subscribed."""
    clock, tracer, out = ManualClock(), Tracer(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    real = watch_module.run_watch
    monkeypatch.setattr(
        watch_module,
        "run_watch",
        lambda source, **kw: real(tracer.trace(source), clock=clock, **kw),
    )
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(watch_command(*argv))
        except Exception as exc:
            results.append(exc)
        finally:
            clock.finish()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    clock.started()
    return clock, tracer, out, thread, results


def finish_command(clock: ManualClock, thread: threading.Thread, results: list[Any]) -> None:
    """Draw, jump over three intervals (one draw), then reach the deadline (the final draw)."""
    for to in (100.25, 101.1, 102.0):
        clock.advance(to)
    thread.join(WAIT)
    assert not thread.is_alive() and results == [0]


def test_json_lines_follow_jobs_submitted_and_finished_while_watching(
    store: RunningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.client("app1") as app:
        app.submit({"n": -1}, job="before")  # history, caught up at start
    flags = ("--endpoint", store.endpoint, "--notify-endpoint", store.notify_endpoint)
    clock, tracer, out, thread, results = start_command(
        monkeypatch, "ds", *flags, "--json", "--seconds", "2"
    )
    seqs: list[int] = []
    with store.client("app1") as app1, store.client("app2") as app2, store.driver() as driver:
        for n in range(20):
            seqs.append(app1.submit({"n": n}, job=f"a{n}")["seq"])
        taken = driver.take(25)
        for record in taken[:17]:
            driver.progress(record["job"], {"done": 1, "total": 2})
            seqs.append(driver.complete(record["job"], {"ok": True})["seq"])
        seqs.append(driver.fail(taken[17]["job"], {"error": "no"})["seq"])
        seqs.append(driver.progress(taken[18]["job"], {"done": 3, "total": 10})["seq"])
        for n in range(5):
            seqs.append(app2.submit({"n": n}, job=f"b{n}")["seq"])
    tracer.wait_for(max(seqs))
    finish_command(clock, thread, results)
    lines = json_lines(out.getvalue())
    assert len(lines) == 3  # one per draw: a jump over several intervals draws once
    final = lines[-1]
    assert final["dsid"] == "ds" and final["client"] is None and final["problem"] is None
    # Taken oldest first: "before" and a0-a15 complete, a16 failed, a17-a19 running.
    assert final["counts"] == {"submitted": 5, "accepted": 3, "complete": 17, "failed": 1}
    assert final["unfinished"] == 8
    assert [(r["job"], r["done"], r["total"]) for r in final["running"]] == [("a17", 3, 10)]
    assert final["changes_per_s"] > 0 and final["finished_per_s"] > 0
    assert {r["client"] for r in final["recent"]} == {"app1", "app2"}


def test_a_datasource_watch_shows_its_delayed_jobs_and_that_it_is_paused(
    store: RunningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.client("app1") as app, store.driver() as driver:
        driver.pause()
        app.submit({"n": 1}, job="later", delay=3_600_000)
        seq = app.submit({"n": 2}, job="now")["seq"]
    flags = ("--endpoint", store.endpoint, "--notify-endpoint", store.notify_endpoint)
    clock, tracer, out, thread, results = start_command(
        monkeypatch, "ds", *flags, "--json", "--seconds", "2"
    )
    tracer.wait_for(seq)
    finish_command(clock, thread, results)
    final = json_lines(out.getvalue())[-1]
    assert (final["delayed"], final["paused"]) == (1, True)
    assert final["counts"] == {"submitted": 2}


def test_a_clients_watch_shows_its_delayed_jobs_and_that_the_queue_is_paused(
    store: RunningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.client("app1") as app1, store.client("app2") as app2, store.driver() as driver:
        driver.pause()
        app1.submit({"n": 1}, job="other", delay=3_600_000)  # another client's: not shown
        app2.submit({"n": 1}, job="later", delay=3_600_000)
        seq = app2.submit({"n": 2}, job="now")["seq"]
    flags = ("--endpoint", store.endpoint, "--notify-endpoint", store.notify_endpoint)
    clock, tracer, out, thread, results = start_command(
        monkeypatch, "ds", "--client", "app2", *flags, "--json", "--seconds", "2"
    )
    tracer.wait_for(seq)
    finish_command(clock, thread, results)
    final = json_lines(out.getvalue())[-1]
    assert (final["delayed"], final["paused"]) == (1, True)
    assert final["counts"] == {"submitted": 2}


def test_with_a_client_only_that_clients_jobs_are_shown(
    store: RunningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ("--endpoint", store.endpoint, "--notify-endpoint", store.notify_endpoint)
    clock, tracer, out, thread, results = start_command(
        monkeypatch, "ds", "--client", "app2", *flags, "--json", "--seconds", "2"
    )
    seqs: list[int] = []
    with store.client("app1") as app1, store.client("app2") as app2, store.driver() as driver:
        for n in range(3):
            app1.submit({"n": n}, job=f"a{n}")
            app2.submit({"n": n}, job=f"b{n}")
        for record in driver.take(6):
            done = driver.complete(record["job"])
            if done["client"] == "app2":
                seqs.append(done["seq"])
    tracer.wait_for(max(seqs))
    finish_command(clock, thread, results)
    final = json_lines(out.getvalue())[-1]
    assert final["client"] == "app2" and final["counts"] == {"complete": 3}
    assert {r["job"] for r in final["recent"]} == {"b0", "b1", "b2"}


def test_an_unreachable_store_is_an_error_not_a_hang(tmp_path: Any) -> None:
    from jobstore.client import Driver

    endpoint = f"ipc://{tmp_path}/nobody"
    with (
        Driver(endpoint, "ds", notify_endpoint=f"{endpoint}-notify", timeout=0.2) as driver,
        pytest.raises(Timeout),
    ):
        run_watch(driver, output="json", out=io.StringIO())


def test_an_ipc_endpoint_needs_the_notify_endpoint_named() -> None:
    with pytest.raises(ConfigError, match="--notify-endpoint"):
        watch_command("ds", "--endpoint", "ipc:///tmp/nowhere", "--json", "--seconds", "1")
