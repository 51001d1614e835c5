"""Databox start-up through docker/entrypoint.sh with the fake arbiter, and a job's whole life."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from jobstore.client import Driver, JobClient
from jobstore.databox import startup
from jobstore.databox.arbiter import fetch_store_secret
from jobstore.databox.startup import ArbiterTokens, Secrets, read_secrets, token_secret
from jobstore.devtools.fake_arbiter import EXAMPLE_PUBLIC_KEY, EXAMPLE_SECRET_KEY, FakeArbiter
from jobstore.errors import ConfigError, RequestFailed, Timeout, Unauthorized
from jobstore.protocol import zest

ROOT = Path(__file__).parent.parent
STORE = "jobstore-sensor"
STORE_KEY = "c3RvcmUtYXJiaXRlci10b2tlbg=="
APP, APP_KEY = "app1", "YXBwLWFyYml0ZXItdG9rZW4="
DRIVER, DRIVER_KEY = "driver-sensor", "ZHJpdmVyLWFyYml0ZXItdG9rZW4="


@pytest.fixture
def arbiter() -> Iterator[FakeArbiter]:
    with FakeArbiter("tcp://127.0.0.1:*") as fake:
        fake.register_store(STORE, STORE_KEY)
        fake.register_container(APP, APP_KEY, "app")
        fake.register_container(DRIVER, DRIVER_KEY, "driver")
        # What the container manager grants: an app POST and GET on an actuator datasource,
        # a driver everything on its own store.
        for method in ("GET", "POST"):
            fake.grant(APP, STORE, "/sensor-jobs", method)
            fake.grant(APP, STORE, "/sensor-jobs/*", method)
        for method in ("GET", "POST", "DELETE"):
            fake.grant(DRIVER, STORE, "/*", method)
        yield fake


def write_secrets(directory: Path, arbiter_token: str = STORE_KEY) -> Path:
    directory.mkdir()
    (directory / "ARBITER_TOKEN").write_text(arbiter_token)
    (directory / "ZMQ_SECRET_KEY").write_text(EXAMPLE_SECRET_KEY)
    (directory / "ZMQ_PUBLIC_KEY").write_text(EXAMPLE_PUBLIC_KEY)
    return directory


def start_entrypoint(
    tmp_path: Path, arbiter: FakeArbiter, secrets: Path
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("request", "observe", "notify")}
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DATABOX_LOCAL_NAME": STORE,
        "DATABOX_ARBITER_ENDPOINT": arbiter.bound,
        "JOBSTORE_SECRETS_DIR": str(secrets),
        "JOBSTORE_DATA_DIR": str(tmp_path / "database"),
        **{f"JOBSTORE_{name.upper()}_ENDPOINT": endpoint for name, endpoint in endpoints.items()},
    }
    proc = subprocess.Popen(
        ["sh", str(ROOT / "docker" / "entrypoint.sh")], env=env, stderr=subprocess.PIPE, text=True
    )
    return proc, endpoints


def wait_until_serving(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "protections:" in line:
            return lines
    raise AssertionError("the store exited before serving:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(10) == 0
    finally:
        proc.kill()


def tokens(arbiter: FakeArbiter, who: str, key: str, path: str) -> ArbiterTokens:
    """Tokens as the real arbiter mints them: path, method and target caveats only."""
    return ArbiterTokens(
        arbiter.bound, EXAMPLE_PUBLIC_KEY, key, target=STORE, path=path, identity=who
    )


def test_a_job_runs_from_app_to_driver_and_back_in_databox_mode(
    tmp_path: Path, arbiter: FakeArbiter
) -> None:
    proc, endpoints = start_entrypoint(tmp_path, arbiter, write_secrets(tmp_path / "secrets"))
    try:
        lines = wait_until_serving(proc)
        assert "CURVE on; macaroons required" in lines[-1]
        kw: dict[str, Any] = {
            "server_key": EXAMPLE_PUBLIC_KEY,
            "notify_endpoint": endpoints["notify"],
        }
        app_tokens = tokens(arbiter, APP, APP_KEY, "/sensor-jobs/*")
        with (
            JobClient(endpoints["request"], "sensor-jobs", APP, app_tokens, **kw) as app,
            Driver(
                endpoints["request"], "sensor-jobs", tokens(arbiter, DRIVER, DRIVER_KEY, "/*"), **kw
            ) as driver,
        ):
            driver.register("Sensor reading jobs")
            with app.watch(timeout=10) as watch:
                job = app.submit({"read": "temperature"})["job"]
                [taken] = driver.take()
                driver.complete(taken["job"], {"celsius": 21.5})
                final = next(r for r in watch if r["status"] == "complete")
            assert final["job"] == job and final["response"] == {"celsius": 21.5}

            # The same app over Zest, the way Databox client libraries talk.
            req = zmq.Context.instance().socket(zmq.REQ)
            req.linger = 0
            req.curve_serverkey = EXAMPLE_PUBLIC_KEY.encode()
            req.curve_publickey, req.curve_secretkey = zmq.curve_keypair()
            req.connect(endpoints["request"])
            body = json.dumps({"job": "zest-1", "client": APP, "request": 1}).encode()
            req.send(
                zest.encode_request(
                    "POST", "/sensor-jobs/job/", token=app_tokens("POST", "/"), body=body
                )
            )
            assert req.poll(5000) and zest.decode_reply(req.recv()).code == zest.CREATED
            [taken] = driver.take()
            driver.fail(taken["job"], "no sensor")
            req.send(
                zest.encode_request(
                    "GET", f"/sensor-jobs/job/{APP}/zest-1", token=app_tokens("GET", "/")
                )
            )
            assert req.poll(5000)
            assert json.loads(zest.decode_reply(req.recv()).payload)["status"] == "failed"
            req.close()

            # An app's token does not open the driver's API, nor another datasource.
            with pytest.raises(RequestFailed) as info:
                Driver(endpoints["request"], "sensor-jobs", app_tokens, **kw).take()
            assert info.value.status == 401
            with pytest.raises(RequestFailed) as info:
                JobClient(endpoints["request"], "other-jobs", APP, app_tokens, **kw).submit(1)
            assert info.value.status == 401
    finally:
        stop(proc)


def test_arbiter_tokens_forget_the_refused_token_only(monkeypatch: pytest.MonkeyPatch) -> None:
    minted = iter(["t1", "t2"])
    monkeypatch.setattr(startup, "request_token", lambda *_, **__: next(minted))
    tokens = ArbiterTokens("tcp://arbiter:4444", None, APP_KEY, target=STORE, path="/*")
    assert tokens("GET", "/ds/job/") == "t1"
    tokens.forget("GET", "/ds/job/", "t0")  # refused late, after t1 replaced it: t1 stays
    assert tokens("GET", "/ds/job/") == "t1"
    tokens.forget("POST", "/sub/ds/job", "t1")  # a subscribe is sent with the GET token
    assert tokens("GET", "/ds/job/") == "t2"


def test_the_entrypoint_stops_with_a_clear_error_when_a_secret_is_missing(
    tmp_path: Path, arbiter: FakeArbiter
) -> None:
    secrets = write_secrets(tmp_path / "secrets")
    (secrets / "ZMQ_SECRET_KEY").unlink()
    proc, _ = start_entrypoint(tmp_path, arbiter, secrets)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "ZMQ_SECRET_KEY" in err and "--secrets-dir" in err


def test_a_store_with_a_wrong_arbiter_token_is_refused_at_once(
    tmp_path: Path, arbiter: FakeArbiter
) -> None:
    secrets = read_secrets(write_secrets(tmp_path / "secrets", arbiter_token="wrong"))
    with pytest.raises(Unauthorized, match="ARBITER_TOKEN"):
        token_secret(arbiter.bound, secrets, STORE, attempts=3, sleep=lambda _: None)


def test_an_unreachable_arbiter_is_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    secrets = Secrets(STORE_KEY, EXAMPLE_SECRET_KEY.encode(), EXAMPLE_PUBLIC_KEY.encode())
    waits: list[float] = []
    with pytest.raises(ConfigError, match="did not answer after 3 attempts"):
        token_secret(
            f"ipc://{tmp_path}/no-arbiter",
            secrets,
            STORE,
            attempts=3,
            timeout=0.1,
            sleep=waits.append,
        )
    assert waits == [1.0, 2.0]


def test_the_store_uses_the_secret_the_arbiter_gave_it(
    tmp_path: Path, arbiter: FakeArbiter
) -> None:
    secrets = read_secrets(write_secrets(tmp_path / "secrets"))
    assert token_secret(arbiter.bound or "", secrets, STORE) == arbiter.secret_of(STORE)


def test_a_token_from_another_store_does_not_work(tmp_path: Path, arbiter: FakeArbiter) -> None:
    proc, endpoints = start_entrypoint(tmp_path, arbiter, write_secrets(tmp_path / "secrets"))
    try:
        wait_until_serving(proc)
        arbiter.register_store("other-store", "b3RoZXI=")
        fetch_store_secret(arbiter.bound or "", EXAMPLE_PUBLIC_KEY, "b3RoZXI=", "other-store")
        arbiter.grant(APP, "other-store", "/sensor-jobs/*", "GET")
        elsewhere = ArbiterTokens(
            arbiter.bound,
            EXAMPLE_PUBLIC_KEY,
            APP_KEY,
            target="other-store",
            path="/sensor-jobs/*",
            identity=APP,
        )
        with JobClient(
            endpoints["request"], "sensor-jobs", APP, elsewhere, server_key=EXAMPLE_PUBLIC_KEY
        ) as app:
            with pytest.raises(RequestFailed) as info:
                app.status("x")
            assert info.value.status == 401 and "signature does not verify" in info.value.message
            with pytest.raises(Timeout):
                JobClient(endpoints["request"], "sensor-jobs", APP, timeout=0.3).status(
                    "x"
                )  # no CURVE
    finally:
        stop(proc)


def test_the_command_line_gets_its_tokens_from_the_arbiter(
    tmp_path: Path, arbiter: FakeArbiter, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobstore.cli import main

    proc, endpoints = start_entrypoint(tmp_path, arbiter, write_secrets(tmp_path / "secrets"))
    try:
        wait_until_serving(proc)
        common = ["--endpoint", endpoints["request"], "--server-key", EXAMPLE_PUBLIC_KEY]
        common += [
            "--arbiter",
            arbiter.bound or "",
            "--arbiter-key",
            EXAMPLE_PUBLIC_KEY,
            "--target",
            STORE,
        ]
        app = [*common, "--client", APP, "--arbiter-token", APP_KEY, "--as", APP]
        assert main(["submit", "sensor-jobs", "21", "--job", "cli-1", *app]) == 0
        driver = [*common, "--arbiter-token", DRIVER_KEY, "--as", DRIVER]
        assert (
            main(["work", "sensor-jobs", "--max-jobs", "1", "--call", "operator:neg", *driver]) == 0
        )
        capsys.readouterr()
        assert main(["status", "sensor-jobs", "cli-1", "--json", *app]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["status"] == "failed"  # operator.neg gets a JobContext, not a number
        assert (
            main(
                [
                    "status",
                    "sensor-jobs",
                    "cli-1",
                    *common,
                    "--client",
                    APP,
                    "--arbiter-token",
                    "bad",
                    "--as",
                    APP,
                ]
            )
            == 1
        )
        assert "ARBITER_TOKEN" in capsys.readouterr().err
    finally:
        stop(proc)
