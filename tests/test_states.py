from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstore.errors import InvalidTransition
from jobstore.records import Job
from jobstore.states import (
    EFFECTS,
    REPORTS,
    TERMINAL,
    TRANSITIONS,
    UNSET,
    Count,
    Event,
    Field,
    Lease,
    Status,
    Unset,
    apply,
    follow,
    page,
)

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


def test_every_event_has_its_effects() -> None:
    assert set(EFFECTS) == set(Event)


def test_only_an_accepted_job_holds_a_lease() -> None:
    for (source, event), target in TRANSITIONS.items():
        lease = EFFECTS[event].lease
        if lease in (Lease.GRANT, Lease.RENEW):
            assert target is S.ACCEPTED, (source, event)
        elif lease is Lease.KEEP:
            # kept by an accepted job, or by a queued one that holds none (see the next test)
            assert target is S.ACCEPTED or source.queued, (source, event)
        else:
            assert target is not S.ACCEPTED, (source, event)


def test_every_transition_into_a_queued_status_clears_the_lease() -> None:
    for (_, event), target in TRANSITIONS.items():
        if target.queued:
            assert EFFECTS[event].lease is Lease.CLEAR, event


def test_an_event_that_sets_a_field_needs_its_value() -> None:
    job = Job("ds", "j", "c", None, S.FAILED, 1, 1, 1)
    with pytest.raises(ValueError, match="not_before"):
        follow(job, E.REQUEUE, now=2, clock=0, history_length=20)


PLAIN = st.none() | st.integers() | st.text(max_size=5)
MAYBE = st.just(UNSET) | PLAIN


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    status = draw(st.sampled_from(list(Status)))
    return Job(
        "ds",
        "j",
        "c",
        None,
        status,
        created=0,
        updated=draw(st.integers(0, 100)),
        seq=1,
        attempts=draw(st.integers(0, 5)),
        cancel_requested=draw(st.booleans()),
        response=draw(PLAIN),
        progress=draw(PLAIN),
        lease_until=draw(st.integers(0, 100)) if status is S.ACCEPTED else 0,
        history=((status.value, 0),),
        lease_ms=draw(st.integers(0, 100)) if status is S.ACCEPTED else 0,
        not_before=draw(st.none() | st.integers(0, 100)),
        requeued=draw(st.integers(0, 3)),
    )


def _expected(mode: Field, old: object, given: object) -> object:
    if mode is Field.KEEP or given is UNSET:
        return old
    return given


@given(
    jobs(),
    st.sampled_from(list(Event)),
    st.integers(0, 200),
    st.integers(0, 1000),
    st.integers(0, 100),
    st.just(UNSET) | st.none() | st.integers(0, 100),
    MAYBE,
    MAYBE,
)
def test_an_event_changes_the_fields_its_effects_say_and_no_other(
    job: Job,
    event: Event,
    now: int,
    clock: int,
    lease: int,
    not_before: int | Unset | None,
    response: object,
    progress: object,
) -> None:
    target = EXPECTED.get((job.status, event))
    effects = EFFECTS[event]
    if target is None:
        with pytest.raises(InvalidTransition) as raised:
            follow(job, event, now=now, clock=clock, history_length=3)
        assert raised.value.body == job.wire()
        return
    if not_before is UNSET and effects.not_before is Field.SET:
        not_before = None
    if response is UNSET and effects.response is Field.SET:
        response = {"error": "x"}
    changed = follow(
        job,
        event,
        now=now,
        clock=clock,
        history_length=3,
        lease=lease,
        not_before=not_before,
        response=response,
        progress=progress,
    )
    new = job.evolve(**changed)
    assert new.status is target
    assert new.updated == max(now, job.updated)
    if target is job.status:
        assert new.history == job.history
    else:
        assert new.history == (*job.history, (target.value, new.updated))[-3:]
    expected_lease = {
        Lease.GRANT: (clock + lease if lease else 0, lease),
        Lease.RENEW: (clock + lease, job.lease_ms),
        Lease.KEEP: (job.lease_until, job.lease_ms),
        Lease.CLEAR: (0, 0),
    }[effects.lease]
    assert (new.lease_until, new.lease_ms) == expected_lease
    counts = {Count.KEEP: lambda n: n, Count.ADD: lambda n: n + 1, Count.RESET: lambda n: 0}
    assert new.attempts == counts[effects.attempts](job.attempts)
    assert new.requeued == counts[effects.requeued](job.requeued)
    assert new.cancel_requested == (effects.cancel_requested or job.cancel_requested)
    assert new.not_before == _expected(effects.not_before, job.not_before, not_before)
    assert new.response == _expected(effects.response, job.response, response)
    assert new.progress == _expected(effects.progress, job.progress, progress)
    untouched = ("dsid", "job", "client", "request", "created", "seq", "priority", "expires")
    assert all(getattr(new, name) == getattr(job, name) for name in untouched)
