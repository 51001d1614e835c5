"""The job store as one :class:`Service`: the batch engine composed with the routing table.

The operations themselves are plain functions in :mod:`~jobstore.store.client_ops`,
:mod:`~jobstore.store.server_ops`, :mod:`~jobstore.store.admin_ops` and
:mod:`~jobstore.store.function_ops`, found by :mod:`~jobstore.store.routes`; the
:class:`~jobstore.store.engine.Engine` runs them in batches, one commit per batch.
No sockets here: the socket adapter (:mod:`jobstore.store.server`) drives a Service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..protocol import Request
from ..protocol.sealed import Change, Sealer
from .auth import Authoriser
from .context import Limits
from .engine import Engine, Outcome
from .function_ops import FunctionCalls, commit_pending
from .routes import route
from .storage import Storage

__all__ = ["Limits", "Outcome", "Service"]


class Service:
    """The job store over ``storage``: handles requests, one commit per batch."""

    def __init__(
        self, storage: Storage, auth: Authoriser | None = None, limits: Limits | None = None
    ) -> None:
        functions = FunctionCalls.load(storage)
        self.engine = Engine(
            storage, route, functions, auth=auth, limits=limits, hooks=(commit_pending,)
        )
        self.shared = self.engine.shared

    @property
    def storage(self) -> Storage:
        """The store's data."""
        return self.shared.storage

    @property
    def limits(self) -> Limits:
        """The store's tunable limits."""
        return self.shared.limits

    @property
    def sealer(self) -> Sealer:
        """What seals the notifications this store publishes."""
        return self.shared.sealer

    @property
    def functions(self) -> FunctionCalls:
        """The function-call state the socket adapter and the operations share."""
        return self.shared.functions

    @property
    def transport(self) -> dict[str, int]:
        """Counters the socket adapter keeps, shown in /stats."""
        return self.shared.transport

    @property
    def handled(self) -> int:
        """How many requests the store has handled since it started."""
        return self.shared.handled

    def handle(self, request: Request, now: int, mono: int | None = None) -> Outcome:
        """Handle one request in its own transaction (:meth:`Engine.handle`)."""
        return self.engine.handle(request, now, mono)

    def handle_batch(
        self,
        requests: Sequence[Request],
        now: int,
        wake: Callable[[Mapping[str, int]], Sequence[Request]] | None = None,
        mono: int | None = None,
    ) -> tuple[list[Change], list[Outcome]]:
        """Handle ``requests`` (and the waiting takes ``wake`` returns) in one commit
        (:meth:`Engine.handle_batch`)."""
        return self.engine.handle_batch(requests, now, wake, mono)

    def lease_due_in(self, mono: int) -> int | None:
        """Ms until the earliest lease runs out (:meth:`Engine.lease_due_in`)."""
        return self.engine.lease_due_in(mono)

    def timer_due_in(self, now: int) -> int | None:
        """Ms until a delayed job falls due or a queued one expires (:meth:`Engine.timer_due_in`)."""
        return self.engine.timer_due_in(now)

    def watch_data_dir(self, now: int) -> None:
        """Check the data directory is still the one opened (:meth:`Engine.watch_data_dir`)."""
        self.engine.watch_data_dir(now)
