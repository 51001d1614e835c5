"""Operator mistakes end in one line saying what is wrong and what to do, never a traceback.

Each test runs the real ``jobstore`` command in a subprocess, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobstore.cli.admin import env_setting

from .conftest import RunningStore

# Root may write and chmod anything: as root, file permissions are tested with the
# capabilities that allow that dropped (util-linux setpriv), as a plain user would be.
AS_USER = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"] if os.geteuid() == 0 else []
COMMAND = [sys.executable, "-m", "jobstore"]


def jobstore(*argv: str, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python -m jobstore`` to the end, its output as text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBSTORE_", "DATABOX_"))}
    return subprocess.run(
        [*(AS_USER if as_user else []), *COMMAND, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Assert the command failed with ``code`` and one stderr line holding ``words``."""
    err = result.stderr
    assert "Traceback" not in err, err
    assert result.returncode == code, (result.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jobstore: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def endpoints(where: Path) -> list[str]:
    return [
        *("--request-endpoint", f"ipc://{where}/req"),
        *("--observe-endpoint", f"ipc://{where}/obs"),
        *("--notify-endpoint", f"ipc://{where}/not"),
    ]


# Stores that do not start


def test_a_second_store_on_the_same_port_is_refused_without_creating_its_data_dir(
    start_store: Any, tmp_path: Path
) -> None:
    # tcp: a second bind of an ipc path takes the path over instead of failing.
    first = start_store(request_endpoint="tcp://127.0.0.1:*")
    data = tmp_path / "second"
    flags = ["--data-dir", str(data), *endpoints(tmp_path)]
    result = jobstore("serve", *flags, "--request-endpoint", first.endpoint)
    one_line_error(result, 2, f"--request-endpoint {first.endpoint}", "Address already in use")
    assert "another store" in result.stderr
    assert not data.exists()


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = jobstore("serve", "--data-dir", str(tmp_path / "file"), *endpoints(tmp_path))
    one_line_error(result, 2, "is a file, not a directory")


def test_a_read_only_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o500)
    result = jobstore("serve", "--data-dir", str(data), *endpoints(tmp_path), as_user=True)
    one_line_error(result, 2, f"cannot open the data directory {data}", "read and write")


def test_an_endpoint_without_a_scheme_is_a_usage_error(tmp_path: Path) -> None:
    result = jobstore("serve", "--data-dir", str(tmp_path / "d"), "--request-endpoint", "5555")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'5555' is not an endpoint: write tcp://HOST:PORT" in result.stderr
    result = jobstore("status", "ds", "j", "--endpoint", "localhost:5555")
    assert result.returncode == 2 and "is not an endpoint" in result.stderr
    assert not (tmp_path / "d").exists()


def test_a_bad_curve_server_key_is_a_usage_error(tmp_path: Path) -> None:
    result = jobstore("status", "ds", "j", "--endpoint", f"ipc://{tmp_path}/x", "--server-key", "k")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a CURVE public key (1 characters): give the 40-character Z85" in result.stderr


def test_an_unknown_log_level_is_a_usage_error() -> None:
    result = jobstore("--log-level", "verbose", "keygen", "--out", "/nonexistent/k")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'verbose' is not a log level: use one of DEBUG, INFO" in result.stderr


# Keys


def test_keygen_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    result = jobstore("keygen", "--out", str(tmp_path / "nope" / "store.key"))
    one_line_error(result, 2, f"no directory {tmp_path / 'nope'}", "create it first")


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    (tmp_path / "store.key").write_text("precious\n")
    result = jobstore("keygen", "--out", str(tmp_path / "store.key"))
    one_line_error(result, 2, "exists: keygen never overwrites a key")
    assert (tmp_path / "store.key").read_text() == "precious\n"
    assert not (tmp_path / "store.key.pub").exists()


# Drivers and clients


def test_work_with_a_call_that_cannot_be_imported_says_so(store: RunningStore) -> None:
    result = jobstore("work", "ds", "--call", "nosuch.mod:fn", "--endpoint", store.endpoint)
    one_line_error(result, 2, "--call nosuch.mod:fn: cannot import nosuch.mod", "PYTHONPATH")


def test_submit_refuses_an_argument_that_starts_like_json_but_is_not(store: RunningStore) -> None:
    result = jobstore("submit", "ds", '{"samples": 5', "--endpoint", store.endpoint)
    one_line_error(result, 2, "starts like JSON but is not JSON")
    with store.client("cli") as app:
        assert list(app.jobs()) == []


def test_a_closed_pipe_ends_the_output_quietly(store: RunningStore, tmp_path: Path) -> None:
    with store.client("cli") as app:
        for n in range(3000):
            app.submit(n, job=f"job-{n}")
    for argv in (
        ("jobs", "ds", "--endpoint", store.endpoint),
        ("mint", "--token-key-file", str(tmp_path / "k"), "--target", "t", "--path", "/*"),
    ):
        (tmp_path / "k").write_text("secret")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobstore",
                *argv,
                *(("--method", "GET") if "mint" in argv else ()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read()
        code = proc.wait(30)
        assert "Traceback" not in err and "Broken pipe" not in err, err
        assert code in (0, 141)


# Messages that name the right remedy


def test_a_standalone_store_points_at_jobstore_mint_not_the_arbiter(tmp_path: Path) -> None:
    (tmp_path / "token.key").write_text("dev-secret")
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobstore",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--token-key-file",
            str(tmp_path / "token.key"),
            *endpoints(tmp_path),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        for line in serve.stderr:
            if "protections:" in line:
                break
        flags = ("--endpoint", f"ipc://{tmp_path}/req", "--client", "app1")
        missing = jobstore("submit", "ds", "1", *flags)
        one_line_error(missing, 1, "macaroon from jobstore mint")
        minted = jobstore(
            "mint",
            "--token-key-file",
            str(tmp_path / "token.key"),
            "--target",
            "jobstore",
            "--path",
            "/other/*",
            "--method",
            "POST",
        ).stdout.strip()
        refused = one_line_error(jobstore("submit", "ds", "1", *flags, "--token", minted), 1)
        assert "from jobstore mint" in refused and "arbiter" not in refused
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(10)


def test_serve_keeps_the_mode_of_an_existing_data_dir_and_warns_when_others_can_read_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "database"
    data.mkdir()
    data.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(data, 65534, 65534)  # as in Docker: another user's directory, open to all
    serve = subprocess.Popen(
        [*AS_USER, *COMMAND, "serve", "--data-dir", str(data), *endpoints(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        lines = []
        for line in serve.stderr:
            lines.append(line)
            if "protections:" in line:
                break
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(10) == 0, "".join(lines)
    finally:
        serve.kill()
    assert stat.S_IMODE(data.stat().st_mode) == 0o777
    assert (data / "data.mdb").exists()
    assert any("WARNING" in line and "open to other users (mode 777)" in line for line in lines)


# Small things


def test_cancel_of_a_finished_job_says_nothing_changed(store: RunningStore) -> None:
    flags = ("--endpoint", store.endpoint)
    jobstore("submit", "ds", "1", "--job", "j1", *flags)
    jobstore("cancel", "ds", "j1", *flags)
    again = jobstore("cancel", "ds", "j1", *flags)
    assert again.returncode == 0
    assert again.stdout.startswith("j1  cancelled")
    assert "j1 had already ended (cancelled); nothing changed" in again.stderr


def test_jobs_on_an_empty_queue_says_so(store: RunningStore) -> None:
    result = jobstore("jobs", "ds", "--endpoint", store.endpoint, "--client", "app1")
    assert result.returncode == 0 and result.stdout == ""
    assert "no jobs of client app1 in ds" in result.stderr


def test_jobs_aligns_its_columns(store: RunningStore) -> None:
    flags = ("--endpoint", store.endpoint)
    jobstore("submit", "ds", "1", "--job", "a", *flags)
    jobstore("submit", "ds", "2", "--job", "a-longer-id", *flags)
    jobstore("cancel", "ds", "a", *flags)
    lines = jobstore("jobs", "ds", *flags).stdout.splitlines()
    assert lines == [
        "a-longer-id  submitted  client=cli  attempts=0",
        "a            cancelled  client=cli  attempts=0",
    ]


def test_timeout_shows_its_default_in_help() -> None:
    assert "(default 5)" in jobstore("status", "--help").stdout


def test_log_level_is_accepted_after_the_command(tmp_path: Path) -> None:
    result = jobstore("keygen", "--out", str(tmp_path / "k"), "--log-level", "debug")
    assert result.returncode == 0, result.stderr


def test_the_environment_still_sets_the_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTORE_LOG_LEVEL", "warning")
    assert env_setting("LOG_LEVEL") == "warning"
    from jobstore.cli import build_parser

    args = build_parser().parse_args(["health"])
    assert args.log_level == "WARNING"


def test_health_reports_a_store_that_answers(store: RunningStore, tmp_path: Path) -> None:
    ok = jobstore("health", "--endpoint", store.endpoint)
    assert ok.returncode == 0 and ok.stdout.startswith("healthy:"), ok.stderr
    down = jobstore("health", "--endpoint", f"ipc://{tmp_path}/none", "--timeout", "0.3")
    assert down.returncode == 3 and "is the store running" in down.stderr


def test_health_counts_a_401_without_a_token_as_up(start_store: Any, tmp_path: Path) -> None:
    from jobstore.store.auth import Authoriser

    store = start_store(auth=Authoriser(b"secret", "jobstore"))
    ok = jobstore("health", "--endpoint", store.endpoint)
    assert ok.returncode == 0 and "401 without a token" in ok.stdout
    refused = jobstore("health", "--endpoint", store.endpoint, "--token", "forged")
    assert refused.returncode == 1 and "answered 401" in refused.stderr


def test_json_output_still_parses(store: RunningStore) -> None:
    result = jobstore("jobs", "ds", "--endpoint", store.endpoint, "--json")
    assert json.loads(result.stdout) == []
