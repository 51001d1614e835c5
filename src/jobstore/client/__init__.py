"""Python libraries over the native protocol: :class:`JobClient` for apps, :class:`Driver` for servers.

Every call returns at once with the store's answer (or raises
:class:`~jobstore.errors.RequestFailed` of the reply's status class, such as
:class:`~jobstore.errors.Conflict`, or :class:`~jobstore.errors.Timeout`); work
happens asynchronously in the driver. These are the blocking libraries;
:mod:`jobstore.aio` has the same classes for asyncio.

The package, by concept:

- ``requests``: the requests of both APIs, built once; ``ids``: client ids;
  ``outcomes``: what a handler sees (:class:`JobContext`) and what its end reports;
  ``decisions``: a watch's, lease renewals' and an outage's decisions, pure and
  clock-injected; ``sockets``: what a connection does without waiting (settings, request
  frames, reply answers), socket security and the no-reply error.
- ``_async/``: ``JobClient``, ``Driver`` (the ``Session`` they share) and ``Watch`` written
  once, as asyncio code, beside the asyncio glue (``connection``, ``concurrency``).
- ``_sync/``: the same three generated from ``_async/`` by ``scripts/unasync.py``
  (``make lint`` fails when they are stale), beside the blocking glue, written by hand.
"""

from ..errors import ForbidJob, JobCancelled, RetryJob, SetupError
from ._sync.app import JobClient
from ._sync.connection import Connection
from ._sync.driver import Driver
from ._sync.watch import Watch
from .decisions import WatchCursor
from .ids import load_or_create_client_id, new_client_id
from .outcomes import JobContext
from .requests import Record, Token, notify_endpoint_for

__all__ = [
    "Connection",
    "Driver",
    "ForbidJob",
    "JobCancelled",
    "JobClient",
    "JobContext",
    "Record",
    "RetryJob",
    "SetupError",
    "Token",
    "Watch",
    "WatchCursor",
    "load_or_create_client_id",
    "new_client_id",
    "notify_endpoint_for",
]
