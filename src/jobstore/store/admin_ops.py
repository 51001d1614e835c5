"""Operations on a queue and the store as a whole: queue settings, statistics, the hypercat catalogue.

Plain functions ``(ctx, request, params) -> Outcome``, as the job operations are
(docs/protocol.md, "Scheduling and queue control", "Statistics", "Hypercat").
"""

from __future__ import annotations

from typing import Any

from ..databox import hypercat
from ..protocol import Request
from ..states import QUEUED
from .context import Context
from .engine import Outcome, ok_reply
from .scheduling import Settings, longest_wait, update_settings
from .validation import body_map


def settings_get(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /server/<DSID>/job/settings: the datasource's queue settings."""
    body_map(request)
    ctx.authorise(request)
    return Outcome(ok_reply(request, _settings_wire(ctx, ctx.txn.settings(params[0]))))


def settings_post(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /server/<DSID>/job/settings: change some of the queue settings; answer all."""
    dsid, txn = params[0], ctx.txn
    ctx.authorise(request)
    before = txn.settings(dsid)
    after = update_settings(before, {} if request.body is None else request.body)
    outcome = Outcome(ok_reply(request, _settings_wire(ctx, after)))
    if after != before:
        txn.set_settings(dsid, after)
        if before.paused and not after.paused:
            # Resumed: waiting takes may now get the due jobs.
            by_status = txn.by_status(dsid)
            due = sum(by_status.get(s.value, 0) for s in QUEUED) - txn.delayed(dsid)
            if due > 0:
                outcome.ready[dsid] = due
    return outcome


def _settings_wire(ctx: Context, settings: Settings) -> dict[str, Any]:
    limits = ctx.limits
    return settings.wire(max_attempts=limits.max_attempts, lease=limits.lease_ms)


def ds_stats(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /server/<DSID>/stats: the datasource's counts, queue age and recent activity."""
    dsid, txn, now = params[0], ctx.txn, ctx.now
    activity = ctx.shared.activity
    ctx.authorise(request)
    last_minute = {
        kind: activity.last_minute(dsid, kind, now)
        for kind in ("taken", "finished", "lease_expired")
    }
    body = {
        "dsid": dsid,
        "by_status": txn.by_status(dsid),
        "unfinished": txn.active(dsid),
        "oldest_queued_ms": longest_wait(txn.due_heads(dsid), now),
        "delayed": txn.delayed(dsid),
        "paused": txn.settings(dsid).paused,
        "last_minute": last_minute,
        "lease_expired_since_start": activity.totals.get((dsid, "lease_expired"), 0),
    }
    return Outcome(ok_reply(request, body))


def store_stats(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /stats: the store's counts, data file and transport counters."""
    ctx.authorise(request)
    shared, txn = ctx.shared, ctx.txn
    storage = shared.storage
    body = {
        "datasources": txn.datasources(),
        "records": txn.records(),
        "seq": txn.seq(),
        "lmdb": {
            "used_bytes": storage.used(),
            "map_size": storage.map_size(),
            "max_map_size": storage.max_map_size,
            "fill": round(storage.fill(), 4),
        },
        "journal": storage.journal_stats(),
        "requests_handled": shared.handled,
        **shared.transport,
    }
    return Outcome(ok_reply(request, body))


def cat_get(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """GET /cat: the hypercat catalogue."""
    ctx.authorise(request)
    return Outcome(ok_reply(request, hypercat.catalogue(ctx.txn.catalogue_items())))


def cat_post(ctx: Context, request: Request, params: list[str]) -> Outcome:
    """POST /cat: add or replace a catalogue item."""
    ctx.authorise(request)
    item = hypercat.check_item(request.body)
    items = hypercat.bounded(hypercat.upsert(ctx.txn.catalogue_items(), item))
    ctx.txn.set_catalogue_items(items)
    return Outcome(ok_reply(request, item))
