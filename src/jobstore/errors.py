"""Every error jobstore raises, each knowing the status code it is answered with.

One root, :class:`JobstoreError`; the service turns any of them into a reply with
``status`` and ``error``, so the message must tell a developer what was wrong and
what to do about it.
"""

from __future__ import annotations

from typing import Any


class JobstoreError(Exception):
    """Root of all jobstore errors. ``status`` is the HTTP-style code of the reply."""

    status = 500

    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


class ProtocolError(JobstoreError):
    """A frame that is not a well-formed request of either codec.

    ``id`` is the request's id when the frame was readable enough to find it, so
    a pipelining peer can match the error reply to its request.
    """

    status = 400
    id: int | str | None = None


class BadRequest(JobstoreError):
    """A well-formed frame whose fields are missing, of the wrong type or out of range."""

    status = 400


class Unauthorized(JobstoreError):
    """The request's token is missing, forged, or does not grant this request."""

    status = 401


class Forbidden(JobstoreError):
    """The request names a job that belongs to another client."""

    status = 403


class NotFound(JobstoreError):
    """No such path, or no such job."""

    status = 404


class MethodNotAllowed(JobstoreError):
    """The path exists but not with this method."""

    status = 405


class Conflict(JobstoreError):
    """The request contradicts the stored state; ``body`` holds the current record."""

    status = 409


class InvalidTransition(Conflict):
    """The job's status does not allow this event (contract section 3)."""


class TooLarge(JobstoreError):
    """The request frame exceeds the configured size limit."""

    status = 413


class TooMany(JobstoreError):
    """A configured limit on outstanding jobs or requests in flight was reached."""

    status = 429


class Unavailable(JobstoreError):
    """The store is shutting down or not yet ready."""

    status = 503


class StorageFull(JobstoreError):
    """The LMDB map reached its configured ceiling; reads keep working."""

    status = 507


class ClientError(JobstoreError):
    """Raised by the client libraries. ``status`` is the store's reply status, or 0."""

    status = 0


class RequestFailed(ClientError):
    """The store answered a request with an error status; ``status``, ``message`` and ``body`` say why."""

    def __init__(self, status: int, message: str, body: object = None) -> None:
        super().__init__(message, body)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class Timeout(ClientError):
    """No reply arrived in time."""


class ArbiterError(JobstoreError):
    """The Databox arbiter refused or did not answer a call of :mod:`jobstore.databox.arbiter`."""


class ConfigError(JobstoreError):
    """The store cannot start as configured (missing secret, unreachable arbiter…)."""

    status = 0
