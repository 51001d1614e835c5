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

# Re-exported by name (``X as X``): what ``jobstore.aio`` offers, as mypy and ruff read it.
from .client._async.app import JobClient as JobClient
from .client._async.connection import Connection as Connection
from .client._async.driver import Driver as Driver
from .client._async.watch import Watch as Watch
from .client.outcomes import JobContext as JobContext
from .errors import ForbidJob as ForbidJob
from .errors import JobCancelled as JobCancelled
from .errors import RetryJob as RetryJob
from .errors import SetupError as SetupError
