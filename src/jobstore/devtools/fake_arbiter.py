"""A fake Databox arbiter for tests and local development (``jobstore fake-arbiter``).

It speaks what the Zest arbiter (me-box/core-arbiter ``src/server.re``) speaks: one Zest frame
per message on a REP socket, a CURVE server when given a secret key, 69 for every success (POST
included). A request's token must be the container manager's key, or the arbiter token that
the container named by uri_host was registered with; anything else gets 129.

``GET /store/secret`` answers any registered container named by uri_host with a new token
secret as text (a UUID v4 per call, as the arbiter makes it, so a restarted store invalidates
the tokens minted for it before). ``POST /token`` ``{target, path, method, caveats}`` mints a
macaroon with the target's current secret when a grant covers the route (equal target and
method; equal path, or a granted path ending in ``*`` that the requested one extends by at
least one character) and some grant of the caller has exactly the requested caveats; a target
that has not fetched its secret yet gets 129. Like the arbiter, the macaroon carries ``path``,
``method``, ``target`` and, for a one-item caveat list, an ``observe`` or ``destination``
caveat; nothing else. A ``client`` caveat (``"client"`` in the body) is jobstore's extension,
minted only by an arbiter made with ``client_caveats=True`` (``--client-caveats``). The CM key
alone may ``POST`` ``/cm/upsert-container-info`` ``{name, type, key}`` and
``/cm/grant-container-permissions`` ``{name, route: {target, path, method}, caveats}``.
docs/databox.md lists where the fake differs.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import signal
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..errors import BadRequest, JobstoreError, Unauthorized
from ..protocol import Reply, Request, zest
from ..store import auth

log = logging.getLogger("jobstore.arbiter")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:4444"
# zestdb's published example pair: anyone can read the secret half, so development only.
EXAMPLE_SECRET_KEY = "EKy(xjAnIfg6AT+OGd?nS1Mi5zZ&b*VXA@WxNLLE"
EXAMPLE_PUBLIC_KEY = "vl6wu0A@XP?}Or/&BR#LSxn>A+}L)p44/W[wXL3<"
DEFAULT_CM_KEY = "secret"  # what lib-go-databox and node-databox send without a key file
CONTAINER_TYPES = ("app", "driver", "store")
_UPSERT = "/cm/upsert-container-info"
_GRANT = "/cm/grant-container-permissions"
_UNDECODED = Request(method="GET", path="/")  # answers a frame too broken to decode
MINTED_CAVEATS = ("observe", "destination")  # the arbiter mints no other requested caveat

Caveats = tuple[tuple[str, str], ...]
CaveatList = Iterable[Mapping[str, str]]
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def path_matches(granted: str, requested: str) -> bool:
    """The arbiter's rule: equal paths, or ``granted`` ends in ``*`` and ``requested`` is
    what precedes the ``*`` followed by at least one more character."""
    if granted.endswith("*"):
        return len(requested) >= len(granted) and requested.startswith(granted[:-1])
    return granted == requested


@dataclass(frozen=True)
class _Grant:
    target: str
    path: str
    method: str
    caveats: Caveats

    def covers(self, target: str, path: str, method: str) -> bool:
        return self.target == target and self.method == method and path_matches(self.path, path)


@dataclass
class _Container:
    type: str
    key: str
    secret: bytes | None = None
    grants: list[_Grant] = field(default_factory=list)


class FakeArbiter:
    """An in-memory arbiter serving the Zest routes from a daemon thread.

    Its methods change the same state as the ``/cm`` routes, so a test may set up either way.
    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        secret_key: str | None = EXAMPLE_SECRET_KEY,
        cm_key: str = DEFAULT_CM_KEY,
        client_caveats: bool = False,
    ) -> None:
        """``client_caveats`` turns on jobstore's extension: a ``client`` caveat in tokens
        whose request names one. The real arbiter never mints it, so it is off by default."""
        if secret_key is not None and len(secret_key) != 40:
            raise ValueError("secret_key must be a 40-character Z85 CURVE secret key, or None")
        self.endpoint = endpoint
        self.secret_key = secret_key
        self.cm_key = cm_key
        self.client_caveats = client_caveats
        self.bound: str | None = None  # the endpoint actually bound, while serving
        self._containers: dict[str, _Container] = {}
        self._lock = threading.Lock()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._thread: threading.Thread | None = None

    @property
    def public_key(self) -> str | None:
        """The Z85 CURVE public key clients need (their ZMQ_PUBLIC_KEY); None when plain."""
        if self.secret_key is None:
            return None
        return zmq.curve_public(self.secret_key.encode()).decode()

    def register_container(self, name: str, arbiter_token: str, type: str = "app") -> None:
        """Record a container and its arbiter token, dropping its grants (as upsert does)."""
        with self._lock:
            self._upsert({"name": name, "type": type, "key": arbiter_token})

    def register_store(self, name: str, arbiter_token: str) -> None:
        """Register a store. Tokens for it are refused until it fetches its secret."""
        self.register_container(name, arbiter_token, "store")

    def secret_of(self, name: str) -> bytes | None:
        """The token secret ``name`` fetched last (tokens are minted with it), or None."""
        with self._lock:
            record = self._containers.get(name)
            return None if record is None else record.secret

    def grant(
        self, name: str, target: str, path: str, method: str, caveats: CaveatList = ()
    ) -> None:
        """Let ``name`` get tokens for ``method path`` on ``target`` (caveats e.g.
        ``[{"observe": "data"}]``); raises Unauthorized for an unregistered ``name``."""
        route = {"target": target, "path": path, "method": method}
        with self._lock:
            self._grant({"name": name, "route": route, "caveats": [dict(c) for c in caveats]})

    def handle(self, frame: bytes) -> bytes:
        """Answer one Zest request frame; touches no socket and never raises."""
        try:
            request = zest.decode_request(frame)
        except JobstoreError as exc:
            return zest.encode_reply(Reply(400, error=exc.message), _UNDECODED)
        try:
            with self._lock:
                payload, fmt = self._route(request)
        except JobstoreError as exc:
            log.info("%s %s: %d %s", request.method, request.path, exc.status, exc.message)
            return zest.encode_reply(Reply(exc.status, error=exc.message), request)
        except Exception:  # a bug here must not end the serving thread
            log.exception("fake arbiter failed on %s %s", request.method, request.path)
            return zest.encode_reply(Reply(500, error="fake arbiter internal error"), request)
        return zest.encode_push(payload, fmt)  # code 69 + content format, as the arbiter answers

    def _route(self, request: Request) -> tuple[bytes, int]:
        is_cm = self._authenticate(request)
        if request.observe is not None:
            raise BadRequest("the fake arbiter serves no observations; send no observe option")
        route = (request.method, request.path)
        if route == ("GET", "/store/secret"):
            return self._store_secret(request.host), zest.FORMAT_TEXT
        if route == ("POST", "/token"):
            return self._token(request.host, _json(request)).encode(), zest.FORMAT_TEXT
        if route in (("POST", _UPSERT), ("POST", _GRANT)):
            if not is_cm:
                raise BadRequest(f"{request.path} is for the container manager: send its key")
            if request.path == _UPSERT:
                return self._upsert(_json(request)).encode(), zest.FORMAT_TEXT
            return json.dumps(self._grant(_json(request))).encode(), zest.FORMAT_JSON
        raise BadRequest(
            f"the arbiter has no route {request.method} {request.path}; it serves "
            f"GET /store/secret, POST /token, POST {_UPSERT} and POST {_GRANT}"
        )

    def _authenticate(self, request: Request) -> bool:
        """True for the container manager, False for a registered container; else 129."""
        token = (request.token or "").encode()
        if hmac.compare_digest(token, self.cm_key.encode()):
            return True
        record = self._containers.get(request.host or "")
        if record is not None and hmac.compare_digest(token, record.key.encode()):
            return False
        raise Unauthorized(
            f"arbiter token not accepted for uri_host {request.host!r}: send the container's "
            "ARBITER_TOKEN as the Zest token and the name it is registered under as uri_host"
        )

    def _store_secret(self, host: str | None) -> bytes:
        # As the arbiter: any registered container gets one, and a new one on every call.
        record = self._containers.get(host or "")
        if record is None:
            raise Unauthorized(f"no container {host!r} is registered; send the store's name")
        record.secret = str(uuid.uuid4()).encode()
        log.info("%s fetched a new token secret", host)  # not the secret: logs never hold one
        return record.secret

    def _token(self, host: str | None, body: dict[str, Any]) -> str:
        caller = self._containers.get(host or "")
        if caller is None:
            raise Unauthorized(f"no container {host!r} is registered to ask for tokens")
        target, path, method = (_text(body, key) for key in ("target", "path", "method"))
        caveats, client = _caveats(body.get("caveats")), body.get("client")
        if client is not None and not isinstance(client, str):
            raise BadRequest(f"field 'client' must be a string, got {client!r:.60}")
        store = self._containers.get(target)
        if store is None:
            raise Unauthorized(f"target {target!r} is not a registered container")
        if store.secret is None:
            raise Unauthorized(
                f"target {target!r} has not fetched its token secret (GET /store/secret) yet; "
                "ask again once the store has started"
            )
        if not any(g.covers(target, path, method) for g in caller.grants):
            raise Unauthorized(f"{host!r} has no grant for {method} {path} on {target!r}")
        # The arbiter compares the requested caveats with those of every grant of the caller,
        # not only the grants covering the route.
        if all(g.caveats != caveats for g in caller.grants):
            granted = " or ".join(json.dumps([dict([p]) for p in g.caveats]) for g in caller.grants)
            raise Unauthorized(
                f"{host!r} may get tokens only with caveats {granted}; "
                "a token without observe serves observe requests too"
            )
        lines = [f"path = {path}", f"method = {method}", f"target = {target}"]
        if len(caveats) == 1 and caveats[0][0] in MINTED_CAVEATS:
            lines.append(f"{caveats[0][0]} = {caveats[0][1]}")
        if client is not None and self.client_caveats:
            lines.append(f"client = {client}")
        elif client is not None:
            log.info("%s asked for a client caveat; not minted (run with --client-caveats)", host)
        return auth.mint(store.secret, lines, location="", identifier="")

    def _upsert(self, body: dict[str, Any]) -> str:
        name, kind, key = (_text(body, k) for k in ("name", "type", "key"))
        if kind not in CONTAINER_TYPES:
            raise BadRequest(f"type must be one of {', '.join(CONTAINER_TYPES)}, got {kind!r:.40}")
        self._containers[name] = _Container(kind, key)  # no secret until it fetches one
        return name

    def _grant(self, body: dict[str, Any]) -> list[dict[str, str]]:
        name, route = _text(body, "name"), body.get("route")
        if not isinstance(route, dict):
            raise BadRequest('a grant needs "route": {"target": ..., "path": ..., "method": ...}')
        target, path, method = (_text(route, key) for key in ("target", "path", "method"))
        grant = _Grant(target, path, method, _caveats(body.get("caveats")))
        record = self._containers.get(name)
        if record is None:
            raise Unauthorized(f"container {name!r} is not registered; upsert it first")
        if grant not in record.grants:
            record.grants.append(grant)
        return [{"target": g.target, "path": g.path, "method": g.method} for g in record.grants]

    def start(self) -> str:
        """Bind and serve in a daemon thread; returns the bound endpoint (the port for ``:*``)."""
        if self._thread is not None:
            raise RuntimeError("this FakeArbiter is already serving")
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = ctx.socket(zmq.REP)
        sock.linger = 0
        if self.secret_key is not None:
            sock.curve_secretkey = self.secret_key.encode()
            sock.curve_publickey = zmq.curve_public(self.secret_key.encode())
            sock.curve_server = True
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            ctx.destroy(linger=0)
            raise
        self.bound = bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ctx = ctx
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()
        return bound

    def _serve(self, sock: zmq.Socket[bytes]) -> None:
        try:
            while True:
                frames = sock.recv_multipart()
                if len(frames) == 1:
                    sock.send(self.handle(frames[0]))
                else:
                    error = Reply(400, error=f"an arbiter request is one frame, not {len(frames)}")
                    sock.send(zest.encode_reply(error, _UNDECODED))
        except zmq.ContextTerminated:
            pass  # stop() terminated the context
        finally:
            sock.close(linger=0)

    def stop(self) -> None:
        """Stop serving and join the thread; does nothing when not serving."""
        if self._ctx is None or self._thread is None:
            return
        self._ctx.term()  # the serving thread's recv raises ContextTerminated, closing its socket
        self._thread.join()
        self._ctx = self._thread = self.bound = None

    def __enter__(self) -> FakeArbiter:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _json(request: Request) -> dict[str, Any]:
    body = request.body
    if isinstance(body, (str, bytes)):  # databox clients send JSON as text (format 0) too
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(f"{request.path}: the payload is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{request.path} wants a JSON object, got {type(body).__name__}")
    return body


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def _caveats(value: Any) -> Caveats:
    """A JSON caveat list, ``[{"observe": "data"}]``, as pairs; missing or null is none."""
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(c, dict) for c in value):
        pairs = tuple(pair for c in value for pair in c.items())
        if all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            return pairs
    raise BadRequest(f'caveats must be a list of {{"key": "value"}} objects, not {value!r:.60}')


def _pair(spec: str, flag: str) -> tuple[str, str]:
    name, _, token = spec.partition("=")
    if not name or not token:
        raise SystemExit(f"jobstore: {flag} wants NAME=ARBITER_TOKEN, got {spec!r}")
    return name, token


def run_cli(args: argparse.Namespace) -> int:
    """The ``fake-arbiter`` command (flags: :func:`jobstore.cli.admin.add_fake_arbiter`): set up
    from the flags, serve until SIGINT or SIGTERM."""
    key = EXAMPLE_SECRET_KEY
    if args.secret_key_file:
        try:
            key = Path(args.secret_key_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"jobstore: cannot read {args.secret_key_file}: {exc}") from None
    else:
        log.warning("CURVE with zestdb's published example key pair: development only")
    if len(key) != 40:
        raise SystemExit("jobstore: the CURVE secret key must be 40 characters of Z85")
    endpoint = args.endpoint or DEFAULT_ENDPOINT
    arbiter = FakeArbiter(endpoint, secret_key=key, client_caveats=args.client_caveats)
    for name, token in (_pair(spec, "--store") for spec in args.store):
        arbiter.register_store(name, token)
        # Not the secret itself: logs never hold secrets (docs/operations.md).
        log.info("store %s registered; its token secret is served as GET /store/secret", name)
    for spec in args.container:
        arbiter.register_container(*_pair(spec, "--container"))
    for spec in args.grant:
        parts = spec.split(":", 3)
        if len(parts) != 4 or not all(parts):
            raise SystemExit(f"jobstore: --grant wants NAME:TARGET:METHOD:PATH, got {spec!r}")
        try:
            arbiter.grant(parts[0], parts[1], parts[3], parts[2].upper())
        except JobstoreError as exc:
            raise SystemExit(f"jobstore: --grant {spec}: {exc.message}") from None
    stopping = threading.Event()
    previous = [(s, signal.signal(s, lambda *_: stopping.set())) for s in _SIGNALS]
    try:
        log.info("fake arbiter on %s, public key %s", arbiter.start(), arbiter.public_key)
        log.info("container manager key %r", arbiter.cm_key)
        stopping.wait()
    finally:
        arbiter.stop()
        for sig, handler in previous:
            signal.signal(sig, handler)
    return 0
