"""Every kind of damage ``jobstore check`` claims to find, made directly in the LMDB and named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobstore import records
from jobstore.store.check import check
from jobstore.store.keys import SEQ_KEY, count_key, index_keys, status_key, u64

from .test_check import populate

Damage = Callable[[Any, dict[str, Any]], None]


def _record(txn: Any, dbs: dict[str, Any], job: str) -> records.Job:
    return records.load("ds", bytes(txn.get(f"ds\0{job}\0".encode(), db=dbs["jobs"])))


def _rewrite(txn: Any, dbs: dict[str, Any], job: str, **fields: Any) -> None:
    new = _record(txn, dbs, job).evolve(**fields)
    txn.put(f"ds\0{job}\0".encode(), records.dump(new, records.encode(new)), db=dbs["jobs"])


def _index_key(txn: Any, dbs: dict[str, Any], db: str, job: str) -> bytes:
    return index_keys(_record(txn, dbs, job))[db]


def _drop(db: str, job: str) -> Damage:
    """Delete the entry ``job`` owns in the index ``db``."""
    return lambda t, d: t.delete(_index_key(t, d, db, job), db=d[db])


def _stray(db: str, key: bytes, value: bytes) -> Damage:
    return lambda t, d: t.put(key, value, db=d[db])


# populate(): j0 complete (done), j1 accepted (leases), j2-j4 submitted (queue), j5 cancelled.
CASES: list[tuple[str, Damage, str]] = [
    (
        "undecodable record",
        lambda t, d: t.put(b"ds\0j2\0", b"\xff\x00garbage", db=d["jobs"]),
        "record b'ds\\x00j2\\x00' does not decode",
    ),
    (
        "record under another job's key",
        lambda t, d: t.put(b"ds\0j9\0", t.get(b"ds\0j2\0", db=d["jobs"]), db=d["jobs"]),
        "is stored under the wrong key for ds/j2",
    ),
    (
        "duplicate seq",
        lambda t, d: _rewrite(t, d, "j3", seq=_record(t, d, "j2").seq),
        "is used by 2 records",
    ),
    (
        "seq above the counter",
        lambda t, d: t.put(SEQ_KEY, u64(1), db=d["meta"]),
        "above the store counter",
    ),
    (
        "seq counter missing",
        lambda t, d: t.delete(SEQ_KEY, db=d["meta"]),
        "the seq counter is missing",
    ),
    *(
        (
            f"{db} entry missing",
            _drop(db, job),
            f"{db} index lacks the entry",
        )
        for db, job in (
            ("queue", "j2"),
            ("clients", "j2"),
            ("changes", "j2"),
            ("leases", "j1"),
            ("done", "j0"),
        )
    ),
    (
        "index entry naming another job",
        lambda t, d: t.put(_index_key(t, d, "changes", "j2"), b"j3", db=d["changes"]),
        "changes index lacks the entry",
    ),
    *(
        (
            f"stray {db} entry",
            _stray(db, key, value),
            f"{db} index entry {key!r} points at no record",
        )
        for db, key, value in (
            ("queue", b"ds\0" + u64(99), b"j9"),
            ("clients", b"ds\0c9\0" + u64(99), b"j9"),
            ("changes", b"ds\0" + u64(99), b"j9"),
            ("leases", u64(5) + b"ds\0j9\0", b""),
            ("done", u64(5) + b"ds\0j9\0", b""),
        )
    ),
    ("record deleted", lambda t, d: t.delete(b"ds\0j3\0", db=d["jobs"]), "points at no record"),
    (
        "wrong unfinished count",
        lambda t, d: t.put(count_key("ds", "c0"), u64(42), db=d["meta"]),
        f"job count {count_key('ds', 'c0')!r} is 42, records say otherwise",
    ),
    (
        "wrong status count",
        lambda t, d: t.put(status_key("ds", "submitted"), u64(7), db=d["meta"]),
        f"job count {status_key('ds', 'submitted')!r} is 7",
    ),
    (
        "missing count",
        lambda t, d: t.delete(count_key("ds"), db=d["meta"]),
        f"job count {count_key('ds')!r} is missing",
    ),
    (
        "topic beyond the counter",
        lambda t, d: t.put(b"t:sometopic", u64(10_000), db=d["meta"]),
        "topic b'sometopic' claims seq 10000 above the counter",
    ),
]


@pytest.mark.parametrize(("damage", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_names_each_kind_of_damage(tmp_path: Path, damage: Damage, problem: str) -> None:
    storage = populate(tmp_path / "data")
    with storage.env.begin(write=True) as txn:
        damage(txn, storage.dbs)
    storage.close()
    _, problems = check(tmp_path / "data")
    assert any(problem in found for found in problems), problems
