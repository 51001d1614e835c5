"""Storage format 6: the tables in three databases, and the upgrade of a format-5 store to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobstore.errors import ConfigError
from jobstore.protocol import Request
from jobstore.store.check import check
from jobstore.store.keys import (
    FORMAT,
    FORMAT_KEY,
    INDEXES,
    META_PREFIXES,
    ORDER_INDEXES,
    PLACES,
    SECRET_KEY,
)
from jobstore.store.operations import Service
from jobstore.store.scheduling import Settings
from jobstore.store.storage import Storage

from .old_layout import as_old_layout

Snapshot = dict[str, list[tuple[bytes, bytes]]]


def _post(service: Service, path: str, body: dict[str, Any], now: int) -> Any:
    reply = service.handle(Request("POST", path, body=body), now, mono=now).reply  # no real time
    assert reply is not None
    return reply


def populate(path: Path) -> None:
    """Queued, delayed, expiring, leased and finished jobs, settings, a topic and a catalogue."""
    service = Service(Storage(path))
    for n, options in enumerate(
        [{}, {"priority": 3}, {"delay": 60_000}, {"expires": 10**13}, {}, {}, {}]
    ):
        body = {"job": f"j{n}", "client": f"c{n % 3}", "request": n, **options}
        assert _post(service, "/ds/job/", body, 1000 + n).status == 201
    assert _post(service, "/other/job/", {"job": "x", "client": "c0"}, 1000).status == 201
    taken = _post(service, "/server/ds/job/take", {"max": 3}, 2000).body["jobs"]
    done = {"job": taken[0]["job"], "status": "complete", "response": 1}
    assert _post(service, "/server/ds/job/status", done, 2001).status == 200
    cancel = {"job": "j6", "client": "c0"}
    assert _post(service, "/ds/job/cancel", cancel, 2002).status == 200
    with service.storage.write() as txn:
        txn.set_settings("ds", Settings(max_attempts=7, lease=5000))
        txn.set_topic_seq("ds/c0", txn.seq())
        txn.set_catalogue_items([{"href": "tcp://store:5555/ds"}])
    service.storage.close()


def snapshot(path: Path) -> Snapshot:
    """Every table's entries, read through the storage's accessors (meta by its key prefixes)."""
    storage = Storage(path, readonly=True)
    with storage.read() as txn:
        found = {
            table: list(txn.entries(table))
            for table in ("jobs", *INDEXES, *ORDER_INDEXES)
            if table in storage.places
        }
        meta = [key for key in META_PREFIXES if key != FORMAT_KEY]
        found["meta"] = [entry for key in meta for entry in txn.entries("meta", key)]
        found["format"] = [(b"", bytes([txn.format()]))]
    storage.close()
    return found


def _as_format_5(path: Path) -> Snapshot:
    """Populate a store, keep what it holds, and lay it out as format 5 did."""
    populate(path)
    before = snapshot(path)
    as_old_layout(path, 5)
    return before


def test_each_table_has_its_database_and_prefix_and_meta_never_meets_a_prefix() -> None:
    assert {db for db, _ in PLACES.values()} == {"jobs", "log", "hot"}
    for db in ("log", "hot"):
        prefixes = [prefix for table, (d, prefix) in PLACES.items() if d == db and prefix]
        assert len(prefixes) == len(set(prefixes)) and all(len(p) == 1 for p in prefixes)
        assert not any(key.startswith(tuple(prefixes)) for key in META_PREFIXES)
    assert all(key[:1].islower() for key in META_PREFIXES)


def test_a_new_store_keeps_its_tables_in_three_databases(tmp_path: Path) -> None:
    populate(tmp_path)
    storage = Storage(tmp_path)
    assert len({id(db) for db, _ in storage.places.values()}) == 3
    with storage.read() as txn:
        assert txn.format() == FORMAT == 7
        assert txn.records() == 8
    storage.close()
    assert check(tmp_path) == (8, [])


def test_a_format_5_store_is_read_as_it_is_until_served(tmp_path: Path) -> None:
    before = _as_format_5(tmp_path / "data")
    old = snapshot(tmp_path / "data")
    assert old["format"] == [(b"", b"\x05")]
    assert {k: v for k, v in old.items() if k != "format"} == {
        k: v for k, v in before.items() if k != "format"
    }
    assert check(tmp_path / "data") == (8, [])
    Storage(tmp_path / "data", readonly=True).backup(tmp_path / "copy")
    assert snapshot(tmp_path / "copy") == old
    Storage(tmp_path / "copy").close()  # served: upgraded
    assert snapshot(tmp_path / "copy") == before


def test_opening_a_format_5_store_moves_every_entry_into_three_databases(tmp_path: Path) -> None:
    before = _as_format_5(tmp_path)
    storage = Storage(tmp_path)
    assert len({id(db) for db, _ in storage.places.values()}) == 3
    with storage.read() as txn:
        assert txn.records() == 8
    storage.close()
    assert snapshot(tmp_path) == before
    assert check(tmp_path) == (8, [])
    storage = Storage(tmp_path)
    with pytest.raises(Exception, match="MDB_NOTFOUND"), storage.env.begin() as raw:
        storage.env.open_db(b"meta", txn=raw, create=False)  # the old databases are dropped
    storage.close()


def test_an_upgraded_store_answers_as_one_that_never_was_format_5(tmp_path: Path) -> None:
    _as_format_5(tmp_path / "old")
    populate(tmp_path / "new")
    requests = [
        ("/server/ds/job/take", {"max": 10}, 3000),
        ("/server/ds/job/status", {"job": "j0", "status": "retrying", "delay": 10}, 3001),
        ("/ds/job/", {"job": "j9", "client": "c1", "request": 9}, 3002),
        ("/server/ds/job/take", {"max": 10}, 90_000),
        ("/server/ds/job/status", {"job": "j2", "status": "complete"}, 90_001),
        ("/server/other/job/take", {}, 90_002),
    ]
    replies = []
    for path in (tmp_path / "old", tmp_path / "new"):
        service = Service(Storage(path))
        replies.append([_post(service, *request) for request in requests])
        gets = ["/ds/job/c0", "/ds/job/c1/j9", "/ds/job/c2/since/3"]
        replies[-1] += [service.handle(Request("GET", p), 90_003, mono=90_003).reply for p in gets]
        service.storage.close()
    assert replies[0] == replies[1]
    assert [reply.status for reply in replies[0]] == [200, 200, 201, 200, 200, 200, 200, 200, 200]
    old, new = snapshot(tmp_path / "old"), snapshot(tmp_path / "new")
    for found in (old, new):  # each store made its own
        found["meta"] = [(key, value) for key, value in found["meta"] if key != SECRET_KEY]
    assert old == new
    assert check(tmp_path / "old") == (9, [])


def test_an_upgrade_without_room_for_the_copy_is_refused_naming_the_size(tmp_path: Path) -> None:
    before = _as_format_5(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"needs a map of \d+ bytes, above --max-map-size"):
        Storage(tmp_path / "data", max_map_size=1 << 17)
    assert snapshot(tmp_path / "data")["format"] == [(b"", b"\x05")]  # nothing changed
    Storage(tmp_path / "data").close()
    assert snapshot(tmp_path / "data") == before
