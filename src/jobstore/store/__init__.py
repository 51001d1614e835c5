"""The store: LMDB storage, the job operations and their batch engine, and the ZeroMQ adapter.

Everything here but :mod:`.server` runs without sockets; only :mod:`.storage` imports lmdb.
"""
