"""Secrets stay secret; shutdown under load leaves nothing half done."""

from __future__ import annotations

import hmac
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq

from jobstore.client import JobClient
from jobstore.errors import RequestFailed
from jobstore.protocol.cbor import decode_reply, encode_request
from jobstore.store.auth import Authoriser, mint

from .conftest import StoreFactory

SECRET_KEY = b"EKy(xjAnIfg6AT+OGd?nS1Mi5zZ&b*VXA@WxNLLE"
PUBLIC_KEY = b"vl6wu0A@XP?}Or/&BR#LSxn>A+}L)p44/W[wXL3<"
TOKEN_SECRET = b"never-say-this-secret"


def test_no_secret_or_token_reaches_a_log_or_a_reply(
    start_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = start_store(secret_key=SECRET_KEY, auth=Authoriser(TOKEN_SECRET, "me"))
    good = mint(TOKEN_SECRET, ["target = me", "client = c"])
    forged = mint(b"guess", ["target = me"])
    said: list[str] = []
    for token in (good, forged, good[:-5], "x" * 300):
        with JobClient(store.endpoint, "ds", "c", token, server_key=PUBLIC_KEY) as app:
            for call in (
                lambda: app.submit({"a": 1}),
                lambda: app.status("nope"),
                lambda: app.cancel("x y"),
            ):
                try:
                    said.append(repr(call()))
                except RequestFailed as exc:
                    said.append(f"{exc.message} {exc.body!r}")
    store.stop()
    text = "\n".join(said) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (TOKEN_SECRET.decode(), SECRET_KEY.decode(), good, forged, good[:-5]):
        assert secret not in text
    assert "does not verify" in text  # the refusals were really exercised


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = Authoriser(TOKEN_SECRET, "me")
    with pytest.raises(Exception, match="does not verify"):
        auth.check(mint(b"other", ["target = me"]), method="GET", path="/ds/job/c/j")
    assert calls, "the signature was not compared with hmac.compare_digest"


def test_sigterm_under_load_answers_or_leaves_unacknowledged_each_request(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "jobstore", "serve", "--data-dir", str(tmp_path / "data")]
    for name in ("request", "observe", "notify"):
        args += [f"--{name}-endpoint", f"ipc://{tmp_path}/{name}"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "protections:" in line:
                break
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"ipc://{tmp_path}/request")
        sock.sndtimeo = 1000  # once the store has gone, sends would block: those are never sent
        for i in range(3000):
            body = {"job": f"j{i}", "client": "c", "request": i}
            try:
                sock.send(encode_request("POST", "/ds/job/", body, id=i))
            except zmq.Again:
                break
            if i == 1500:
                proc.send_signal(signal.SIGTERM)
        answered = set()
        while sock.poll(2000):
            reply = decode_reply(sock.recv())
            assert reply.status == 201, reply
            answered.add(reply.id)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        ctx.destroy(linger=0)
    assert answered, "nothing was answered before the store stopped"
    restarted = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        assert restarted.stderr is not None
        for line in restarted.stderr:
            if "protections:" in line:
                break
        with JobClient(f"ipc://{tmp_path}/request", "ds", "c") as app:
            stored = {r["job"]: r for r in app.jobs()}
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(10)
    assert {f"j{i}" for i in answered} <= stored.keys()  # every acknowledged job is there
    assert all(stored[f"j{i}"]["request"] == i for i in range(3000) if f"j{i}" in stored)
