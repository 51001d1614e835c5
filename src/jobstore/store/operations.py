"""The job store as one :class:`Service`: the batch engine composed with the routing table.

The operations themselves are plain functions in :mod:`~jobstore.store.client_ops`,
:mod:`~jobstore.store.server_ops`, :mod:`~jobstore.store.admin_ops` and
:mod:`~jobstore.store.function_ops`, found by :mod:`~jobstore.store.routes`; the
:class:`~jobstore.store.engine.Engine` runs them in batches, one durable write per batch.
No sockets here: the socket adapter (:mod:`jobstore.store.server`) drives a Service.
"""

from __future__ import annotations

from .auth import Authoriser
from .context import Limits
from .engine import Engine, Outcome
from .function_ops import FunctionCalls, commit_pending
from .routes import route
from .storage import Storage

__all__ = ["Limits", "Outcome", "Service"]


class Service:
    """The job store over ``storage``: handles requests, one durable write per batch.

    ``handle``, ``handle_batch``, ``lease_due_in``, ``timer_due_in`` and ``watch_data_dir``
    are its :class:`~jobstore.store.engine.Engine`'s (bound once: the socket adapter calls
    them for every batch). ``storage``, ``limits``, ``sealer`` (what seals the notifications),
    ``functions`` (the function-call state the adapter shares with the operations) and
    ``transport`` (the adapter's counters, shown in /stats) are the parts every operation
    shares.
    """

    def __init__(
        self, storage: Storage, auth: Authoriser | None = None, limits: Limits | None = None
    ) -> None:
        functions = FunctionCalls.load(storage)
        self.engine = engine = Engine(
            storage, route, functions, auth=auth, limits=limits, hooks=(commit_pending,)
        )
        self.shared = shared = engine.shared
        self.storage = storage
        self.limits = shared.limits
        self.sealer = shared.sealer
        self.functions = functions
        self.transport = shared.transport
        self.handle = engine.handle
        self.handle_batch = engine.handle_batch
        self.lease_due_in = engine.lease_due_in
        self.timer_due_in = engine.timer_due_in
        self.watch_data_dir = engine.watch_data_dir

    @property
    def handled(self) -> int:
        """How many requests the store has handled since it started."""
        return self.shared.handled
