"""jobstore check and jobstore backup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobstore.cli import EXIT_FAILED, main
from jobstore.protocol import Request
from jobstore.store.check import check
from jobstore.store.keys import count_key, u64
from jobstore.store.operations import Service
from jobstore.store.storage import Storage

from .conftest import StoreFactory
from .test_journal import crash_copy


def populate(path: Path) -> Storage:
    storage = Storage(path)
    service = Service(storage)
    for i in range(6):
        service.handle(
            Request("POST", "/ds/job/", body={"job": f"j{i}", "client": f"c{i % 2}"}), 1000 + i
        )
    service.handle(Request("POST", "/server/ds/job/take", body={"max": 2}), 2000)
    service.handle(
        Request("POST", "/server/ds/job/status", body={"job": "j0", "status": "complete"}), 2001
    )
    service.handle(Request("POST", "/ds/job/cancel", body={"job": "j5", "client": "c1"}), 2002)
    return storage


def test_a_sound_directory_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path / "data").close()
    assert check(tmp_path / "data") == (6, [])
    assert main(["check", str(tmp_path / "data")]) == 0
    assert "ok: 6 record(s)" in capsys.readouterr().out


def test_check_says_how_many_journaled_batches_it_does_not_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = populate(tmp_path / "data")  # open: its batches are in the journal, not checkpointed
    copy = crash_copy(storage.path, tmp_path / "copy")
    assert main(["check", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "note: the journal holds 9 batch(es) not yet in the data file" in out
    assert "ok: 0 record(s)" in out  # the data file as of its last checkpoint
    storage.close()
    assert main(["check", str(tmp_path / "data")]) == 0
    assert "note:" not in capsys.readouterr().out


def test_a_directory_with_scheduled_jobs_passes(tmp_path: Path) -> None:
    service = Service(Storage(tmp_path / "data"))
    for i, options in enumerate(
        [{"priority": 5}, {"delay": 10}, {"delay": 100_000}, {"expires": 10**13}, {}]
    ):
        body = {"job": f"j{i}", "client": f"c{i % 2}", **options}
        service.handle(Request("POST", "/ds/job/", body=body), 1000)
    service.handle(Request("POST", "/server/ds/job/take", body={"max": 2}), 2000)
    report = {"job": "j0", "status": "retrying", "delay": 50}
    service.handle(Request("POST", "/server/ds/job/status", body=report), 2000)
    service.storage.close()
    assert check(tmp_path / "data") == (5, [])


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda t: t.delete_raw("queue", b"ds\0" + u64(3)), "queue index lacks"),
        (
            lambda t: t.put_raw("clients", b"ds\0c9\0" + u64(99), b"j9"),
            "points at no record",
        ),
        (lambda t: t.put_raw("meta", count_key("ds"), u64(42)), "job count"),
        (lambda t: t.put_raw("meta", b"seq", u64(1)), "above the store counter"),
        (lambda t: t.delete_raw("jobs", b"ds\0j3\0"), "points at no record"),
        (
            lambda t: t.delete_raw("due", b"ds\0d" + b"c1\0" + u64(4)),
            "ds/j3 is in neither due nor later",
        ),
        (lambda t: t.delete_first("ready", b"", 1 << 20), "line entry for"),
        (lambda t: t.put_raw("due", b"ds\0dc7\0" + u64(77), b"j77"), "no queued job's"),
        (lambda t: t.put_raw("turns", b"ds\0dc7", u64(9)), "client with no due job"),
        (lambda t: t.put_raw("meta", b"d:ds\0", u64(3)), "delayed count of ds is 3"),
    ],
)
def test_damage_is_found_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, fragment: str
) -> None:
    storage = populate(tmp_path / "data")
    with storage.write() as txn:
        damage(txn)  # type: ignore[operator]
    storage.close()
    assert main(["check", str(tmp_path / "data")]) == EXIT_FAILED
    assert fragment in capsys.readouterr().out


def test_check_refuses_a_directory_without_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path)]) == 2
    assert "no jobstore data" in capsys.readouterr().err


def test_backup_while_serving_is_a_consistent_copy(
    tmp_path: Path, start_store: StoreFactory
) -> None:
    store = start_store()
    with store.client() as app:
        for i in range(20):
            app.submit(i, job=f"j{i}")
        # Another process, as an operator's backup would be (LMDB allows one open per process).
        done = backup(store.data_dir, tmp_path / "copy")
        assert done.returncode == 0, done.stderr
        app.submit(20, job="after")
    assert check(tmp_path / "copy") == (20, [])
    again = backup(store.data_dir, tmp_path / "copy")
    assert again.returncode == 2 and "exists" in again.stderr


def backup(data: Path, destination: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jobstore", "backup", str(data), str(destination)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
