"""Every error jobstore raises, each knowing the status code it is answered with.

One root, :class:`JobstoreError`, and beneath it:

- the status classes (:class:`BadRequest` … :class:`StorageFull`, under
  :class:`StatusError`): what a reply's status means. The store raises them and
  answers with their ``status`` and message, so the message must tell a developer
  what was wrong and what to do about it;
- :class:`ClientError`: what only the client libraries raise. A reply with an error
  status raises :class:`RequestFailed` of the status's class (a
  :class:`RequestFailed` that is also a :class:`Conflict`, say), so ``except
  Conflict`` reads the same in the store and in an app;
- the handler signals (:class:`JobCancelled`, :class:`RetryJob`, :class:`ForbidJob`,
  :class:`SetupError`): not errors of jobstore but what a driver's handler raises to
  say how its job ended.
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


class StatusError(JobstoreError):
    """An error the store answers with its ``status``: the part the store and the client share."""


class ProtocolError(StatusError):
    """A frame that is not a well-formed request of either codec.

    ``id`` is the request's id when the frame was readable enough to find it, so
    a pipelining peer can match the error reply to its request.
    """

    status = 400
    id: int | str | None = None


class BadRequest(StatusError):
    """A well-formed frame whose fields are missing, of the wrong type or out of range."""

    status = 400


class Unauthorized(StatusError):
    """The request's token is missing, forged, or does not grant this request."""

    status = 401


class Forbidden(StatusError):
    """The request names a job that belongs to another client."""

    status = 403


class NotFound(StatusError):
    """No such path, or no such job."""

    status = 404


class MethodNotAllowed(StatusError):
    """The path exists but not with this method."""

    status = 405


class Conflict(StatusError):
    """The request contradicts the stored state; ``body`` holds the current record."""

    status = 409


class InvalidTransition(Conflict):
    """The job's status does not allow this event (docs/states.md)."""


class TooLarge(StatusError):
    """The request frame exceeds the configured size limit."""

    status = 413


class TooMany(StatusError):
    """A configured limit on outstanding jobs or requests in flight was reached."""

    status = 429


class Unavailable(StatusError):
    """The store is shutting down or not yet ready."""

    status = 503


class StorageFull(StatusError):
    """The LMDB map reached its configured ceiling; reads keep working."""

    status = 507


class ClientError(JobstoreError):
    """Raised by the client libraries, never by the store. ``status`` is the reply's status, or 0."""

    status = 0


class RequestFailed(ClientError):
    """The store answered a request with an error status; ``status``, ``message`` and ``body`` say why.

    What the client raises is of the status's class too (see :func:`request_failed`).
    """

    def __init__(self, status: int, message: str, body: object = None) -> None:
        super().__init__(message, body)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class BadRequestReply(RequestFailed, BadRequest):
    """A 400 reply: the request was malformed or out of range."""


class UnauthorizedReply(RequestFailed, Unauthorized):
    """A 401 reply: the token is missing, forged, or does not grant the request."""


class ForbiddenReply(RequestFailed, Forbidden):
    """A 403 reply: the job belongs to another client."""


class NotFoundReply(RequestFailed, NotFound):
    """A 404 reply: no such path, or no such job."""


class MethodNotAllowedReply(RequestFailed, MethodNotAllowed):
    """A 405 reply: the path exists but not with this method."""


class ConflictReply(RequestFailed, Conflict):
    """A 409 reply: the request contradicts the stored state; ``body`` holds the current record."""


class TooLargeReply(RequestFailed, TooLarge):
    """A 413 reply: the request frame exceeds the store's size limit."""


class TooManyReply(RequestFailed, TooMany):
    """A 429 reply: a limit on outstanding jobs or requests in flight was reached."""


class UnavailableReply(RequestFailed, Unavailable):
    """A 503 reply: the store is shutting down or not yet ready."""


class StorageFullReply(RequestFailed, StorageFull):
    """A 507 reply: the store's storage is full; reads keep working."""


# By the status of a reply (not the classes' ``status``: ClientError's 0 comes first in their MRO).
_REPLIES: dict[int, type[RequestFailed]] = {
    400: BadRequestReply,
    401: UnauthorizedReply,
    403: ForbiddenReply,
    404: NotFoundReply,
    405: MethodNotAllowedReply,
    409: ConflictReply,
    413: TooLargeReply,
    429: TooManyReply,
    503: UnavailableReply,
    507: StorageFullReply,
}


def request_failed(status: int, message: str, body: object = None) -> RequestFailed:
    """The error a client raises for a reply with an error ``status``: a :class:`RequestFailed`
    of the status's class, or a plain one for a status without a class (500, say)."""
    return _REPLIES.get(status, RequestFailed)(status, message, body)


class Timeout(ClientError):
    """No reply arrived in time."""


class ArbiterError(JobstoreError):
    """The Databox arbiter refused or did not answer a call of :mod:`jobstore.databox.arbiter`."""


class ConfigError(JobstoreError):
    """The store cannot start as configured (missing secret, unreachable arbiter…)."""

    status = 0


# Handler signals: raised by a driver's handler to say how its job ended, caught by Driver.run.


class JobCancelled(Exception):
    """Raise from a handler to report the job ``cancelled``."""


class RetryJob(Exception):
    """Raise from a handler to hand the job back for another attempt (``retrying``)."""


class ForbidJob(Exception):
    """Raise from a handler to report the job ``forbidden``."""


class SetupError(Exception):
    """Raise from a handler when the driver itself cannot run jobs (a program that is not
    there, a module that does not import): the job is not at fault, so ``Driver.run`` hands
    it back (``retrying``) and raises this, rather than fail job after job."""
