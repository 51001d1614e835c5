"""jobstore.errors: the status classes, and what a client raises for a reply of each status."""

from __future__ import annotations

import pytest

from jobstore import errors
from jobstore.errors import (
    ClientError,
    InvalidTransition,
    ProtocolError,
    RequestFailed,
    StatusError,
    request_failed,
)

STATUS_CLASSES = [
    (errors.BadRequest, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.MethodNotAllowed, 405),
    (errors.Conflict, 409),
    (errors.TooLarge, 413),
    (errors.TooMany, 429),
    (errors.Unavailable, 503),
    (errors.StorageFull, 507),
]


@pytest.mark.parametrize(("status_class", "status"), STATUS_CLASSES)
def test_a_reply_raises_a_request_failed_of_its_status_class(
    status_class: type[StatusError], status: int
) -> None:
    assert status_class.status == status
    raised = request_failed(status, "what was wrong", {"job": "j"})
    assert isinstance(raised, status_class) and isinstance(raised, RequestFailed)
    assert isinstance(raised, ClientError)
    assert (raised.status, raised.message, raised.body) == (status, "what was wrong", {"job": "j"})
    assert str(raised) == f"{status}: what was wrong"
    assert type(raised).__name__ == f"{status_class.__name__}Reply"


def test_each_status_has_one_reply_class_and_no_other_status_class() -> None:
    raised = request_failed(409, "x")
    others = [cls for cls, _ in STATUS_CLASSES if cls is not errors.Conflict]
    assert not isinstance(raised, tuple(others))
    assert not isinstance(raised, InvalidTransition)


def test_a_status_without_a_class_raises_a_plain_request_failed() -> None:
    raised = request_failed(500, "the store failed")
    assert type(raised) is RequestFailed and raised.status == 500


def test_subclasses_keep_their_parents_status_unless_they_name_one() -> None:
    assert InvalidTransition.status == 409 and ProtocolError.status == 400
    assert StatusError.status == 500 and ClientError.status == 0
