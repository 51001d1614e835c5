"""What the sync and the asyncio libraries share: request builders, socket set-up, the watch's
decisions, and what a driver reports for a handler's outcome. No event loop, no blocking here.
"""

from __future__ import annotations

import os
import random
import secrets
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from .databox.hypercat import job_datasource_item
from .errors import ClientError, JobstoreError, RequestFailed, Timeout
from .records import check_name

Record = dict[str, Any]
# A macaroon, or a function giving the macaroon for a (method, path): Databox tokens name a method.
Token = str | Callable[[str, str], str] | None
# One request as (method, path, body), built once for the sync and the asyncio libraries.
Call = tuple[str, str, Any]
# The path and body of a subscribe request (always a POST).
Subscription = tuple[str, dict[str, Any]]
# Jobs whose attempt a driver remembers, at most; the oldest handed are forgotten first. Not
# forgotten on a report: a job handed back may be taken by another driver, and a later report of
# this driver on it must still carry the attempt it held.
MAX_REMEMBERED = 10_000


# The client id is the capability to a client's jobs under the arbiter's tokens, which name no
# client: 192 random bits, as 32 URL-safe characters (all of them valid in a client id).
CLIENT_ID_BYTES = 24


def new_client_id() -> str:
    """A fresh client id nobody can guess; keep it secret, as it opens the client's jobs."""
    return secrets.token_urlsafe(CLIENT_ID_BYTES)


def load_or_create_client_id(path: str | os.PathLike[str]) -> str:
    """The client id kept in ``path``; on first use a new one is written there with mode 0600.

    Processes racing to create it all get the one that was written first. A file that
    others may read is refused: whoever reads it can read and cancel this client's jobs.
    """
    path = Path(path)
    if path.exists():
        return _read_client_id(path)
    client = new_client_id()
    try:
        # Written in full to a private temporary file, then linked into place: a reader never
        # sees a partial id, and link fails rather than replace an id another process made.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(client + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(temp, path)
        except FileExistsError:
            return _read_client_id(path)
        finally:
            os.unlink(temp)
    except OSError as exc:
        raise ClientError(
            f"cannot create the client id file {path}: {exc.strerror}; "
            "point client_file at a writable place"
        ) from None
    return client


def _read_client_id(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the client id file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClientError(
            f"the client id file {path} may be read by others (mode {stat.S_IMODE(mode):o}), and "
            f"the id opens this client's jobs: chmod 600 {path}"
        )
    try:
        return check_name("client id", text.strip())
    except JobstoreError as exc:
        raise ClientError(f"the client id file {path} holds no valid id: {exc.message}") from None


def client_id(client: str | None, client_file: str | os.PathLike[str] | None) -> str:
    """The client id a JobClient is given: ``client`` itself, or the one kept in ``client_file``."""
    if client is not None and client_file is not None:
        raise ClientError("give either client or client_file, not both")
    if client is not None:
        return client
    if client_file is None:
        raise ClientError(
            "give a client id, or client_file (a file where a secret one is generated and kept)"
        )
    return load_or_create_client_id(client_file)


def notify_endpoint_for(endpoint: str) -> str:
    """The default notify endpoint beside a request endpoint: the tcp port two above it."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp" or parts.port is None:
        raise ClientError(
            f"cannot guess the notify endpoint for {endpoint}: pass notify_endpoint explicitly"
        )
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    return f"tcp://{host}:{parts.port + 2}"


def token_for(token: Token, method: str, path: str) -> str | None:
    """The macaroon to send with a request: the token itself, or what the token function gives."""
    return token(method, path) if callable(token) else token


def secure(sock: zmq.Socket[Any], server_key: bytes | None) -> None:
    """Set linger 0 and, with a server key, make the socket a CURVE client with a fresh keypair."""
    sock.linger = 0
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret


def no_reply(method: str, path: str, endpoint: str, limit: float) -> Timeout:
    """The Timeout for a request that got no reply."""
    return Timeout(
        f"no reply to {method} {path} from {endpoint} within {limit:g} s: "
        "is the store running there (and is the server key right)?"
    )


class ClientRequests:
    """The requests of the client API (contract section 4) for one client of one datasource."""

    def __init__(self, dsid: str, client: str) -> None:
        self.dsid = dsid
        self.client = client

    def submit(self, request: Any, job: str | None) -> Call:
        """Submit a job, with a fresh GUID unless ``job`` is given."""
        body = {"job": job or uuid.uuid4().hex, "client": self.client, "request": request}
        return "POST", f"/{self.dsid}/job/", body

    def status(self, job: str) -> Call:
        """Read one job's record."""
        return "GET", f"/{self.dsid}/job/{self.client}/{job}", None

    def cancel(self, job: str) -> Call:
        """Cancel one job."""
        return "POST", f"/{self.dsid}/job/cancel", {"job": job, "client": self.client}

    def page(self, since: int, limit: int | None) -> Call:
        """List the client's jobs changed after ``since``."""
        body: dict[str, Any] = {"client": self.client, "since": since}
        if limit is not None:
            body["limit"] = limit
        return "GET", f"/{self.dsid}/job/", body

    def subscription(self) -> Subscription:
        """Subscribe to the client's topic."""
        return f"/sub/{self.dsid}/job", {"client": self.client}


class DriverRequests:
    """The requests of the server API (contract section 5) for one datasource."""

    def __init__(self, dsid: str) -> None:
        self.dsid = dsid
        self.base = f"/server/{dsid}/job"
        # job id -> `attempts` of the record this driver was handed, sent as `attempt` with its
        # reports, so a report on a job that was handed out again since is refused (409).
        self._attempts: dict[str, int] = {}

    def handed(self, records: Iterable[Record]) -> None:
        """Remember the attempt of each job a take or accept handed this driver."""
        attempts = self._attempts
        for record in records:
            attempts.pop(record["job"], None)  # to the end: the oldest are forgotten first
            attempts[record["job"]] = record["attempts"]
        while len(attempts) > MAX_REMEMBERED:
            del attempts[next(iter(attempts))]

    def register(self, endpoint: str, description: str, href: str | None) -> Call:
        """Add the datasource to the hypercat catalogue; ``href`` defaults to ``<endpoint>/<dsid>``."""
        return (
            "POST",
            "/cat",
            job_datasource_item(href or f"{endpoint}/{self.dsid}", self.dsid, description),
        )

    def take(self, max: int, lease: int | None, wait: int) -> Call:
        """Take up to ``max`` queued jobs, waiting up to ``wait`` ms for one."""
        body: dict[str, Any] = {"max": max, "wait": wait}
        if lease is not None:
            body["lease"] = lease
        return "POST", f"{self.base}/take", body

    def accept(self, job: str, lease: int | None) -> Call:
        """Accept one named job."""
        body: dict[str, Any] = {"job": job}
        if lease is not None:
            body["lease"] = lease
        return "POST", f"{self.base}/accept", body

    def report(self, job: str, status: str, fields: dict[str, Any]) -> Call:
        """Report a status, with the attempt this driver was handed; fields that are None are left
        out (an ``attempt`` field overrides the remembered one)."""
        body: dict[str, Any] = {"job": job, "status": status}
        attempt = self._attempts.get(job)
        if attempt is not None:
            body["attempt"] = attempt
        body.update((k, v) for k, v in fields.items() if v is not None)
        return "POST", f"{self.base}/status", body

    def page(self, since: int, filters: dict[str, Any]) -> Call:
        """List the datasource's jobs changed after ``since`` (filters: status, client, limit)."""
        return "GET", f"{self.base}/", {"since": since, **filters}

    def subscription(self) -> Subscription:
        """Subscribe to the datasource's server topic."""
        return f"/sub{self.base}", {}


class WatchCursor:
    """A watch's decisions, without sockets: what to yield, when to catch up, when to give up.

    ``last`` is the seq of the last record yielded; ``stale`` says the live stream
    cannot be trusted until the watch has listed with ``since = last``.
    """

    def __init__(self, since: int, idle: float, timeout: float | None) -> None:
        self.last = since
        self.stale = True  # catch up before trusting the live stream
        self.idle = idle
        self.timeout = timeout
        self._quiet_since = time.monotonic()

    def listed(self, record: Record) -> bool:
        """Whether a record found by catching up is new, and so is to be yielded."""
        if record["seq"] <= self.last:
            return False
        self.last = record["seq"]
        return True

    def notified(self, msg: dict[str, Any]) -> Record | None:
        """The record of an opened notification to yield, or None (seen already, or after a gap)."""
        record: Record = msg["record"]
        if record["seq"] <= self.last:
            return None
        if msg["prev"] != self.last:
            self.stale = True
            return None
        self.last = record["seq"]
        return record

    def connected(self) -> None:
        """The SUB socket (re)connected: anything published meanwhile was lost."""
        self.stale = True

    def quiet(self, seq: int) -> None:
        """Nothing arrived for a while; ``seq`` is the store's last seq on the topic now."""
        self.stale = seq != self.last

    def delivered(self) -> None:
        """The consumer came back for more after a record: the timeout counts from now."""
        self._quiet_since = time.monotonic()

    def wait(self) -> float:
        """Seconds to wait for the next event; raise Timeout when the watch's timeout has run out."""
        wait = self.idle
        if self.timeout is not None:
            wait = min(wait, self._quiet_since + self.timeout - time.monotonic())
            if wait <= 0:
                raise Timeout(f"no change to watch within {self.timeout:g} s")
        return wait


# How a driver waits while the store does not answer: doubling from FIRST_RETRY to MAX_RETRY s.
FIRST_RETRY = 0.1
MAX_RETRY = 5.0


def store_unavailable(exc: BaseException) -> bool:
    """Whether a failed call means the store is away (no reply, or shutting down: 503), so a
    driver should wait and try again rather than stop."""
    return isinstance(exc, Timeout) or (isinstance(exc, RequestFailed) and exc.status == 503)


class Outage:
    """A driver's decisions while its store does not answer, without sockets or sleeping.

    ``failed`` gives the seconds to wait before trying again: doubling from ``first``
    to ``cap``, each with jitter (between half and all of it, so drivers that lost the
    same store do not all come back in step). It gives a line to log on the first
    failure only, and ``answered`` gives one when the store answers again, so an outage
    is logged once however long it lasts. ``clock`` and ``jitter`` are injected for tests.
    """

    def __init__(
        self,
        first: float = FIRST_RETRY,
        cap: float = MAX_RETRY,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.first, self.cap = first, cap
        self._clock, self._jitter = clock, jitter
        self._failures = 0
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """True from a failure until the store answers again."""
        return self._since is not None

    def failed(self, error: ClientError) -> tuple[float, str | None]:
        """Seconds to wait before the next try, and the line to log if this failure starts an outage."""
        delay = min(self.cap, self.first * 2 ** min(self._failures, 32))
        self._failures += 1
        message = None
        if self._since is None:
            self._since = self._clock()
            message = (
                f"the store does not answer ({error.message}); "
                f"trying again every {self.first:g} to {self.cap:g} s until it does"
            )
        return delay * (0.5 + self._jitter() / 2), message

    def answered(self) -> str | None:
        """The store answered: the line to log if that ends an outage."""
        if self._since is None:
            return None
        lasted = self._clock() - self._since
        self._since, self._failures = None, 0
        return f"the store answers again, after {lasted:.1f} s"


class SetupError(Exception):
    """Raise from a handler when the driver itself cannot run jobs (a program that is not
    there, a module that does not import): the job is not at fault, so ``Driver.run`` hands
    it back (``retrying``) and raises this, rather than fail job after job."""


class JobContext:
    """What a :meth:`Driver.run` handler sees of the job it is running."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self._progress: Any = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        # A job handed back after the client asked to cancel it arrives with the request standing.
        if record.get("cancel_requested"):
            self._cancel.set()

    @property
    def id(self) -> str:
        return str(self.record["job"])

    @property
    def request(self) -> Any:
        return self.record["request"]

    @property
    def cancel_requested(self) -> bool:
        """True once the client asked to cancel; the handler decides (raise JobCancelled to stop)."""
        return self._cancel.is_set()

    def progress(self, value: Any) -> None:
        """Report progress; it is sent with the next lease renewal (at once if none is due)."""
        with self._lock:
            self._progress = value

    def _pop_progress(self) -> Any:
        """The progress set since the last call, or None (for the driver's renewal loop)."""
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def _restore_progress(self, progress: Any) -> None:
        """Put back progress that could not be sent, unless newer progress was set meanwhile."""
        with self._lock:
            if self._progress is None:
                self._progress = progress

    def _renewed(self, record: Record) -> None:
        """Take in the record a renewal returned (for the driver's renewal loop)."""
        if record.get("cancel_requested"):
            self._cancel.set()


class JobCancelled(Exception):
    """Raise from a handler to report the job ``cancelled``."""


class RetryJob(Exception):
    """Raise from a handler to hand the job back for another attempt (``retrying``)."""


class ForbidJob(Exception):
    """Raise from a handler to report the job ``forbidden``."""


def handler_outcome(exc: Exception) -> tuple[str, Any]:
    """The status and response a driver reports for a handler that raised ``exc``."""
    if isinstance(exc, JobCancelled):
        return "cancelled", _error_text(exc) if str(exc) else None
    if isinstance(exc, RetryJob):
        return "retrying", _error_text(exc) if str(exc) else None
    if isinstance(exc, SetupError):
        return "retrying", {"error": f"the driver cannot run jobs: {exc}"}
    if isinstance(exc, ForbidJob):
        return "forbidden", {"error": _error_text(exc)}
    return "failed", {"error": _error_text(exc)}


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
