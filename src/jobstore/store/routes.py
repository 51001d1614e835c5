"""The routing table: which operation answers each (path, method) the store serves (docs/protocol.md).

:func:`route` is what the batch engine is given; it finds the operation and the
path's parameters of a request, or raises NotFound / MethodNotAllowed.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import MethodNotAllowed, NotFound
from ..protocol import Request
from ..records import RESERVED_DSIDS, check_dsid, check_name
from . import admin_ops, client_ops, function_ops, server_ops
from .engine import Operation, Route

__all__ = ["ROUTES", "route"]

# (path shape, method) -> operation. In a shape, "D" is a datasource id, "N" a name,
# "#" a seq number, and anything else a literal segment.
ROUTES: list[tuple[tuple[str, ...], dict[str, Operation]]] = [
    (("cat",), {"GET": admin_ops.cat_get, "POST": admin_ops.cat_post}),
    (("stats",), {"GET": admin_ops.store_stats}),
    (("server", "D", "stats"), {"GET": admin_ops.ds_stats}),
    (("sub", "server", "D", "job"), {"POST": server_ops.subscribe_server}),
    (("sub", "D", "job"), {"POST": client_ops.subscribe}),
    (("server", "D", "job"), {"GET": server_ops.server_list}),
    (("server", "D", "job", "take"), {"POST": server_ops.take}),
    (("server", "D", "job", "accept"), {"POST": server_ops.accept}),
    (("server", "D", "job", "status"), {"POST": server_ops.report}),
    (("server", "D", "job", "requeue"), {"POST": server_ops.requeue}),
    (
        ("server", "D", "job", "settings"),
        {"GET": admin_ops.settings_get, "POST": admin_ops.settings_post},
    ),
    (("D", "job"), {"POST": client_ops.submit, "GET": client_ops.query}),
    (("D", "job", "cancel"), {"POST": client_ops.cancel}),
    (("D", "job", "batch"), {"POST": client_ops.batch}),
    (("D", "job", "N"), {"GET": client_ops.list_by_path}),
    (("D", "job", "N", "N"), {"GET": client_ops.status_by_path}),
    (("D", "job", "N", "since", "#"), {"GET": client_ops.list_by_path}),
]

# Function calls (docs/databox.md, "Function calls"): GET of a request pattern is an observe, GET of a
# response path a Notify; POSTs are calls and responses.
FUNCTION_ROUTES: dict[tuple[str, str], Operation] = {
    ("request", "GET"): function_ops.observe,
    ("request", "POST"): function_ops.call,
    ("response", "GET"): function_ops.notify,
    ("response", "POST"): function_ops.respond,
}


def route(request: Request) -> Route:
    """Find the operation and the path parameters of a request, or raise NotFound/MethodNotAllowed."""
    path = request.path
    if path.startswith(("/notification/request/", "/notification/response/")):
        return _function_route(request), []
    segments = path[1:-1].split("/") if path.endswith("/") else path[1:].split("/")
    allowed: list[str] = []
    for shape, methods in ROUTES:
        params = _match(shape, segments)
        if params is None:
            continue
        operation = methods.get(request.method)
        if operation is not None:
            return operation, params
        allowed.extend(methods)
    if allowed:
        raise MethodNotAllowed(
            f"{request.method} is not allowed on {path}; use {' or '.join(allowed)}"
        )
    _refuse_reserved(segments)
    raise NotFound(
        f"no such path {path[:200]!r}; see docs/protocol.md for the paths this store serves"
    )


def _function_route(request: Request) -> Operation:
    side = request.path.split("/")[2]
    operation = FUNCTION_ROUTES.get((side, request.method))
    if operation is None:
        sides = " or ".join(m for s, m in FUNCTION_ROUTES if s == side) or "nothing"
        raise MethodNotAllowed(
            f"{request.method} is not allowed on {request.path[:200]}; use {sides}"
        )
    return operation


def _refuse_reserved(segments: list[str]) -> None:
    """Raise BadRequest when the path has a route's shape but a reserved word as its datasource."""
    for shape, _ in ROUTES:
        if len(shape) == len(segments) and all(
            want in "DN#" or want == got for want, got in zip(shape, segments, strict=True)
        ):
            for want, got in zip(shape, segments, strict=True):
                if want == "D":
                    check_dsid(got)


def _match(shape: tuple[str, ...], segments: list[str]) -> list[str] | None:
    if len(shape) != len(segments):
        return None
    pairs = list(zip(shape, segments, strict=True))
    if any(want not in "DN#" and want != got for want, got in pairs):
        return None
    if any(want == "D" and got in RESERVED_DSIDS for want, got in pairs):
        return None
    checks: dict[str, Callable[[str], str]] = {
        "D": check_dsid,
        "N": lambda got: check_name("path segment", got),
        "#": str,
    }
    return [checks[want](got) for want, got in pairs if want in checks]
