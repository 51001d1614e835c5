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

from typing import Any, cast


class JobstoreError(Exception):
    """Root of all jobstore errors. ``status`` is the HTTP-style code of the reply."""

    status = 500

    def __init_subclass__(cls, *, status: int | None = None, **kwargs: Any) -> None:
        """``class Conflict(StatusError, status=409)``: a class's status beside its name."""
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status

    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


class StatusError(JobstoreError):
    """An error the store answers with its ``status``: the part the store and the client share."""


class ProtocolError(StatusError, status=400):
    """A frame that is not a well-formed request of either codec.

    ``id`` is the request's id when the frame was readable enough to find it, so
    a pipelining peer can match the error reply to its request.
    """

    id: int | str | None = None


class BadRequest(StatusError, status=400):
    """A well-formed frame whose fields are missing, of the wrong type or out of range."""


class Unauthorized(StatusError, status=401):
    """The request's token is missing, forged, or does not grant this request."""


class Forbidden(StatusError, status=403):
    """The request names a job that belongs to another client."""


class NotFound(StatusError, status=404):
    """No such path, or no such job."""


class MethodNotAllowed(StatusError, status=405):
    """The path exists but not with this method."""


class Conflict(StatusError, status=409):
    """The request contradicts the stored state; ``body`` holds the current record."""


class InvalidTransition(Conflict):
    """The job's status does not allow this event (docs/states.md)."""


class TooLarge(StatusError, status=413):
    """The request frame exceeds the configured size limit."""


class TooMany(StatusError, status=429):
    """A configured limit on outstanding jobs or requests in flight was reached."""


class Unavailable(StatusError, status=503):
    """The store is shutting down or not yet ready."""


class StorageFull(StatusError, status=507):
    """The LMDB map reached its configured ceiling; reads keep working."""


class ClientError(JobstoreError, status=0):
    """Raised by the client libraries, never by the store. ``status`` is the reply's status, or 0."""


class RequestFailed(ClientError):
    """The store answered a request with an error status; ``status``, ``message`` and ``body`` say why.

    What the client raises is of the status's class too (see :func:`request_failed`).
    """

    def __init__(self, status: int, message: str, body: object = None) -> None:
        super().__init__(message, body)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def _reply_class(status_class: type[StatusError]) -> type[RequestFailed]:
    """What a client raises for a reply of ``status_class``'s status: a :class:`RequestFailed`
    that is also a ``status_class`` (``ConflictReply``, say), so ``except Conflict`` catches it."""
    name = f"{status_class.__name__}Reply"
    body = {
        "__doc__": f"{status_class.__doc__} (A {status_class.status} reply, raised by a client.)",
        "__module__": __name__,
    }
    return cast("type[RequestFailed]", type(name, (RequestFailed, status_class), body))


# By the status of a reply (not the classes' ``status``: ClientError's 0 comes first in their MRO).
_REPLIES: dict[int, type[RequestFailed]] = {
    status_class.status: _reply_class(status_class)
    for status_class in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        TooLarge,
        TooMany,
        Unavailable,
        StorageFull,
    )
}


def request_failed(status: int, message: str, body: object = None) -> RequestFailed:
    """The error a client raises for a reply with an error ``status``: a :class:`RequestFailed`
    of the status's class, or a plain one for a status without a class (500, say)."""
    return _REPLIES.get(status, RequestFailed)(status, message, body)


class Timeout(ClientError):
    """No reply arrived in time."""


class ArbiterError(JobstoreError):
    """The Databox arbiter refused or did not answer a call of :mod:`jobstore.databox.arbiter`."""


class ConfigError(JobstoreError, status=0):
    """The store cannot start as configured (missing secret, unreachable arbiter…)."""


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
