"""Shared fixtures: a real store on ipc:// endpoints in tmp_path, started and stopped per test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from jobstore.client import Driver, JobClient
from jobstore.store import server as server_module
from jobstore.store.operations import Limits, Service
from jobstore.store.server import Server, ServerConfig
from jobstore.store.storage import Storage

# The outage tests' fixtures, for tests/test_driver_outage.py and both flavours of
# tests/_async/test_driver_outage.py: a store process to restart, the outage log lines.
from .outage import noticed, served_store  # noqa: F401

TIMEOUT_MS = 5000


@pytest.fixture(autouse=True)
def close_stores() -> Iterator[None]:
    """Close, after each test and in its thread, every store it opened and left open.

    A store keeps its write transaction open between batches. Left to the GC, it may be freed
    in another thread (a served store's), whose abort cannot release the writer lock the test's
    thread holds: glibc's list of the locks that thread holds then points into the unmapped
    lock file, and its next LMDB write crashes the run (SIGSEGV).
    """
    opened: list[Storage] = []
    init = Storage.__init__

    def tracked(storage: Storage, *args: Any, **kwargs: Any) -> None:
        init(storage, *args, **kwargs)
        opened.append(storage)

    # Not monkeypatch: this fixture comes first, so it is undone last, after the test's patches.
    Storage.__init__ = tracked  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Storage.__init__ = init  # type: ignore[method-assign]
    for storage in opened:
        storage.close()  # again for those closed already: nothing to do


@dataclass
class RunningStore:
    server: Server
    thread: threading.Thread
    data_dir: Path
    config: ServerConfig

    @property
    def endpoint(self) -> str:
        return self.server.endpoints["request"]

    @property
    def notify_endpoint(self) -> str:
        return self.server.endpoints["notify"]

    def client(self, client: str = "app1", dsid: str = "ds", **kw: Any) -> JobClient:
        return JobClient(self.endpoint, dsid, client, notify_endpoint=self.notify_endpoint, **kw)

    def driver(self, dsid: str = "ds", **kw: Any) -> Driver:
        return Driver(self.endpoint, dsid, notify_endpoint=self.notify_endpoint, **kw)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the store did not stop within 10 s"


StoreFactory = Callable[..., RunningStore]


@pytest.fixture
def start_store(tmp_path: Path) -> Iterator[StoreFactory]:
    """Start stores (same data dir unless told) on ipc endpoints; all are stopped at teardown."""
    running: list[RunningStore] = []

    def start(
        limits: Limits | None = None, data_dir: Path | None = None, auth: Any = None, **config: Any
    ) -> RunningStore:
        data = data_dir or tmp_path / "data"
        sockets = tmp_path / f"s{len(running)}"
        sockets.mkdir()
        endpoints = {
            "request_endpoint": f"ipc://{sockets}/req",
            "observe_endpoint": f"ipc://{sockets}/obs",
            "notify_endpoint": f"ipc://{sockets}/not",
        }
        cfg = ServerConfig(**{**endpoints, **config})
        server = Server(Service(Storage(data), auth, limits), cfg)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        store = RunningStore(server, thread, data, cfg)
        running.append(store)
        return store

    yield start
    for store in running:
        if store.thread.is_alive():
            store.stop()


@pytest.fixture
def store(start_store: StoreFactory) -> RunningStore:
    return start_store()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def recv(sock: zmq.Socket[Any], timeout_ms: int = TIMEOUT_MS) -> list[bytes]:
    """Receive one multipart message or fail the test."""
    assert sock.poll(timeout_ms), f"no message within {timeout_ms} ms"
    frames: list[bytes] = sock.recv_multipart()
    return frames


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--crash-rounds", type=int, default=20, help="SIGKILL rounds in test_crash.py")


@pytest.fixture
def crash_rounds(request: pytest.FixtureRequest) -> int:
    rounds: int = request.config.getoption("--crash-rounds")
    return rounds


class Clocks:
    """Steps of the served stores' clocks, in ms: the wall clock (record times) and the monotonic
    clock (leases), as the server reads them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall = self.mono = 0
        wall, mono = server_module.now_ms, server_module.mono_ms
        monkeypatch.setattr(server_module, "now_ms", lambda: wall() + self.wall)
        monkeypatch.setattr(server_module, "mono_ms", lambda: mono() + self.mono)


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Clocks:
    return Clocks(monkeypatch)
