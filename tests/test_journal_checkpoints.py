"""The journal when batches fail and checkpoints come: a batch whose journal write fails or that
fails after it wrote leaves the batches before it, checkpoints commit them (after a quiet spell in
the server, at CHECKPOINT_BYTES, at the ceiling, at close), and backups and reads see them.

Crash copies and the helpers are :mod:`tests.test_journal`'s.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from jobstore.cli import main
from jobstore.protocol import Reply, Request
from jobstore.records import Job
from jobstore.states import Status
from jobstore.store import storage as storage_module
from jobstore.store._lmdb_raw import RawTxn
from jobstore.store.check import check
from jobstore.store.context import Context
from jobstore.store.engine import Engine, Outcome, Route
from jobstore.store.function_ops import FunctionCalls
from jobstore.store.journal import JOURNAL_FILE
from jobstore.store.storage import Storage, StorageError

from .conftest import StoreFactory
from .test_journal import (
    crash_copy,
    journal_of,
    last_txnid,
    present,
    present_after_crash,
    put,
    reopened,
)
from .test_service import T0, Harness


def _failing(monkeypatch: pytest.MonkeyPatch, call: str, code: int) -> None:
    """Make the journal's ``os.<call>`` fail with ``code`` (nothing else in a test calls it)."""

    def fail(*args: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, fail)


JOURNAL_FAILURES = [
    pytest.param("pwrite", errno.ENOSPC, id="write"),
    pytest.param("fdatasync", errno.EIO, id="flush"),
]


@pytest.mark.parametrize(("call", "code"), JOURNAL_FAILURES)
def test_a_batch_whose_journal_fails_gets_a_500_is_not_applied_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int
) -> None:
    h = Harness(tmp_path / "data")
    h.submit("a")
    with monkeypatch.context() as failing:
        _failing(failing, call, code)
        reply = h.call("POST", "/ds/job/", {"job": "lost", "client": "c1", "request": "r"}).reply
    assert reply is not None and reply.status == StorageError.status == 500
    assert f"could not write its journal ({os.strerror(code)})" in (reply.error or "")
    assert "not applied" in (reply.error or "")
    assert "no job" in h.error("GET", "/ds/job/c1/lost", None, 404)
    h.submit("next")
    jobs = ["a", "lost", "next"]
    assert present_after_crash(h.storage.path, tmp_path / "copy", jobs) == ["a", "next"]


@pytest.mark.parametrize(("call", "code"), JOURNAL_FAILURES)
def test_a_batch_whose_journal_fails_is_not_redone_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int
) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    with monkeypatch.context() as failing, pytest.raises(StorageError):
        _failing(failing, call, code)
        put(storage, "lost")
    assert present_after_crash(storage.path, tmp_path / "copy", ["a", "lost"]) == ["a"]


def _make(ctx: Context, request: Request, params: list[str]) -> Outcome:
    change = ctx.new_job("ds", params[0], "c", None)
    if params[0] == "fails":
        raise RuntimeError("a bug after the operation wrote")
    return Outcome(Reply(201, None, id=request.id), [change])


def _route(request: Request) -> Route:
    return _make, [request.path.removeprefix("/make/")]


def test_a_request_that_fails_after_it_wrote_leaves_the_batches_before_it(tmp_path: Path) -> None:
    # The batch runs again, each request in a nested transaction, in a new open transaction:
    # fails if that one began at the last checkpoint without redoing the journal.
    storage = Storage(tmp_path / "data")
    engine = Engine(storage, _route, FunctionCalls.load(storage))
    engine.handle_batch([Request("POST", "/make/a")], T0)
    _, outcomes = engine.handle_batch(
        [Request("POST", f"/make/{j}") for j in ["b", "fails", "c"]], T0
    )
    assert [o.reply.status for o in outcomes if o.reply] == [201, 500, 201]
    jobs = ["a", "b", "fails", "c"]
    assert present(storage, jobs) == ["a", "b", "c"]
    assert present_after_crash(storage.path, tmp_path / "copy", jobs) == ["a", "b", "c"]


def fail_after_a_write(storage: Storage) -> None:
    with pytest.raises(RuntimeError), storage.write() as txn:
        txn.put(Job("ds", "undone", "c", "r", Status.SUBMITTED, T0, T0, 1), None)
        raise RuntimeError("the batch failed after it wrote")


def test_the_batch_after_a_failed_one_sees_the_batches_before_it_and_not_the_failed_one(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    fail_after_a_write(storage)
    with storage.write() as txn:
        assert txn.get("ds", "a") is not None and txn.get("ds", "undone") is None
    put(storage, "b")
    jobs = ["a", "undone", "b"]
    assert present_after_crash(storage.path, tmp_path / "copy", jobs) == ["a", "b"]


def test_a_read_right_after_a_failed_batch_sees_the_batches_before_it(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    fail_after_a_write(storage)
    assert present(storage, ["a"]) == ["a"]


def test_a_batch_whose_redo_fails_leaves_no_half_redone_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    put(storage, "b")
    fail_after_a_write(storage)  # the next batch begins by redoing a and b
    redo = RawTxn.redo

    def failing(txn: RawTxn, batches: list[list[Any]]) -> None:
        redo(txn, batches[:1])
        raise StorageError("injected: a disk error after a was redone")

    with monkeypatch.context() as disk:
        disk.setattr(RawTxn, "redo", failing)
        with pytest.raises(StorageError):
            put(storage, "lost")
    put(storage, "c")
    jobs = ["a", "b", "lost", "c"]
    assert present(storage, jobs) == ["a", "b", "c"]
    storage.checkpoint()
    assert present_after_crash(storage.path, tmp_path / "copy", jobs) == ["a", "b", "c"]


def test_a_checkpoint_commits_the_journaled_batches_and_starts_the_journal_again(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    before = last_txnid(storage)
    storage.checkpoint()
    assert last_txnid(storage) > before
    assert journal_of(storage).end == 0
    copy = crash_copy(storage.path, tmp_path / "copy")
    data_file = Storage(copy, readonly=True)  # reads the data file alone
    try:
        assert present(data_file, ["a"]) == ["a"]
        assert data_file.pending() == 0  # nothing left to redo
    finally:
        data_file.close()


def test_closing_the_store_checkpoints(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    storage.close()
    (tmp_path / "data" / JOURNAL_FILE).unlink()
    with reopened(tmp_path / "data") as again:
        assert present(again, ["a"]) == ["a"]


def test_a_journal_grown_to_checkpoint_bytes_checkpoints_after_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    before = last_txnid(storage)
    monkeypatch.setattr(storage_module, "CHECKPOINT_BYTES", journal_of(storage).end + 1)
    put(storage, "b")
    assert last_txnid(storage) > before and journal_of(storage).end == 0


def test_a_journal_of_checkpoint_writes_checkpoints_after_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The open transaction holds every page the writes since the checkpoint changed in memory.
    storage = Storage(tmp_path / "data")
    monkeypatch.setattr(storage_module, "CHECKPOINT_WRITES", 12)
    put(storage, "a")  # a record and its indexes and counters: fewer than 12 writes
    before = last_txnid(storage)
    assert journal_of(storage).end > 0
    put(storage, "b")
    assert last_txnid(storage) > before and journal_of(storage).end == 0


def test_a_failed_checkpoint_is_tried_again_after_checkpoint_ms_not_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retried at once, an idle server would spin on it (its poll timeout is the time left).
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    mono = storage_module._mono_ms() + storage_module.CHECKPOINT_MS
    due = storage.checkpoint_in(mono)
    assert due is not None and due <= 0  # due, the last batch being long past

    def failing() -> None:
        raise StorageError("the disk is gone")

    monkeypatch.setattr(storage, "checkpoint", failing)
    storage.checkpoint_if_due(mono)
    assert storage.checkpoint_in(mono) == storage_module.CHECKPOINT_MS
    monkeypatch.undo()
    storage.checkpoint_if_due(mono + storage_module.CHECKPOINT_MS)
    assert storage.checkpoint_in(mono) is None and journal_of(storage).end == 0


def test_a_store_at_its_ceiling_checkpoints_after_every_batch(tmp_path: Path) -> None:
    # Only a commit frees the pages a batch replaced: a journal at the ceiling would fill the map.
    storage = Storage(tmp_path / "data", map_size=1 << 20, max_map_size=1 << 20)
    for job in ("a", "b"):
        before = last_txnid(storage)
        put(storage, job)
        assert last_txnid(storage) > before and journal_of(storage).end == 0


def test_an_idle_server_checkpoints_the_batches_it_journaled(
    start_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "CHECKPOINT_MS", 50)
    store = start_store()
    storage = store.server.service.storage
    checkpoint, committed = storage.checkpoint, threading.Event()

    def signalling() -> None:
        checkpoint()
        with storage.read() as txn:  # no open transaction after a checkpoint: the data file
            if txn.get("ds", "a") is not None:
                committed.set()

    monkeypatch.setattr(storage, "checkpoint", signalling)
    before = last_txnid(storage)
    with store.client() as app:
        app.submit("r", job="a")
    assert committed.wait(10), "the server never checkpointed the submit while idle"
    assert last_txnid(storage) > before


def test_a_backup_redoes_the_batches_journaled_since_the_last_checkpoint(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data")
    h.submit("old")
    h.storage.checkpoint()
    h.submit("new")
    h.storage.backup(tmp_path / "backup")
    assert not (tmp_path / "backup" / JOURNAL_FILE).exists()
    assert check(tmp_path / "backup") == (2, [])  # check reads the data file alone


def test_jobstore_backup_of_a_crashed_store_redoes_its_journal(tmp_path: Path) -> None:
    h = Harness(tmp_path / "data")
    h.submit("old")
    h.storage.checkpoint()
    h.submit("new")
    copy = crash_copy(h.storage.path, tmp_path / "copy")
    assert main(["backup", str(copy), str(tmp_path / "backup")]) == 0
    assert check(tmp_path / "backup") == (2, [])
    assert check(copy) == (1, [])  # the backup opened the crashed store read-only


def test_a_read_in_the_writing_thread_sees_the_batches_journaled_since_the_checkpoint(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "data")
    put(storage, "a")
    assert present(storage, ["a"]) == ["a"]
    # Another thread must not use the open write transaction: it reads the last checkpoint.
    elsewhere: list[list[str]] = []
    thread = threading.Thread(target=lambda: elsewhere.append(present(storage, ["a"])))
    thread.start()
    thread.join(10)
    assert elsewhere == [[]]


# `jobstore backup` of a served store, paused once the data file is copied until told to go on.
PAUSED_BACKUP = """
import sys
from jobstore.store.storage import Storage

class Paused:
    def __init__(self, env):
        self.env = env
    def __getattr__(self, name):
        return getattr(self.env, name)
    def copy(self, *args, **kwargs):
        self.env.copy(*args, **kwargs)
        print("copied", flush=True)
        sys.stdin.readline()

storage = Storage(sys.argv[1], readonly=True)
storage.env = Paused(storage.env)
storage.backup(sys.argv[2])
storage.close()
"""


@pytest.mark.parametrize(
    "checkpoint",
    [
        pytest.param(False, id="no checkpoint"),
        pytest.param(True, id="checkpoint"),
    ],
)
def test_a_backup_of_a_served_store_keeps_the_batches_journaled_before_it_began(
    tmp_path: Path, checkpoint: bool
) -> None:
    h = Harness(tmp_path / "data")
    h.submit("old")
    h.storage.checkpoint()
    h.submit("new")
    command = [sys.executable, "-c", PAUSED_BACKUP, str(h.storage.path), str(tmp_path / "backup")]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as run:
        assert run.stdin is not None and run.stdout is not None
        assert select.select([run.stdout], [], [], 60)[0], "the backup never copied the data file"
        assert run.stdout.readline() == "copied\n"
        if checkpoint:
            h.storage.checkpoint()  # as the server does once quiet
        run.stdin.write("go on\n")
        run.stdin.close()
        assert run.wait(60) == 0
    assert check(tmp_path / "backup") == (2, [])
