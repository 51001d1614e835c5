"""The jobstore command, end to end against a real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobstore.cli import EXIT_FAILED, EXIT_UNREACHABLE, main

from .conftest import RunningStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_submit_work_status_round_trip(
    store: RunningStore, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--endpoint", store.endpoint)
    code, record = run(
        capsys, "submit", "ds", '{"n": 2}', "--client", "app1", "--job", "j1", *flags
    )
    assert code == 0 and record["status"] == "submitted" and record["request"] == {"n": 2}
    script = "import json,sys; print(json.dumps(json.load(sys.stdin)['n'] * 21))"
    command = f'{sys.executable} -c "{script}"'
    assert main(["work", "ds", "--max-jobs", "1", "--exec", command, *flags]) == 0
    code, record = run(capsys, "status", "ds", "j1", "--client", "app1", *flags)
    assert code == 0 and record["status"] == "complete" and record["response"] == 42


def test_a_failing_command_fails_the_job_with_its_stderr(
    store: RunningStore, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--endpoint", store.endpoint)
    run(capsys, "submit", "ds", "plain text", "--job", "j1", *flags)
    assert main(["work", "ds", "--max-jobs", "1", "--exec", "echo broken >&2; exit 3", *flags]) == 0
    _, record = run(capsys, "status", "ds", "j1", *flags)
    assert record["status"] == "failed"
    assert (
        "exit status 3" in record["response"]["error"] and "broken" in record["response"]["error"]
    )


def test_work_calls_a_python_function(
    store: RunningStore,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "handlers.py").write_text("def double(ctx):\n    return ctx.request * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    flags = ("--endpoint", store.endpoint)
    run(capsys, "submit", "ds", "21", "--job", "j1", *flags)
    assert main(["work", "ds", "--max-jobs", "1", "--call", "handlers:double", *flags]) == 0
    assert run(capsys, "status", "ds", "j1", *flags)[1]["response"] == 42


def test_cancel_and_jobs(store: RunningStore, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ("--endpoint", store.endpoint, "--client", "c")
    run(capsys, "submit", "ds", "1", "--job", "a", *flags)
    run(capsys, "submit", "ds", "2", "--job", "b", *flags)
    assert run(capsys, "cancel", "ds", "a", *flags)[1]["status"] == "cancelled"
    _, jobs = run(capsys, "jobs", "ds", *flags)
    assert [(j["job"], j["status"]) for j in jobs] == [("b", "submitted"), ("a", "cancelled")]


def test_an_error_reply_exits_1_with_the_stores_words(
    store: RunningStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "ds", "nope", "--endpoint", store.endpoint]) == EXIT_FAILED
    assert "answered 404: no job" in capsys.readouterr().err


def test_no_store_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "ds", "j", "--endpoint", f"ipc://{tmp_path}/none", "--timeout", "0.2"])
    assert code == EXIT_UNREACHABLE and "is the store running" in capsys.readouterr().err


def test_serve_logs_what_it_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "JOBSTORE_DATA_DIR": str(tmp_path / "data")}
    args = [sys.executable, "-m", "jobstore", "serve"]
    for name in ("request", "observe", "notify"):
        args += [f"--{name}-endpoint", f"ipc://{tmp_path}/{name}"]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "protections:" in line:
                break
        assert any(f"request socket on ipc://{tmp_path}/request" in line for line in lines)
        assert "WARNING" in lines[-1] and "CURVE OFF" in lines[-1] and "macaroons OFF" in lines[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert (tmp_path / "data" / "data.mdb").exists()
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


def test_keygen_writes_a_key_pair_a_curve_store_serves_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], start_store: Any
) -> None:
    from jobstore.client import JobClient

    assert main(["keygen", "--out", str(tmp_path / "store.key")]) == 0
    public = capsys.readouterr().out.strip()
    secret = (tmp_path / "store.key").read_bytes().strip()
    assert (tmp_path / "store.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "store.key.pub").read_text().strip() == public and len(secret) == 40
    store = start_store(secret_key=secret)
    with JobClient(store.endpoint, "ds", "c", server_key=public) as app:
        assert app.submit(1)["status"] == "submitted"


def test_mint_makes_a_token_the_store_accepts_for_exactly_its_caveats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], start_store: Any
) -> None:
    from jobstore.client import JobClient
    from jobstore.errors import RequestFailed
    from jobstore.store.auth import Authoriser

    (tmp_path / "token.key").write_text("dev-secret\n")
    argv = ["mint", "--token-key-file", str(tmp_path / "token.key"), "--target", "me"]
    assert main([*argv, "--path", "/ds/*", "--method", "post", "--client", "c"]) == 0
    token = capsys.readouterr().out.strip()
    store = start_store(auth=Authoriser(b"dev-secret", "me"))
    with JobClient(store.endpoint, "ds", "c", token) as app:
        assert app.submit(1)["status"] == "submitted"
        with pytest.raises(RequestFailed, match="method = POST"):
            app.jobs().__next__()


def test_without_json_each_record_is_one_readable_line(
    store: RunningStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "ds", '{"n": 1}', "--job", "j1", "--endpoint", store.endpoint]) == 0
    assert capsys.readouterr().out == "j1  submitted  client=cli  attempts=0\n"


def test_databox_environment_gives_the_client_commands_their_defaults(
    store: RunningStore,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import importlib

    import jobstore.cli

    (tmp_path / "ZMQ_PUBLIC_KEY").write_text("k" * 40)
    (tmp_path / "ARBITER_TOKEN").write_text("app-token")
    monkeypatch.setenv("DATABOX_ZMQ_ENDPOINT", "tcp://jobstore-sensor:5555")
    monkeypatch.setenv("JOBSTORE_SECRETS_DIR", str(tmp_path))
    cli = importlib.reload(jobstore.cli)
    try:
        args = cli.build_parser().parse_args(["status", "ds", "j"])
        assert args.endpoint == "tcp://jobstore-sensor:5555"
        assert args.server_key == "k" * 40 and args.arbiter_key == "k" * 40
        assert args.arbiter_token == "app-token" and args.target == "jobstore-sensor"
    finally:
        monkeypatch.undo()
        importlib.reload(jobstore.cli)
