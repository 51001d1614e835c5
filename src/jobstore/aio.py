"""asyncio versions of :class:`JobClient` and :class:`Driver`, on ``zmq.asyncio``.

They take the same arguments, have the same methods (as coroutines), build the
same requests and raise the same errors as those of :mod:`jobstore.client`: both
are generated from one source (see that package). Many coroutines may call
through one client at once: requests share one DEALER socket and a reader task
hands each reply to the call waiting for its ``id``.

    async with JobClient("tcp://127.0.0.1:5555", "sensor-jobs", "app1") as app:
        jobs = await asyncio.gather(*(app.submit({"n": n}) for n in range(10)))
        async with app.watch(timeout=30) as watch:
            async for record in watch:
                ...
"""

from .client._async.app import JobClient
from .client._async.connection import Connection
from .client._async.driver import Driver
from .client._async.watch import Watch
from .client.outcomes import JobContext
from .errors import ForbidJob, JobCancelled, RetryJob, SetupError

__all__ = [
    "Connection",
    "Driver",
    "ForbidJob",
    "JobCancelled",
    "JobClient",
    "JobContext",
    "RetryJob",
    "SetupError",
    "Watch",
]
