"""The systems under test. Each module has ``make_client`` and ``drive``; servers are started here."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

from harness import stop_popen


class System:
    """A server the benchmark starts on loopback and stops by PID.

    ``module`` names the module whose ``make_client(endpoints, client_id)`` and
    ``drive(endpoints, stop)`` the client and driver processes run.
    """

    name = ""
    module = ""
    durable = True
    jobs_scale = 1.0  # share of --jobs this system gets in the throughput and submit-only phases

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, workdir: Path) -> dict[str, Any]:
        """Start the server(s) with data under ``workdir``; return what clients need to connect."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The PID of the main server process (its memory is reported)."""
        return self.procs[0].pid if self.procs else None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                stop_popen(proc)
        self.procs.clear()
