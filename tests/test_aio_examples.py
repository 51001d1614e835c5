"""examples/aio_pair.py runs against a real store and does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import RunningStore

EXAMPLES = Path(__file__).parent.parent / "examples"


def example(name: str, store: RunningStore, *args: str) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLES / name),
        "sensor-jobs",
        "--endpoint",
        store.endpoint,
        *args,
    ]


def test_aio_pair_runs_its_jobs_to_completion(store: RunningStore) -> None:
    pair = subprocess.run(
        example("aio_pair.py", store, "--notify-endpoint", store.notify_endpoint, "--jobs", "3"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert pair.stdout.count(" complete {'celsius'") == 3, pair.stdout
    assert "{'done': 3, 'total': 3}" in pair.stdout
    assert "ran 3 job(s)" in pair.stdout


def test_aio_pair_driver_serves_the_sync_app_example(store: RunningStore) -> None:
    with subprocess.Popen(
        example("aio_pair.py", store, "--role", "driver", "--max-jobs", "2"),
        stdout=subprocess.PIPE,
        text=True,
    ) as driver:
        try:
            app = subprocess.run(
                example("app.py", store, "--notify-endpoint", store.notify_endpoint, "--jobs", "2"),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            ran, _ = driver.communicate(timeout=30)
        finally:
            driver.kill()
    assert driver.returncode == 0 and "ran 2 job(s)" in ran
    assert app.stdout.count(" complete {'celsius'") == 2, app.stdout
