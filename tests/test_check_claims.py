"""Every kind of damage ``jobstore check`` claims to find, made directly in the LMDB and named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobstore import records
from jobstore.store.check import check
from jobstore.store.keys import SEQ_KEY, count_key, index_keys, status_key, u64
from jobstore.store.txn import Txn

from .test_check import populate

Damage = Callable[[Txn], object]


def _record(txn: Txn, job: str) -> records.Job:
    return records.load("ds", txn.get_raw("jobs", f"ds\0{job}\0".encode()) or b"")


def _rewrite(txn: Txn, job: str, **fields: Any) -> None:
    new = _record(txn, job).evolve(**fields)
    txn.put_raw("jobs", f"ds\0{job}\0".encode(), records.dump(new, records.encode(new)))


def _index_key(txn: Txn, db: str, job: str) -> bytes:
    return index_keys(_record(txn, job))[db]


def _drop(db: str, job: str) -> Damage:
    """Delete the entry ``job`` owns in the index ``db``."""
    return lambda t: t.delete_raw(db, _index_key(t, db, job))


def _stray(db: str, key: bytes, value: bytes) -> Damage:
    return lambda t: t.put_raw(db, key, value)


# populate(): j0 complete (done), j1 accepted (leases), j2-j4 submitted (queue), j5 cancelled.
CASES: list[tuple[str, Damage, str]] = [
    (
        "undecodable record",
        lambda t: t.put_raw("jobs", b"ds\0j2\0", b"\xff\x00garbage"),
        "record b'ds\\x00j2\\x00' does not decode",
    ),
    (
        "record under another job's key",
        lambda t: t.put_raw("jobs", b"ds\0j9\0", t.get_raw("jobs", b"ds\0j2\0") or b""),
        "is stored under the wrong key for ds/j2",
    ),
    (
        "duplicate seq",
        lambda t: _rewrite(t, "j3", seq=_record(t, "j2").seq),
        "is used by 2 records",
    ),
    (
        "seq above the counter",
        lambda t: t.put_raw("meta", SEQ_KEY, u64(1)),
        "above the store counter",
    ),
    (
        "seq counter missing",
        lambda t: t.delete_raw("meta", SEQ_KEY),
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
        lambda t: t.put_raw("changes", _index_key(t, "changes", "j2"), b"j3"),
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
    ("record deleted", lambda t: t.delete_raw("jobs", b"ds\0j3\0"), "points at no record"),
    (
        "wrong unfinished count",
        lambda t: t.put_raw("meta", count_key("ds", "c0"), u64(42)),
        f"job count {count_key('ds', 'c0')!r} is 42, records say otherwise",
    ),
    (
        "wrong status count",
        lambda t: t.put_raw("meta", status_key("ds", "submitted"), u64(7)),
        f"job count {status_key('ds', 'submitted')!r} is 7",
    ),
    (
        "missing count",
        lambda t: t.delete_raw("meta", count_key("ds")),
        f"job count {count_key('ds')!r} is missing",
    ),
    (
        "topic beyond the counter",
        lambda t: t.put_raw("meta", b"t:sometopic", u64(10_000)),
        "topic b'sometopic' claims seq 10000 above the counter",
    ),
]


@pytest.mark.parametrize(("damage", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_names_each_kind_of_damage(tmp_path: Path, damage: Damage, problem: str) -> None:
    storage = populate(tmp_path / "data")
    with storage.write() as txn:
        damage(txn)
    storage.close()
    _, problems = check(tmp_path / "data")
    assert any(problem in found for found in problems), problems
