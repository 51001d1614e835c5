"""jobstore: a Databox store for a queue of jobs (asynchronous RPC over ZeroMQ, kept in LMDB)."""

__version__ = "0.1.0"
