"""The requests of the client and server APIs, built once for both flavours: (method, path, body)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ..databox.hypercat import job_datasource_item
from ..errors import ClientError

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


@runtime_checkable
class RefreshableToken(Protocol):
    """A token function that caches macaroons and can fetch fresh ones
    (:class:`~jobstore.databox.ArbiterTokens`).

    After the store refuses (401) a macaroon it gave, a client calls :meth:`forget` and sends
    the request once more with what the function gives next.
    """

    def __call__(self, method: str, path: str) -> str: ...

    def forget(self, method: str, path: str, token: str) -> None:
        """Drop ``token``, refused for ``method path``, if it is still the cached one."""


def token_for(token: Token, method: str, path: str) -> str | None:
    """The macaroon to send with a request: the token itself, or what the token function gives."""
    return token(method, path) if callable(token) else token


def given(**fields: Any) -> dict[str, Any]:
    """A request body of the fields that are not None: an option left out takes the store's default."""
    return {k: v for k, v in fields.items() if v is not None}


class ClientRequests:
    """The requests of the client API (docs/protocol.md, "Client API") for one client of one datasource."""

    def __init__(self, dsid: str, client: str) -> None:
        self.dsid = dsid
        self.client = client

    def submit(self, request: Any, job: str | None, options: dict[str, Any] | None = None) -> Call:
        """Submit a job, with a fresh GUID unless ``job`` is given; ``options`` are its scheduling
        (priority, delay, not_before, expires), those None left out."""
        return (
            "POST",
            f"/{self.dsid}/job/",
            {**self.item(request, job, options), "client": self.client},
        )

    def item(self, request: Any, job: str | None, options: dict[str, Any] | None = None) -> Record:
        """One job of a submit or a batch: a fresh GUID unless ``job`` is given."""
        return {"job": job or uuid.uuid4().hex, "request": request} | given(**(options or {}))

    def batch(self, items: list[Record]) -> Call:
        """Submit jobs (as :meth:`item` builds them) in one request and one commit."""
        return "POST", f"/{self.dsid}/job/batch", {"client": self.client, "jobs": items}

    def status(self, job: str) -> Call:
        """Read one job's record."""
        return "GET", f"/{self.dsid}/job/{self.client}/{job}", None

    def cancel(self, job: str) -> Call:
        """Cancel one job."""
        return "POST", f"/{self.dsid}/job/cancel", {"job": job, "client": self.client}

    def page(self, since: int, limit: int | None) -> Call:
        """List the client's jobs changed after ``since``."""
        return "GET", f"/{self.dsid}/job/", given(client=self.client, since=since, limit=limit)

    def subscription(self) -> Subscription:
        """Subscribe to the client's topic."""
        return f"/sub/{self.dsid}/job", {"client": self.client}


class DriverRequests:
    """The requests of the server API (docs/protocol.md, "Server API") for one datasource."""

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
        return "POST", f"{self.base}/take", given(max=max, wait=wait, lease=lease)

    def accept(self, job: str, lease: int | None) -> Call:
        """Accept one named job."""
        return "POST", f"{self.base}/accept", given(job=job, lease=lease)

    def report(self, job: str, status: str, fields: dict[str, Any]) -> Call:
        """Report a status, with the attempt this driver was handed; fields that are None are left
        out (an ``attempt`` field overrides the remembered one)."""
        body = given(job=job, status=status, attempt=self._attempts.get(job)) | given(**fields)
        return "POST", f"{self.base}/status", body

    def requeue(self, job: str, delay: int | None) -> Call:
        """Send a failed job back to the queue, after ``delay`` ms when given."""
        return "POST", f"{self.base}/requeue", given(job=job, delay=delay)

    def settings(self, changes: dict[str, Any] | None = None) -> Call:
        """Read the datasource's queue settings, or change some (those None left out)."""
        if changes is None:
            return "GET", f"{self.base}/settings", None
        return "POST", f"{self.base}/settings", given(**changes)

    def page(self, since: int, filters: dict[str, Any]) -> Call:
        """List the datasource's jobs changed after ``since`` (filters: status, client, limit)."""
        return "GET", f"{self.base}/", {"since": since, **filters}

    def subscription(self) -> Subscription:
        """Subscribe to the datasource's server topic."""
        return f"/sub{self.base}", {}
