"""The ZeroMQ adapter: request ROUTER, observe ROUTER, notify PUB around a :class:`Service`.

The loop only does recv -> decode -> handle (one batch, one commit) -> encode ->
send -> publish. Everything it publishes was committed first.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import zmq

from .engine import Outcome, Wait, error_reply
from .errors import JobstoreError, ProtocolError, TooLarge, TooMany
from .notify import TOPIC_LENGTH, Change
from .protocol import Reply, Request, cbor, zest
from .service import Service

log = logging.getLogger(__name__)

DEFAULT_REQUEST = "tcp://0.0.0.0:5555"
DEFAULT_OBSERVE = "tcp://0.0.0.0:5556"
DEFAULT_NOTIFY = "tcp://0.0.0.0:5557"
ZEST_CODES = frozenset({0x01, 0x02, 0x04})
TICK_MS = 200  # longest sleep, so a signal or stop() is noticed promptly
INTERNAL = (
    "internal error in the store while answering this request; it has been logged, please "
    "report it (the store goes on serving)"
)
_MORE = zmq.SNDMORE | zmq.NOBLOCK


@dataclass
class ServerConfig:
    """Where to listen and how; see ``jobstore serve --help``."""

    request_endpoint: str = DEFAULT_REQUEST
    observe_endpoint: str = DEFAULT_OBSERVE
    notify_endpoint: str = DEFAULT_NOTIFY
    secret_key: bytes | None = None
    max_batch: int = 512
    max_frame: int = 1 << 20
    max_inflight_per_peer: int = 1000
    send_hwm: int = 10_000


@dataclass
class _Observer:
    ident: bytes
    dsid: str
    client: str | None
    expires: int | None


@dataclass
class _Pending:
    """A request on its way through the batch, with the codec that must answer it."""

    envelope: list[bytes]
    request: Request
    zest: bool
    deadline: int | None = None  # set once a take has waited: it keeps its first deadline


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Server:
    """Binds the three sockets and serves a :class:`Service` until :meth:`stop`."""

    def __init__(self, service: Service, config: ServerConfig | None = None) -> None:
        self.service = service
        self.config = config or ServerConfig()
        self.sealer = service.sealer  # the same topics and keys the subscribe replies hand out
        self.ctx = zmq.Context()
        self.public_key = b""
        self.request = self._socket(zmq.ROUTER, self.config.request_endpoint)
        self.observe = self._socket(zmq.ROUTER, self.config.observe_endpoint)
        # XPUB: it tells which topics have subscribers, so nobody's changes are sealed for nothing.
        self.notify = self._socket(zmq.XPUB, self.config.notify_endpoint)
        self._subscribed: set[bytes] = set()  # whole topics
        self._prefixes: set[bytes] = set()  # shorter subscriptions (b"" is everything)
        self.endpoints = {
            name: sock.getsockopt_string(zmq.LAST_ENDPOINT)
            for name, sock in (
                ("request", self.request),
                ("observe", self.observe),
                ("notify", self.notify),
            )
        }
        self._stop = threading.Event()
        self._parked: dict[str, list[_Pending]] = defaultdict(list)
        self._observers: dict[bytes, _Observer] = {}
        self.served = 0
        self.dropped = 0  # replies and pushes to peers that had gone or stopped reading

    def _socket(self, kind: int, endpoint: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.linger = 1000
        sock.sndhwm = self.config.send_hwm
        if kind == zmq.ROUTER:
            # Report unroutable and full peers (counted as dropped) instead of dropping silently.
            sock.router_mandatory = True
        secret = self.config.secret_key
        if secret is not None:
            sock.curve_secretkey = secret
            sock.curve_publickey = self.public_key = zmq.curve_public(secret)
            sock.curve_server = True
        sock.bind(endpoint)
        return sock

    def stop(self) -> None:
        """Ask the loop to finish what it has received and return; safe from any thread."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def serve(self) -> None:
        """Serve until :meth:`stop`, then answer what is pending, close sockets and storage."""
        poller = zmq.Poller()
        poller.register(self.request, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    timeout = self._timeout()
                    if timeout and not poller.poll(timeout):
                        self._run_batch([], now_ms())
                        continue
                    self._run_batch(self._receive(), now_ms())
                except Exception:  # the last net: the stages below answer their own failures
                    log.exception("unexpected error in the serve loop; serving on")
            self._shutdown()
        finally:
            for sock in (self.request, self.observe, self.notify):
                sock.close()
            self.ctx.term()

    def _timeout(self) -> int:
        deadlines = [p.deadline or 0 for queue in self._parked.values() for p in queue]
        deadlines += [o.expires for o in self._observers.values() if o.expires is not None]
        if self.service.next_lease is not None:
            deadlines.append(self.service.next_lease)
        if not deadlines:
            return TICK_MS
        return max(0, min(TICK_MS, min(deadlines) - now_ms()))

    def _receive(self) -> list[_Pending]:
        pending = []
        inflight = self._parked_per_peer()
        for _ in range(self.config.max_batch):
            try:
                msg = self.request.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            peer = msg[0]
            inflight[peer] = inflight.get(peer, 0) + 1
            if inflight[peer] > self.config.max_inflight_per_peer:
                self._refuse(
                    msg,
                    TooMany(
                        f"more than {self.config.max_inflight_per_peer} requests in flight from this peer: "
                        "wait for replies before sending more"
                    ),
                )
                continue
            item = self._decode(msg)
            if item is not None:
                pending.append(item)
        return pending

    def _parked_per_peer(self) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for queue in self._parked.values():
            for parked in queue:
                counts[parked.envelope[0]] = counts.get(parked.envelope[0], 0) + 1
        return counts

    def _send(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        try:
            # send_multipart's checks, done by hand: this runs once per reply.
            for frame in frames[:-1]:
                sock.send(frame, _MORE)
            sock.send(frames[-1], zmq.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH: the peer has gone; EAGAIN: it is not reading
            self.dropped += 1

    def _decode(self, msg: list[bytes]) -> _Pending | None:
        envelope, frame = msg[:-1], msg[-1]
        self.served += 1
        is_zest = bool(frame) and frame[0] in ZEST_CODES
        try:
            if len(frame) > self.config.max_frame:
                raise TooLarge(
                    f"request frame is {len(frame)} bytes; the limit is {self.config.max_frame}: "
                    "send smaller request bodies"
                )
            if is_zest:
                return _Pending(envelope, zest.decode_request(frame), True)
            if cbor.is_native(frame):
                return _Pending(envelope, cbor.decode_request(frame), False)
            first = f"0x{frame[0]:02x}" if frame else "an empty frame"
            raise ProtocolError(
                f"unrecognised request frame (first byte {first}): send a CBOR map "
                "(native protocol) or a Zest GET/POST/DELETE frame"
            )
        except JobstoreError as exc:
            self._refuse(msg, exc)
            return None
        except Exception:  # a codec bug must cost this request, not the store
            log.exception("unexpected error decoding a request frame")
            self._refuse(msg, JobstoreError(INTERNAL))
            return None

    def _refuse(self, msg: list[bytes], exc: JobstoreError) -> None:
        """Answer a request that never reached the service, in the codec it arrived in."""
        envelope, frame = msg[:-1], msg[-1]
        reply = Reply(exc.status, exc.body, exc.message, getattr(exc, "id", None))
        bare = None
        if frame and frame[0] in ZEST_CODES:
            bare = Request("POST", "/", content_format=zest.FORMAT_TEXT)
        self._send(self.request, [*envelope, encode(reply, bare)])

    def _run_batch(self, pending: list[_Pending], now: int) -> None:
        self.service.transport.update(
            requests_received=self.served,
            replies_dropped=self.dropped,
            zest_observers=len(self._observers),
            waiting_takes=sum(len(queue) for queue in self._parked.values()),
        )
        pending = self._unpark(now, lambda dsid, deadline: deadline <= now) + pending
        if not pending and (self.service.next_lease is None or self.service.next_lease > now):
            self._expire_observers(now)
            return
        woken: list[_Pending] = []

        def wake(dsids: set[str]) -> list[Request]:
            unparked = self._unpark(now, lambda dsid, deadline: dsid in dsids)
            woken.extend(unparked)
            return [item.request for item in unparked]

        try:
            expired, outcomes = self.service.handle_batch([p.request for p in pending], now, wake)
        except Exception:  # the engine answers its own errors; this is a bug it did not expect
            log.exception("unexpected error handling a batch of %d requests", len(pending))
            failed = JobstoreError(INTERNAL)
            for item in pending + woken:
                self._reply(item, Outcome(error_reply(item.request, failed)))
            return
        pending += woken
        self._update_subscriptions()
        self._publish(expired)
        for item, outcome in zip(pending, outcomes, strict=True):
            if outcome.wait is not None:
                self._park(item, outcome.wait)
                continue
            assert outcome.reply is not None
            self._reply(item, outcome)
            self._publish(outcome.changes)
        self._expire_observers(now)

    def _unpark(self, now: int, due: Callable[[str, int], bool]) -> list[_Pending]:
        """Take out the parked takes that are ``due(dsid, deadline)``, each waiting only what is left."""
        out: list[_Pending] = []
        for dsid in list(self._parked):
            keep = []
            for parked in self._parked[dsid]:
                deadline = parked.deadline or 0
                if due(dsid, deadline):
                    body = {**parked.request.body, "wait": max(0, deadline - now)}
                    out.append(replace(parked, request=parked.request._replace(body=body)))
                else:
                    keep.append(parked)
            if keep:
                self._parked[dsid] = keep
            else:
                del self._parked[dsid]
        return out

    def _park(self, item: _Pending, wait: Wait) -> None:
        item.deadline = item.deadline or wait.deadline
        self._parked[wait.dsid].append(item)

    def _reply(self, item: _Pending, outcome: Outcome) -> None:
        reply = outcome.reply
        assert reply is not None
        request = item.request
        if outcome.observe is not None:
            ident = str(uuid.uuid4()).encode()
            expires = None
            if outcome.observe.max_age:
                expires = now_ms() + outcome.observe.max_age * 1000
            self._observers[ident] = _Observer(
                ident, outcome.observe.dsid, outcome.observe.client, expires
            )
            reply = Reply(200, ident.decode(), options={zest.OPT_OBSERVE_KEY: self.public_key})
            request = request._replace(content_format=zest.FORMAT_TEXT)
        self._send(self.request, [*item.envelope, encode(reply, request if item.zest else None)])

    def _update_subscriptions(self) -> None:
        """Apply the (un)subscribe messages XPUB has for us: first byte 1 or 0, then the topic."""
        while True:
            try:
                event = self.notify.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            topic = event[1:]
            kind = self._subscribed if len(topic) >= TOPIC_LENGTH else self._prefixes
            if event[:1] == b"\x01":
                kind.add(topic)
            elif event[:1] == b"\x00":
                kind.discard(topic)

    def _wanted(self, topic: bytes) -> bool:
        return topic in self._subscribed or any(topic.startswith(p) for p in self._prefixes)

    def _publish(self, changes: Iterable[Change]) -> None:
        for change in changes:
            try:
                for message in self.sealer.messages(change, self._wanted):
                    self._send(self.notify, message)  # a PUB socket drops rather than blocks
                if self._observers:
                    self._push(change)
            except Exception:
                # Subscribers catch up from their seq; the replies still to send must go out.
                # A Zest push fails here for a record an older version stored with NaN & co.
                job = change.job
                log.exception("cannot publish the change of %s/%s", job.dsid, job.job)

    def _push(self, change: Change) -> None:
        job, payload = change.job, None
        for obs in self._observers.values():
            if obs.dsid != job.dsid or (obs.client is not None and obs.client != job.client):
                continue
            if payload is None:
                payload = zest_push_payload(change)
            self._send_observe(obs.ident, zest.encode_push(payload))

    def _send_observe(self, ident: bytes, frame: bytes) -> None:
        # An observer that has gone or is not reading misses pushes: Zest observe is best effort.
        self._send(self.observe, [ident, frame])

    def _expire_observers(self, now: int) -> None:
        for ident, obs in list(self._observers.items()):
            if obs.expires is not None and obs.expires <= now:
                self._send_observe(ident, zest.encode_bare(zest.SERVICE_UNAVAILABLE))
                del self._observers[ident]

    def _shutdown(self) -> None:
        """Answer what was received and parked, and tell Zest observers the store is going."""
        self._run_batch(self._receive(), now_ms())
        final = now_ms()
        for queue in self._parked.values():
            for parked in queue:
                parked.deadline = final
        self._run_batch([], final)
        for ident in self._observers:
            self._send_observe(ident, zest.encode_bare(zest.SERVICE_UNAVAILABLE))
        self._observers.clear()
        self.service.storage.close()


def encode(reply: Reply, request: Request | None) -> bytes:
    """``reply`` as a frame: Zest answering ``request``, or native when ``request`` is None.

    A reply that cannot be encoded (a record an older version stored with a value JSON
    lacks) becomes a 500 for this request alone; the store goes on.
    """
    try:
        return cbor.encode_reply(reply) if request is None else zest.encode_reply(reply, request)
    except Exception:
        codec = "native" if request is None else f"Zest format {request.content_format}"
        log.exception("cannot encode a %d reply (%s)", reply.status, codec)
        failed = Reply(500, error=UNENCODABLE, id=reply.id)
        return cbor.encode_reply(failed) if request is None else zest.encode_reply(failed, request)


UNENCODABLE = (
    "the store cannot encode its reply to this request in this format (a record written by an "
    "older version holds a value such as NaN that JSON lacks); run `jobstore check` on the "
    "data directory and report it"
)


def zest_push_payload(change: Change) -> bytes:
    """The payload of a Zest observe push: ``<ms> <path> json <record as JSON>``."""
    job = change.job
    path = f"/{job.dsid}/job/{job.client}/{job.job}"
    return f"{job.updated} {path} json ".encode() + zest.encode_json(change.wire)


def describe(server: Server, auth_on: bool) -> list[str]:
    """Lines telling the operator what is served and which protections are on."""
    curve = (
        "CURVE on" if server.config.secret_key else "CURVE OFF (development only: traffic is plain)"
    )
    tokens = (
        "macaroons required"
        if auth_on
        else "macaroons OFF (development only: any peer may do anything)"
    )
    lines = [f"{name} socket on {endpoint}" for name, endpoint in server.endpoints.items()]
    lines.append(f"protections: {curve}; {tokens}")
    return lines
