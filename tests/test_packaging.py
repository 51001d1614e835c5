"""The wheel and the sdist install into a clean virtual environment and serve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).parent.parent


def sh(*args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, text=True, timeout=600, **kw
    )  # type: ignore[call-overload,no-any-return]


def serve_and_submit(python: Path, tmp: Path) -> str:
    """Start the installed `jobstore serve`, submit a job with the installed client, stop it."""
    jobstore = python.parent / "jobstore"
    endpoints = [f"--{n}-endpoint=ipc://{tmp}/{n}" for n in ("request", "observe", "notify")]
    proc = subprocess.Popen(
        [jobstore, "serve", "--data-dir", tmp / "data", *endpoints],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "protections:" in line:
                break
        script = (
            "from jobstore.client import JobClient; "
            f"print(JobClient('ipc://{tmp}/request', 'ds', 'c').submit(1, job='packaged')['status'])"
        )
        out = sh(python, "-c", script, cwd=tmp).stdout.strip()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        return out
    finally:
        proc.kill()


def test_wheel_and_sdist_install_in_a_clean_venv_and_serve(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    sh(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    [wheel] = dist.glob("jobstore-*.whl")
    [sdist] = dist.glob("jobstore-*.tar.gz")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sh(python, "-m", "pip", "install", "--quiet", wheel, env=env)
    (tmp_path / "w").mkdir()
    assert serve_and_submit(python, tmp_path / "w") == "submitted"
    assert "py.typed" in sh(python, "-m", "pip", "show", "--files", "jobstore", env=env).stdout
    sh(python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", sdist, env=env)
    (tmp_path / "s").mkdir()
    assert serve_and_submit(python, tmp_path / "s") == "submitted"
    from jobstore import __version__

    assert wheel.name.startswith(f"jobstore-{__version__}-")
