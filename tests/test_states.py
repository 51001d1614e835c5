from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstore.errors import InvalidTransition
from jobstore.states import REPORTS, TERMINAL, TRANSITIONS, Event, Status, apply, page

S, E = Status, Event

# Contract section 3, written out independently of the table under test.
EXPECTED = {
    (S.SUBMITTED, E.TAKE): S.ACCEPTED,
    (S.RETRYING, E.TAKE): S.ACCEPTED,
    (S.SUBMITTED, E.CLIENT_CANCEL): S.CANCELLED,
    (S.RETRYING, E.CLIENT_CANCEL): S.CANCELLED,
    (S.ACCEPTED, E.CLIENT_CANCEL): S.ACCEPTED,
    (S.ACCEPTED, E.PROGRESS): S.ACCEPTED,
    (S.ACCEPTED, E.REPORT_COMPLETE): S.COMPLETE,
    (S.ACCEPTED, E.REPORT_CANCELLED): S.CANCELLED,
    (S.ACCEPTED, E.REPORT_RETRYING): S.RETRYING,
    (S.ACCEPTED, E.LEASE_EXPIRED): S.RETRYING,
    (S.ACCEPTED, E.LEASE_EXHAUSTED): S.FAILED,
    (S.SUBMITTED, E.EXPIRED): S.FAILED,
    (S.RETRYING, E.EXPIRED): S.FAILED,
    (S.FAILED, E.REQUEUE): S.RETRYING,
    **{(s, E.REPORT_FORBIDDEN): S.FORBIDDEN for s in (S.SUBMITTED, S.RETRYING, S.ACCEPTED)},
    **{(s, E.REPORT_FAILED): S.FAILED for s in (S.SUBMITTED, S.RETRYING, S.ACCEPTED)},
}


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("event", list(Event))
def test_every_status_event_pair_follows_the_contract(status: Status, event: Event) -> None:
    expected = EXPECTED.get((status, event))
    if expected is None:
        with pytest.raises(InvalidTransition):
            apply(status, event)
    else:
        assert apply(status, event) is expected


@given(st.sampled_from(sorted(TERMINAL)), st.sampled_from(list(Event)))
def test_a_terminal_status_never_changes_but_by_a_requeue_of_a_failed_job(
    status: Status, event: Event
) -> None:
    if (status, event) == (S.FAILED, E.REQUEUE):
        assert apply(status, event) is S.RETRYING
        return
    with pytest.raises(InvalidTransition):
        apply(status, event)


def test_nothing_leads_back_to_submitted() -> None:
    assert Status.SUBMITTED not in TRANSITIONS.values()


def test_every_server_report_except_submitted_has_an_event() -> None:
    assert set(REPORTS) == set(Status) - {Status.SUBMITTED}


def test_docs_state_page_is_generated_from_the_table() -> None:
    committed = (Path(__file__).parent.parent / "docs" / "states.md").read_text()
    assert committed == page(), "docs/states.md is stale: run make docs"
