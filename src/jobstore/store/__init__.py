"""The store: LMDB storage, the job operations and their batch engine, and the ZeroMQ adapter.

Everything here but :mod:`.server` runs without sockets; only the storage layer
(:mod:`.storage`, :mod:`.txn` and their private :mod:`._lmdb_raw`) touches LMDB, and only
:mod:`._lmdb_raw` imports lmdb.
"""
