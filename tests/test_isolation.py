"""App isolation under the tokens Databox's arbiter really mints, and Zest observe isolation.

The arbiter mints path, method and target caveats, and the container manager grants an app
GET and POST on ``/<DSID>`` and ``/<DSID>/*``: every app of a datasource may name any client.
What keeps an app's jobs its own is its client id, a secret (docs/databox.md). These tests
mint through the fake arbiter in its default, real-like mode.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from pymacaroons import Macaroon

from jobstore.cli import main
from jobstore.client import Driver, JobClient, load_or_create_client_id, new_client_id
from jobstore.client.ids import CLIENT_ID_BYTES
from jobstore.client.sockets import secure
from jobstore.databox.arbiter import fetch_store_secret
from jobstore.databox.startup import ArbiterTokens
from jobstore.devtools.fake_arbiter import EXAMPLE_PUBLIC_KEY, EXAMPLE_SECRET_KEY, FakeArbiter
from jobstore.errors import ClientError, ProtocolError, RequestFailed
from jobstore.protocol import cbor, zest
from jobstore.protocol.sealed import open_sealed
from jobstore.records import check_name
from jobstore.store.auth import Authoriser

from .conftest import RunningStore, StoreFactory, recv
from .test_databox import observe

STORE, STORE_KEY = "jobstore-sensor", "c3RvcmUta2V5"
DS, OTHER_DS = "sensor-jobs", "other-jobs"
APPS = {"app-a": "YXBwLWE=", "app-b": "YXBwLWI="}
DRIVER, DRIVER_KEY = "driver-sensor", "ZHJpdmVy"
PUBLIC_KEY = EXAMPLE_PUBLIC_KEY.encode()


@dataclass
class Deployment:
    arbiter: FakeArbiter
    store: RunningStore

    def tokens(self, container: str, client: str | None = None) -> ArbiterTokens:
        path = "/*" if container == DRIVER else f"/{DS}/*"
        key = DRIVER_KEY if container == DRIVER else APPS[container]
        return ArbiterTokens(
            self.arbiter.bound or "",
            EXAMPLE_PUBLIC_KEY,
            key,
            target=STORE,
            path=path,
            client=client,
            identity=container,
        )

    def app(self, container: str, client: str, *, client_caveat: bool = False) -> JobClient:
        tokens = self.tokens(container, client if client_caveat else None)
        return JobClient(self.store.endpoint, DS, client, tokens, **self.kw)

    def driver(self, dsid: str = DS) -> Driver:
        return Driver(self.store.endpoint, dsid, self.tokens(DRIVER), **self.kw)

    @property
    def kw(self) -> dict[str, Any]:
        return {"server_key": PUBLIC_KEY, "notify_endpoint": self.store.notify_endpoint}


def deploy(start_store: StoreFactory, arbiter: FakeArbiter) -> Deployment:
    """Register and grant as the container manager does, then start the store as Databox does."""
    arbiter.register_store(STORE, STORE_KEY)
    for name, key in APPS.items():
        arbiter.register_container(name, key, "app")
        for method in ("GET", "POST"):  # what the CM grants an app on an actuator datasource
            arbiter.grant(name, STORE, f"/{DS}", method)
            arbiter.grant(name, STORE, f"/{DS}/*", method)
    arbiter.register_container(DRIVER, DRIVER_KEY, "driver")
    for method in ("GET", "POST"):
        arbiter.grant(DRIVER, STORE, "/*", method)
    secret = fetch_store_secret(arbiter.bound or "", EXAMPLE_PUBLIC_KEY, STORE_KEY, STORE)
    auth = Authoriser(secret, STORE)
    return Deployment(arbiter, start_store(secret_key=EXAMPLE_SECRET_KEY.encode(), auth=auth))


@pytest.fixture
def databox(start_store: StoreFactory, tmp_path: Path) -> Iterator[Deployment]:
    with FakeArbiter(f"ipc://{tmp_path}/arbiter") as arbiter:
        yield deploy(start_store, arbiter)


@dataclass
class Secrets:
    """App A's secret client id and what it submitted: one job queued, one complete."""

    client: str
    jobs: list[str]


@pytest.fixture
def app_a(databox: Deployment) -> Secrets:
    client = new_client_id()
    with databox.app("app-a", client) as app, databox.driver() as driver:
        done = app.submit({"read": "temperature"})["job"]
        [taken] = driver.take()
        driver.complete(taken["job"], {"celsius": 20})
        queued = app.submit({"read": "humidity"})["job"]
    return Secrets(client, [done, queued])


def caveats(token: str) -> list[str]:
    return [c.caveat_id for c in Macaroon.deserialize(token).first_party_caveats()]


def test_the_apps_tokens_carry_only_what_the_real_arbiter_mints(databox: Deployment) -> None:
    tokens = databox.tokens("app-b", client="asked-for-but-not-minted")
    for method in ("GET", "POST"):
        assert caveats(tokens(method, "/")) == [
            f"path = /{DS}/*",
            f"method = {method}",
            f"target = {STORE}",
        ]


def test_knowing_a_job_id_without_its_client_id_opens_nothing(
    databox: Deployment, app_a: Secrets
) -> None:
    done, queued = app_a.jobs
    with databox.app("app-b", new_client_id()) as app_b:
        app_b.submit("b's own")
        for call in (lambda: app_b.status(done), lambda: app_b.cancel(queued)):
            with pytest.raises(RequestFailed) as info:
                call()
            assert info.value.status == 403 and info.value.body is None
        assert [r["client"] for r in app_b.jobs()] == [app_b.client]
        for guess in ("app-a", "cli", "app1", app_b.client[:-1]):
            with databox.app("app-b", guess) as guessing:
                assert list(guessing.jobs()) == []
                with pytest.raises(RequestFailed) as info:
                    guessing.status(done)
                assert info.value.status == 403
    with databox.app("app-a", app_a.client) as app:
        record = app.status(queued)
        assert record["status"] == "submitted" and record["cancel_requested"] is False


def test_the_client_id_is_the_capability(databox: Deployment, app_a: Secrets) -> None:
    # Stock tokens name no client: whoever holds A's id reads A's jobs. That is the model.
    with databox.app("app-b", app_a.client) as holder:
        assert {r["job"] for r in holder.jobs()} == set(app_a.jobs)


def native_probes(b: str, a_job: str) -> list[tuple[str, str, Any]]:
    """Every kind of request app B's grant covers, with B's own id, a guessed one and A's job id."""
    probes: list[tuple[str, str, Any]] = []
    for client in (b, "app-a"):
        probes += [
            ("POST", f"/{DS}/job/", {"job": a_job, "client": client, "request": 1}),
            ("POST", f"/{DS}/job/", {"job": f"new-{client}", "client": client, "request": 1}),
            ("POST", f"/{DS}/job/", {"job": f"new-{client}", "client": client, "request": 2}),
            ("POST", f"/{DS}/job/cancel", {"job": a_job, "client": client}),
            ("POST", f"/{DS}/job/cancel", {"job": "missing", "client": client}),
            ("GET", f"/{DS}/job/", {"job": a_job, "client": client}),
            ("GET", f"/{DS}/job/", {"client": client}),
            ("GET", f"/{DS}/job/", {"client": client, "since": 0, "limit": 1}),
            ("GET", f"/{DS}/job/{client}", None),
            ("GET", f"/{DS}/job/{client}/since/0", None),
            ("GET", f"/{DS}/job/{client}/{a_job}", None),
            ("GET", f"/{DS}/job/{client}/missing", None),
            ("POST", f"/sub/{DS}/job", {"client": client}),
        ]
    probes += [
        ("GET", f"/{DS}", None),
        ("POST", f"/{DS}", {}),
        ("GET", f"/{DS}/job/", {}),
        ("POST", f"/{DS}/job/", {"job": a_job}),
        ("POST", f"/{DS}/job/x/y/z", None),
        ("GET", f"/{DS}/stats", None),
        ("GET", f"/{DS}/job/{b}/since/x", None),
        ("POST", f"/{DS}/job/batch", {"client": b, "jobs": [{"job": a_job, "request": 1}]}),
        # Outside the grant: refused, and the refusal must not tell either.
        ("GET", f"/server/{DS}/job/", {}),
        ("GET", f"/server/{DS}/stats", None),
        ("GET", "/stats", None),
        ("GET", "/cat", None),
        ("POST", f"/sub/server/{DS}/job", {}),
    ]
    return probes


def dealer(ctx: zmq.Context[Any], store: RunningStore) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    secure(sock, PUBLIC_KEY)
    sock.connect(store.endpoint)
    return sock


def test_no_reply_another_app_can_provoke_names_the_clients_id_or_jobs(
    ctx: zmq.Context[Any], databox: Deployment, app_a: Secrets
) -> None:
    b = new_client_id()
    tokens = databox.tokens("app-b")
    native, zest_sock = dealer(ctx, databox.store), dealer(ctx, databox.store)
    replies: list[tuple[str, bytes]] = []  # (what was asked, the raw reply frame)
    ids = itertools.count(1)
    for a_job in app_a.jobs:
        for method, path, body in native_probes(b, a_job):
            # A path B's token does not cover is asked with B's token anyway.
            token = tokens(method, path if path.startswith(f"/{DS}") else "/")
            native.send(cbor.encode_request(method, path, body, token=token, id=next(ids)))
            replies.append((f"{method} {path} {body}", recv(native)[-1]))
            payload = b"" if body is None else json.dumps(body).encode()
            zest_sock.send_multipart(
                [b"", zest.encode_request(method, path, token=token, body=payload)]
            )
            replies.append((f"zest {method} {path} {body}", recv(zest_sock)[-1]))
        observe_path = f"/{DS}/job/{b}"
        frame = zest.encode_request("GET", observe_path, token=tokens("GET", "/"), observe="data")
        zest_sock.send_multipart([b"", frame])
        replies.append((f"zest observe {observe_path}", recv(zest_sock)[-1]))
    statuses = {cbor.decode_reply(frame).status for what, frame in replies if "zest" not in what}
    assert {200, 201, 400, 401, 403, 404, 409} <= statuses  # the probes reached every answer
    secrets = [app_a.client.encode(), *(job.encode() for job in app_a.jobs)]
    for what, frame in replies:
        for secret in secrets:
            if secret.decode() not in what:  # a reply may echo what B itself sent
                assert secret not in frame, f"{what} answered {frame!r}"


def test_another_apps_subscription_opens_none_of_the_clients_notifications(
    ctx: zmq.Context[Any], databox: Deployment, app_a: Secrets
) -> None:
    with databox.app("app-b", new_client_id()) as app_b, databox.app("app-a", app_a.client) as a:
        key = app_b.conn.call("POST", f"/sub/{DS}/job", {"client": app_b.client})["key"]
        sub = ctx.socket(zmq.SUB)
        secure(sub, PUBLIC_KEY)
        sub.subscribe(b"")  # every topic the store publishes
        sub.connect(databox.store.notify_endpoint)
        for n in range(200):  # the SUB joins asynchronously: submit until it hears
            a.submit(n, job=f"a-{n}")
            if sub.poll(50):
                break
        messages = [recv(sub)]
        a.submit("last", job="a-last")
        while sub.poll(200):
            messages.append(sub.recv_multipart())
    assert messages
    for topic, sealed in messages:
        assert app_a.client.encode() not in topic and b"a-" not in topic
        with pytest.raises(ProtocolError):
            open_sealed(key, sealed)


def test_a_client_caveat_still_narrows_when_the_arbiter_mints_it(
    start_store: StoreFactory, tmp_path: Path
) -> None:
    with FakeArbiter(f"ipc://{tmp_path}/arbiter", client_caveats=True) as arbiter:
        databox = deploy(start_store, arbiter)
        with databox.app("app-a", "shared-id", client_caveat=True) as a:
            job = a.submit(1)["job"]
        with databox.app("app-b", "other-id", client_caveat=True) as b:
            b.conn.token = databox.tokens("app-b", "other-id")
            with pytest.raises(RequestFailed) as info:
                b.conn.call("GET", f"/{DS}/job/shared-id/{job}")
            assert info.value.status == 401 and "client = other-id" in info.value.message


# Zest observe: an observer hears only what it observes


def pushes_until_marker(sock: zmq.Socket[Any], marker: str) -> list[str]:
    """The push payloads up to and including the one about job ``marker``."""
    payloads: list[str] = []
    while not payloads or f"/{marker} " not in payloads[-1]:
        payloads.append(zest.decode_reply(recv(sock)[-1]).payload.decode())
    return payloads


def observed_path(payload: str) -> str:
    return payload.split(" ", 3)[1]


def submit_until_heard(app: JobClient, sock: zmq.Socket[Any]) -> None:
    """An observer's DEALER connects asynchronously: submit until it hears, then drain."""
    for n in range(200):
        app.submit(n, job=f"sync-{n}")
        if sock.poll(50):
            break
    pushes_until_marker(sock, f"sync-{n}")


def test_a_zest_observer_of_a_client_hears_nothing_of_other_clients_or_datasources(
    ctx: zmq.Context[Any], databox: Deployment
) -> None:
    b, a = new_client_id(), new_client_id()
    path = f"/{DS}/job/{b}"
    sock = observe(ctx, databox.store, path, databox.tokens("app-b")("GET", "/"))
    with (
        databox.app("app-b", b) as app_b,
        databox.app("app-a", a) as app_a,
        databox.driver(OTHER_DS) as other,
    ):
        submit_until_heard(app_b, sock)
        app_a.submit("a's job", job="a-job")
        other.conn.call("POST", f"/{OTHER_DS}/job/", {"job": "o-job", "client": b, "request": 1})
        app_b.submit("marker", job="marker")
    assert [observed_path(p) for p in pushes_until_marker(sock, "marker")] == [f"{path}/marker"]


def test_a_zest_observer_of_a_datasource_hears_nothing_of_another(
    ctx: zmq.Context[Any], databox: Deployment
) -> None:
    driver_token = databox.tokens(DRIVER)("GET", "/")
    sock = observe(ctx, databox.store, f"/server/{DS}/job", driver_token)
    a = new_client_id()
    with databox.app("app-a", a) as app_a, databox.driver(OTHER_DS) as other:
        submit_until_heard(app_a, sock)
        other.conn.call("POST", f"/{OTHER_DS}/job/", {"job": "o-job", "client": a, "request": 1})
        app_a.submit("marker", job="marker")
    assert [observed_path(p) for p in pushes_until_marker(sock, "marker")] == [
        f"/{DS}/job/{a}/marker"
    ]


# The client id: generated, kept, secret


def test_a_new_client_id_is_long_random_and_a_valid_name() -> None:
    ids = {new_client_id() for _ in range(100)}
    assert len(ids) == 100 and CLIENT_ID_BYTES * 8 >= 128
    for client in ids:
        assert check_name("client", client) == client and len(client) == 32


def test_a_client_id_file_is_made_private_once_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "client-id"
    first = load_or_create_client_id(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_client_id(path) == first and path.read_text() == first + "\n"
    assert os.listdir(tmp_path) == ["client-id"]  # no temporary file left behind


def test_a_client_id_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "client-id"
    load_or_create_client_id(path)
    path.chmod(0o644)
    with pytest.raises(ClientError, match="chmod 600"):
        load_or_create_client_id(path)


def test_a_client_id_file_holding_no_valid_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "client-id"
    path.write_text("not a valid id\n")
    path.chmod(0o600)
    with pytest.raises(ClientError, match="holds no valid id"):
        load_or_create_client_id(path)


def test_job_clients_take_a_client_file(store: RunningStore, tmp_path: Path) -> None:
    path = tmp_path / "client-id"
    with JobClient(store.endpoint, "ds", client_file=path) as app:
        job = app.submit(1)["job"]
        assert app.client == path.read_text().strip() and len(app.client) == 32
    with JobClient(store.endpoint, "ds", client_file=path) as again:
        assert again.status(job)["client"] == app.client
    with pytest.raises(ClientError, match="not both"):
        JobClient(store.endpoint, "ds", "c", client_file=path)
    with pytest.raises(ClientError, match="client_file"):
        JobClient(store.endpoint, "ds")


def test_the_command_line_keeps_its_client_id_in_a_file(
    store: RunningStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "client-id"
    flags = ["--endpoint", store.endpoint, "--client-file", str(path)]
    assert main(["submit", "ds", "1", "--job", "j1", *flags]) == 0
    capsys.readouterr()
    assert main(["status", "ds", "j1", "--json", *flags]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["client"] == path.read_text().strip()
    assert main(["status", "ds", "j1", *flags, "--client", "x"]) == 2
