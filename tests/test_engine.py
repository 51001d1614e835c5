"""The batch engine composed with a routing table and hooks of a test's own, no Service around it."""

from __future__ import annotations

from pathlib import Path

from jobstore.errors import NotFound
from jobstore.protocol import Reply, Request
from jobstore.protocol.sealed import Change
from jobstore.states import Status
from jobstore.store.context import Context
from jobstore.store.engine import Engine, Hook, Outcome, Route
from jobstore.store.function_ops import FunctionCalls
from jobstore.store.storage import Storage

T0 = 1_700_000_000_000


def _make(ctx: Context, request: Request, params: list[str]) -> Outcome:
    change = ctx.new_job("ds", params[0], "c", None)
    return Outcome(Reply(201, None, id=request.id), [change])


def _route(request: Request) -> Route:
    if not request.path.startswith("/make/"):
        raise NotFound(f"no such path {request.path}")
    return _make, [request.path.removeprefix("/make/")]


def _engine(path: Path, *hooks: Hook) -> Engine:
    storage = Storage(path)
    return Engine(storage, _route, FunctionCalls.load(storage), hooks=hooks)


def test_the_engine_runs_the_operation_its_route_finds_and_commits_what_it_wrote(
    tmp_path: Path,
) -> None:
    engine = _engine(tmp_path)
    _, [made, missing] = engine.handle_batch(
        [Request("POST", "/make/a"), Request("GET", "/elsewhere")], T0
    )
    assert made.reply is not None and made.reply.status == 201
    assert missing.reply is not None and missing.reply.status == 404
    with engine.shared.storage.read() as txn:
        job = txn.get("ds", "a")
    assert job is not None and job.status is Status.SUBMITTED


def test_a_hook_runs_in_every_batch_and_its_changes_come_first(tmp_path: Path) -> None:
    seen: list[int] = []

    def hook(ctx: Context) -> list[Change]:
        seen.append(ctx.now)
        if len(seen) > 1:
            return []
        return [ctx.new_job("ds", "from-hook", "c", None)]

    engine = _engine(tmp_path, hook)
    changes, [outcome] = engine.handle_batch([Request("POST", "/make/b")], T0)
    engine.handle_batch([], T0 + 1)
    assert seen == [T0, T0 + 1]
    assert [c.job.job for c in changes] == ["from-hook"]
    assert [c.job.job for c in outcome.changes] == ["b"]
