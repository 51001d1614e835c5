"""Databox compatibility through real sockets: CURVE, macaroons, Zest observe, hypercat."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import zmq
from pythonzestclient.pyZestClient import PyZestClient

from jobstore.client import Driver, JobClient
from jobstore.errors import RequestFailed, Timeout
from jobstore.protocol import zest
from jobstore.store.auth import Authoriser, mint

from .conftest import RunningStore, StoreFactory, recv

SECRET_KEY = b"EKy(xjAnIfg6AT+OGd?nS1Mi5zZ&b*VXA@WxNLLE"
PUBLIC_KEY = b"vl6wu0A@XP?}Or/&BR#LSxn>A+}L)p44/W[wXL3<"
TOKEN_SECRET = b"a-test-token-secret"
IDENTITY = "jobstore-test"


@pytest.fixture
def secured(start_store: StoreFactory) -> RunningStore:
    """A store as Databox runs it: CURVE on every socket and macaroons required."""
    return start_store(secret_key=SECRET_KEY, auth=Authoriser(TOKEN_SECRET, IDENTITY))


def token(*caveats: str, secret: bytes = TOKEN_SECRET) -> str:
    return mint(secret, [f"target = {IDENTITY}", *caveats])


def app_token() -> str:
    """What the container manager grants an app on an actuator datasource: POST and GET on ds/*."""
    return token("path = /ds/*", "client = app1")


def zest_req(ctx: zmq.Context[Any], store: RunningStore) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = PUBLIC_KEY, public, secret
    sock.connect(store.endpoint)
    return sock


def zest_call(
    sock: zmq.Socket[Any], method: str, path: str, tok: str, body: Any = None, **kw: Any
) -> Any:
    payload = b"" if body is None else json.dumps(body).encode()
    sock.send(zest.encode_request(method, path, token=tok, body=payload, **kw))
    return zest.decode_reply(recv(sock)[-1])


def test_a_plain_client_cannot_talk_to_a_curve_store(secured: RunningStore) -> None:
    with JobClient(secured.endpoint, "ds", "app1", timeout=0.3) as app, pytest.raises(Timeout):
        app.status("j")


def test_a_curve_client_with_a_token_runs_a_job_end_to_end(secured: RunningStore) -> None:
    kw: dict[str, Any] = {"server_key": PUBLIC_KEY, "notify_endpoint": secured.notify_endpoint}
    with (
        JobClient(secured.endpoint, "ds", "app1", app_token(), **kw) as app,
        Driver(secured.endpoint, "ds", token("path = /server/ds/*"), **kw) as driver,
    ):
        watch = app.watch(timeout=10)
        job = app.submit({"q": 1})["job"]
        assert next(watch)["status"] == "submitted"
        [taken] = driver.take()
        assert next(watch)["status"] == "accepted"
        driver.complete(taken["job"], {"a": 2})
        assert next(watch)["response"] == {"a": 2}
        assert app.status(job)["status"] == "complete"


@pytest.mark.parametrize(
    ("tok", "fragment"),
    [
        (None, "missing token"),
        (token("path = /other/*", "client = app1"), 'caveat "path = /other/*"'),
        (token("path = /ds/*", "method = GET", "client = app1"), 'caveat "method = GET"'),
        (
            mint(TOKEN_SECRET, ["target = another-store", "path = /ds/*"]),
            'caveat "target = another-store"',
        ),
        (token("path = /ds/*", "client = app2"), 'caveat "client = app2"'),
        (token("path = /ds/*", "colour = blue"), 'caveat "colour = blue"'),
        (token("path = /ds/*", secret=b"forged"), "signature does not verify"),
        ("bm90IGEgbWFjYXJvb24", "not valid base64 macaroon"),
    ],
)
def test_bad_tokens_get_401_naming_what_failed(
    secured: RunningStore, tok: str | None, fragment: str
) -> None:
    with (
        JobClient(secured.endpoint, "ds", "app1", tok, server_key=PUBLIC_KEY) as app,
        pytest.raises(RequestFailed) as info,
    ):
        app.submit("x")
    assert info.value.status == 401 and fragment in info.value.message
    assert TOKEN_SECRET.decode() not in info.value.message


def test_an_app_cannot_read_another_apps_jobs_even_with_a_valid_token(
    secured: RunningStore,
) -> None:
    with JobClient(secured.endpoint, "ds", "app1", app_token(), server_key=PUBLIC_KEY) as app:
        app.submit("x", job="mine")
    other = token("path = /ds/*", "client = app2")
    with JobClient(secured.endpoint, "ds", "app2", other, server_key=PUBLIC_KEY) as thief:
        with pytest.raises(RequestFailed) as info:
            thief.status("mine")
        assert info.value.status == 403
        with pytest.raises(RequestFailed) as info:
            thief.conn.call("GET", "/ds/job/app1/mine")
        assert info.value.status == 401


def test_an_app_token_cannot_take_jobs(secured: RunningStore) -> None:
    with (
        Driver(secured.endpoint, "ds", app_token(), server_key=PUBLIC_KEY) as impostor,
        pytest.raises(RequestFailed) as info,
    ):
        impostor.take()
    assert info.value.status == 401


def test_subscribing_needs_the_observe_caveats_of_the_observed_path(secured: RunningStore) -> None:
    with JobClient(secured.endpoint, "ds", "app1", app_token(), server_key=PUBLIC_KEY) as app:
        assert len(app.conn.call("POST", "/sub/ds/job", {"client": "app1"})["key"]) == 32
    no_observe = token("path = /ds/*", "client = app1", "observe = audit")
    with (
        JobClient(secured.endpoint, "ds", "app1", no_observe, server_key=PUBLIC_KEY) as app,
        pytest.raises(RequestFailed) as info,
    ):
        app.conn.call("POST", "/sub/ds/job", {"client": "app1"})
    assert info.value.status == 401


def test_zest_errors_map_to_zest_codes(ctx: zmq.Context[Any], secured: RunningStore) -> None:
    sock = zest_req(ctx, secured)
    assert zest_call(sock, "GET", "/ds/job/app1/none", "").code == zest.UNAUTHORIZED
    assert zest_call(sock, "GET", "/ds/job/app1/none", app_token()).code == zest.NOT_FOUND
    assert zest_call(sock, "DELETE", "/ds/job/", token()).code == zest.METHOD_NOT_ALLOWED
    bad = zest_call(sock, "POST", "/ds/job/", app_token(), {"job": "a b", "client": "app1"})
    assert bad.code == zest.BAD_REQUEST and b"not a valid name" in bad.payload


def observe(
    ctx: zmq.Context[Any], store: RunningStore, path: str, tok: str, max_age: int = 0
) -> zmq.Socket[Any]:
    """The Databox observe handshake: GET with option 6, then a DEALER with the returned UUID."""
    sock = zest_req(ctx, store)
    reply = zest_call(sock, "GET", path, tok, observe="data", max_age=max_age)
    assert reply.code == zest.CONTENT, reply
    assert reply.options[zest.OPT_OBSERVE_KEY] == PUBLIC_KEY
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.identity = reply.payload
    public, secret = zmq.curve_keypair()
    dealer.curve_serverkey, dealer.curve_publickey, dealer.curve_secretkey = (
        PUBLIC_KEY,
        public,
        secret,
    )
    dealer.connect(store.server.endpoints["observe"])
    return dealer


def submit_until_observed(
    ctx: zmq.Context[Any], store: RunningStore, dealer: zmq.Socket[Any]
) -> bytes:
    """Submit jobs until the observer (whose connection is asynchronous) receives a push."""
    sock = zest_req(ctx, store)
    for i in range(100):
        zest_call(
            sock, "POST", "/ds/job/", app_token(), {"job": f"j{i}", "client": "app1", "request": i}
        )
        if dealer.poll(50):
            frame: bytes = dealer.recv()
            return frame
    raise AssertionError("no observe push arrived")


def test_zest_observe_pushes_each_change_of_the_clients_jobs(
    ctx: zmq.Context[Any], secured: RunningStore
) -> None:
    dealer = observe(
        ctx, secured, "/ds/job/app1", token("path = /ds/*", "client = app1", "observe = data")
    )
    push = zest.decode_reply(submit_until_observed(ctx, secured, dealer))
    assert push.code == zest.CONTENT and push.options[zest.OPT_CONTENT_FORMAT] == b"\x00\x32"
    ms, path, fmt, record = push.payload.decode().split(" ", 3)
    assert int(ms) > 0 and fmt == "json"
    assert path == f"/ds/job/app1/{json.loads(record)['job']}"
    assert json.loads(record)["status"] == "submitted"


def test_zest_observe_of_the_datasource_needs_a_server_token(
    ctx: zmq.Context[Any], secured: RunningStore
) -> None:
    sock = zest_req(ctx, secured)
    assert (
        zest_call(sock, "GET", "/server/ds/job", app_token(), observe="data").code
        == zest.UNAUTHORIZED
    )
    dealer = observe(ctx, secured, "/server/ds/job", token("path = /server/ds/*"))
    assert b"submitted" in submit_until_observed(ctx, secured, dealer)


def test_zest_observation_ends_with_163_when_max_age_runs_out(
    ctx: zmq.Context[Any], secured: RunningStore
) -> None:
    dealer = observe(ctx, secured, "/ds/job/app1", app_token(), max_age=1)
    frames = []
    while True:
        frame = recv(dealer, 5000)[-1]
        frames.append(frame)
        if zest.decode_reply(frame).code == zest.SERVICE_UNAVAILABLE:
            break
    assert frames[-1] == zest.encode_bare(zest.SERVICE_UNAVAILABLE)


def test_zest_observers_get_163_when_the_store_stops(
    ctx: zmq.Context[Any], secured: RunningStore
) -> None:
    dealer = observe(ctx, secured, "/ds/job/app1", app_token())
    submit_until_observed(ctx, secured, dealer)
    secured.stop()
    while True:
        frame = recv(dealer)[-1]
        if zest.decode_reply(frame).code == zest.SERVICE_UNAVAILABLE:
            break


def test_hypercat_lists_items_a_driver_registers(secured: RunningStore) -> None:
    with Driver(secured.endpoint, "ds", token("path = /*"), server_key=PUBLIC_KEY) as driver:
        driver.register("Sensor reading jobs")
        driver.register("Sensor reading jobs, v2")
        cat = driver.conn.call("GET", "/cat")
    assert cat["catalogue-metadata"][0]["val"] == "application/vnd.hypercat.catalogue+json"
    [item] = cat["items"]
    rels = {pair["rel"]: pair["val"] for pair in item["item-metadata"]}
    assert rels["urn:X-databox:rels:hasStoreType"] == "job"
    assert rels["urn:X-databox:rels:isActuator"] is True
    assert rels["urn:X-hypercat:rels:hasDescription:en"] == "Sensor reading jobs, v2"


@pytest.mark.parametrize(
    "item",
    [
        "not a map",
        {"item-metadata": []},
        {"href": "x", "item-metadata": [{"rel": "urn:X-hypercat:rels:isContentType", "val": "a"}]},
        {"href": "x", "item-metadata": [{"val": "a"}]},
    ],
)
def test_invalid_hypercat_items_are_refused_with_zest_128(
    ctx: zmq.Context[Any], secured: RunningStore, item: Any
) -> None:
    assert zest_call(zest_req(ctx, secured), "POST", "/cat", token(), item).code == zest.BAD_REQUEST


def test_the_databox_python_client_submits_reads_and_observes_a_job(secured: RunningStore) -> None:
    client = PyZestClient(
        PUBLIC_KEY.decode(), secured.endpoint, secured.server.endpoints["observe"]
    )
    client.socket.rcvtimeo = 10_000  # a lost reply fails the test instead of hanging it
    tok = app_token().encode()
    created = client.post(
        "/ds/job/", json.dumps({"job": "pz1", "client": "app1", "request": {"n": 1}}), "JSON", tok
    )
    assert json.loads(created)["status"] == "submitted"
    assert json.loads(client.get("/ds/job/app1/pz1", "JSON", tok))["status"] == "submitted"
    observed: dict[str, Any] = {}
    watcher = threading.Thread(
        target=lambda: observed.update(
            payload=client.observe("/ds/job/app1", "JSON", tok, "data", 0)
        ),
        daemon=True,
    )
    watcher.start()
    with Driver(
        secured.endpoint, "ds", token("path = /server/ds/*"), server_key=PUBLIC_KEY
    ) as driver:
        driver.take()
        for _ in range(100):
            watcher.join(0.05)
            if not watcher.is_alive():
                break
            driver.progress("pz1", {"tick": _})
    assert not watcher.is_alive(), "the Databox client's observe never received a push"
    _ms, path, fmt, record = observed["payload"].split(" ", 3)
    assert (path, fmt, json.loads(record)["job"]) == ("/ds/job/app1/pz1", "json", "pz1")
    client.closeSockets()
