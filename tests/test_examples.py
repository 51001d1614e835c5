"""Each example runs against a real store and does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import RunningStore

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_app_and_driver_examples_run_jobs_to_completion(store: RunningStore) -> None:
    driver = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "driver.py"),
            "sensor-jobs",
            "--endpoint",
            store.endpoint,
            "--max-jobs",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        app = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "app.py"),
                "sensor-jobs",
                "--endpoint",
                store.endpoint,
                "--notify-endpoint",
                store.notify_endpoint,
                "--jobs",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert driver.wait(30) == 0
    finally:
        driver.kill()
    assert app.stdout.count(" complete {'celsius'") == 2, app.stdout
    assert "{'done': 3, 'total': 3}" in app.stdout
