"""A listing page and a take's reply are capped in bytes as well as in jobs: large records come
back over several pages, each ending at the cap (plus the record that reached it), and ``next``
walks them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

from jobstore.store.operations import Limits

from .test_service import Harness

CAP = 10_000
BIG = "x" * 3000  # a request of ~3 kB: a few records fill a page


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "data", Limits(page_bytes=CAP))


def size(record: dict[str, Any]) -> int:
    return len(cbor2.dumps(record))


def pages(h: Harness, path: str, body: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following ``next`` from 0 until it is null."""
    out: list[list[dict[str, Any]]] = []
    since: int | None = 0
    while since is not None:
        page = h.ok("GET", path, {**body, "since": since})
        out.append(page["jobs"])
        since = page["next"]
    return out


def submit_many(h: Harness, n: int, client: str = "c1", request: Any = BIG) -> list[str]:
    ids = [f"{client}-{i:03}" for i in range(n)]
    for job in ids:
        h.submit(job=job, client=client, request=request)
    return ids


def test_a_client_listing_past_the_byte_cap_comes_in_pages_that_end_at_the_cap(h: Harness) -> None:
    ids = submit_many(h, 20)
    listed = pages(h, "/ds/job/", {"client": "c1", "limit": 1000})
    assert len(listed) > 1
    for page in listed:
        assert sum(size(r) for r in page[:-1]) < CAP  # the last record is the one that reached it
    assert [r["job"] for page in listed for r in page] == ids


def test_a_server_listing_past_the_byte_cap_comes_in_pages_that_end_at_the_cap(
    h: Harness,
) -> None:
    ids = submit_many(h, 10, "c1") + submit_many(h, 10, "c2")
    listed = pages(h, "/server/ds/job/", {"limit": 1000})
    assert len(listed) > 1
    for page in listed:
        assert sum(size(r) for r in page[:-1]) < CAP
    assert sorted(r["job"] for page in listed for r in page) == sorted(ids)
    assert sum(len(page) for page in listed) == len(ids)


def test_a_record_larger_than_the_cap_comes_alone_and_the_listing_goes_on(h: Harness) -> None:
    ids = submit_many(h, 3, request="y" * (2 * CAP))
    listed = pages(h, "/ds/job/", {"client": "c1"})
    assert [[r["job"] for r in page] for page in listed] == [[job] for job in ids]


def test_jobs_left_out_by_the_status_filter_do_not_count_toward_the_cap(h: Harness) -> None:
    submit_many(h, 20)
    h.submit(job="small", request="s")
    h.ok("POST", "/ds/job/cancel", {"job": "small", "client": "c1"})
    page = h.ok("GET", "/server/ds/job/", {"status": "cancelled"})
    assert [r["job"] for r in page["jobs"]] == ["small"] and page["next"] is None


def test_a_listing_by_path_is_capped_too(h: Harness) -> None:
    ids = submit_many(h, 20)
    page = h.ok("GET", "/ds/job/c1")
    assert 0 < len(page["jobs"]) < len(ids) and page["next"] == page["jobs"][-1]["seq"]
    rest = h.ok("GET", f"/ds/job/c1/since/{page['next']}")
    assert rest["jobs"][0]["job"] == ids[len(page["jobs"])]


def test_a_take_stops_handing_out_jobs_once_their_records_reach_the_cap(h: Harness) -> None:
    ids = submit_many(h, 10)
    replies = []
    while taken := h.take(max=100):
        replies.append(taken)
        assert sum(size(r) for r in taken[:-1]) < CAP
    assert len(replies) > 1
    assert [r["job"] for taken in replies for r in taken] == ids


def test_a_batch_resubmitting_large_records_leaves_their_payloads_out_past_the_cap(
    h: Harness,
) -> None:
    ids = submit_many(h, 20)
    items = [{"job": job, "request": BIG} for job in ids] + [{"job": "new", "request": BIG}]
    results = h.ok("POST", "/ds/job/batch", {"client": "c1", "jobs": items})["results"]
    full = [r for r in results if not r.get("truncated")]
    short = [r for r in results if r.get("truncated")]
    assert short and sum(size(r) for r in full[:-2]) < CAP  # the last resubmit and the new job
    assert [r["job"] for r in results] == [*ids, "new"]  # one result per item, in order
    assert all(set(r) & {"request", "response", "progress"} == set() for r in short)
    assert all(r["status"] == "submitted" and r["seq"] > 0 for r in short)
    assert results[-1]["request"] == BIG  # a new job's record is whole: its frame bounds it
