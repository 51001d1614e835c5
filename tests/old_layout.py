"""Data directories as formats 1 to 5 laid them out: each table in an LMDB database of its own."""

from __future__ import annotations

from pathlib import Path

from jobstore.store.keys import FORMAT_KEY, META_PREFIXES, PLACES, u64
from jobstore.store.storage import Storage


def as_old_layout(path: Path, old_format: int | None, without: tuple[str, ...] = ()) -> None:
    """Rewrite a data directory this jobstore wrote as an older one would have laid it out, its
    format key saying ``old_format`` (None: no key, as in format 1). The tables in ``without``
    are left out (a format older than the one that added them)."""
    storage = Storage(path)
    with storage.env.begin(write=True) as raw:
        shared = {db: storage.env.open_db(db.encode(), txn=raw) for db, _ in PLACES.values()}
        for table, (db, prefix) in PLACES.items():
            if db == table or table in without:
                continue
            owned = META_PREFIXES if table == "meta" else (prefix,)
            entries = [
                (bytes(key[len(prefix) :]), bytes(value))
                for key, value in raw.cursor(db=shared[db])
                if bytes(key).startswith(owned)
            ]
            own = storage.env.open_db(table.encode(), txn=raw)
            for key, value in entries:
                raw.put(key, value, db=own)
        for db in ("log", "hot"):
            raw.drop(shared[db], delete=True)
        meta = storage.env.open_db(b"meta", txn=raw)
        if old_format is None:
            raw.delete(FORMAT_KEY, db=meta)
        else:
            raw.put(FORMAT_KEY, u64(old_format), db=meta)
    storage.close()
