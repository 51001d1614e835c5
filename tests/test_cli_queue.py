"""The jobstore command's scheduling: submit options and batches, requeue, pause, resume, settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobstore.cli import EXIT_FAILED, EXIT_USAGE, main

from .conftest import RunningStore

HOUR = 3_600_000


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_submit_with_priority_delay_and_expires(
    store: RunningStore, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--endpoint", store.endpoint)
    code, record = run(
        capsys, "submit", "ds", "x", "--priority", "7", "--delay", str(HOUR), "--expires",
        str(2**52), *flags,
    )  # fmt: skip
    assert code == 0 and record["priority"] == 7 and record["expires"] == 2**52
    assert record["not_before"] == record["created"] + HOUR
    assert main(["submit", "ds", "x", "--priority", "101", *flags]) == EXIT_FAILED
    assert "priority must be an integer from -100 to 100" in capsys.readouterr().err


def test_submit_batch_sends_every_line_and_exits_1_when_one_is_refused(
    store: RunningStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = [
        {"request": 1, "job": "b1", "priority": 3},
        {"request": 2, "job": "b2", "delay": -1},
        {"request": 3, "job": "b3"},
    ]
    batch = tmp_path / "jobs.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    code = main(["submit", "ds", "--batch", str(batch), "--endpoint", store.endpoint])
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED and "refused 1 job(s)" in err
    first, second, third = out.splitlines()
    assert (first, third) == ("b1  submitted  client=cli", "b3  submitted  client=cli")
    assert second.startswith("b2  refused (400): delay must be an integer from 0 to")
    code, record = run(capsys, "status", "ds", "b1", "--endpoint", store.endpoint)
    assert record["priority"] == 3


def test_a_batch_line_that_is_not_a_job_is_a_usage_error(
    store: RunningStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    batch = tmp_path / "jobs.jsonl"
    batch.write_text('{"request": 1}\n[1, 2]\n')
    assert main(["submit", "ds", "--batch", str(batch), "--endpoint", store.endpoint]) == EXIT_USAGE
    assert 'line 2 must be a JSON object with "request"' in capsys.readouterr().err


def test_pause_resume_settings_and_requeue(
    store: RunningStore, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--endpoint", store.endpoint)
    code, settings = run(capsys, "pause", "ds", *flags)
    assert code == 0 and settings["paused"] is True
    run(capsys, "submit", "ds", "x", "--job", "j", *flags)
    with store.driver() as driver:
        assert driver.take() == []
        code, settings = run(capsys, "settings", "ds", "--backoff", "500", *flags)
        assert settings["backoff"] == 500 and settings["paused"] is True
        code, settings = run(capsys, "resume", "ds", *flags)
        assert settings["paused"] is False
        [taken] = driver.take()
        driver.fail(taken["job"], "broken")
    code, record = run(capsys, "requeue", "ds", "j", "--delay", "5", *flags)
    assert code == 0 and (record["status"], record["requeued"]) == ("retrying", 1)
    assert record["not_before"] == record["updated"] + 5
    assert main(["settings", "ds", *flags]) == 0
    assert capsys.readouterr().out.startswith("ds: paused=false  backoff=500")
