"""The ZeroMQ adapter: request ROUTER, observe ROUTER, notify PUB around a :class:`Service`.

The loop only does recv -> decode -> handle (one batch, one commit) -> encode ->
send -> publish. Everything it publishes was committed first.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import cast

import zmq

from ..errors import JobstoreError, TooMany
from ..protocol import Reply, Request, zest
from ..protocol.sealed import Change
from .engine import Observe, Outcome, error_reply, mono_ms
from .frames import (
    FRAME_ROOM,
    SMALL_FRAME,
    Envelopes,
    decode_frame,
    encode,
    is_zest,
    zest_push_payload,
)
from .function_push import CallDelivery, is_call
from .observers import Observers
from .operations import Service
from .server_config import DEFAULT_NOTIFY, DEFAULT_OBSERVE, DEFAULT_REQUEST, ServerConfig
from .subscriptions import Subscriptions
from .waiting import Parked, WaitingTakes

# ServerConfig and the default endpoints live in server_config; they are imported from here too.
__all__ = [
    "DEFAULT_NOTIFY",
    "DEFAULT_OBSERVE",
    "DEFAULT_REQUEST",
    "Server",
    "ServerConfig",
    "describe",
    "now_ms",
]

log = logging.getLogger(__name__)

TICK_MS = 200  # longest sleep, so a signal or stop() is noticed promptly
INTERNAL = (
    "internal error in the store while answering this request; it has been logged, please "
    "report it (the store goes on serving)"
)
_MORE = zmq.SNDMORE | zmq.NOBLOCK


@dataclass
class _Pending:
    """A request on its way through the batch, with the codec that must answer it."""

    envelope: list[bytes]
    request: Request
    zest: bool
    parked: Parked[_Pending] | None = None  # set once a take has waited: it keeps its place


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
        max_frame = self.config.max_frame + FRAME_ROOM
        self.request = self._socket(zmq.ROUTER, self.config.request_endpoint, max_frame)
        self.observe = self._socket(zmq.ROUTER, self.config.observe_endpoint, SMALL_FRAME)
        # XPUB: it tells which topics have subscribers, so nobody's changes are sealed for nothing.
        self.notify = self._socket(zmq.XPUB, self.config.notify_endpoint, SMALL_FRAME)
        self._subscriptions = Subscriptions()
        self.endpoints = {
            name: sock.getsockopt_string(zmq.LAST_ENDPOINT)
            for name, sock in (
                ("request", self.request),
                ("observe", self.observe),
                ("notify", self.notify),
            )
        }
        self._stop = threading.Event()
        self._waiting: WaitingTakes[_Pending] = WaitingTakes(self.config.max_parked)
        self._observers = Observers(self.config.max_observers, self.config.max_observers_per_peer)
        self._calls = CallDelivery(service, self._send_observe, self.config)
        self._envelopes = Envelopes(self.config.max_envelope, self.config.max_envelope_frame)
        self.served = 0
        self.dropped = 0  # replies and pushes to peers that had gone or stopped reading

    def _socket(self, kind: int, endpoint: str, max_frame: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.linger = 1000
        sock.sndhwm = self.config.send_hwm
        sock.rcvhwm = self.config.recv_hwm
        # Per frame: ZeroMQ refuses a larger one (and drops that connection) before buffering it.
        sock.maxmsgsize = max_frame
        if self.config.socket_buffer:
            sock.sndbuf = sock.rcvbuf = self.config.socket_buffer
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
        poller.register(self.observe, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    # Read only the sockets the poll found readable: a read that finds
                    # nothing costs ZeroMQ two system calls and pyzmq an exception.
                    ready = dict(poller.poll(self._timeout()))
                    if self.observe in ready:
                        self._drain_observe()
                    self._run_batch(self._receive() if self.request in ready else [], now_ms())
                    if self._calls.active and self._calls.deliver(now_ms()):
                        self._run_batch([], now_ms())  # commit the calls pushed to drivers
                except Exception:  # the last net: the stages below answer their own failures
                    log.exception("unexpected error in the serve loop; serving on")
            self._shutdown()
        finally:
            for sock in (self.request, self.observe, self.notify):
                sock.close()
            self.ctx.term()

    def _timeout(self) -> int:
        # Heap tops may belong to takes or observers already gone: waking early is harmless.
        mono = mono_ms()
        deadlines = (self._waiting.next_deadline(), self._observers.next_expiry())
        waits = [deadline - mono for deadline in deadlines if deadline is not None]
        lease = self.service.lease_due_in(mono)  # leases are on the store clock
        if lease is not None:
            waits.append(lease)
        timer = self.service.timer_due_in(now_ms())  # due times and expiries on the wall clock
        if timer is not None:
            waits.append(timer)
        checkpoint = self.service.storage.checkpoint_in(mono)
        if checkpoint is not None:
            waits.append(checkpoint)
        if not waits:
            return TICK_MS
        return max(0, min(TICK_MS, min(waits)))

    def _drain_observe(self) -> None:
        """Discard what observe peers send: they have nothing to say, and unread it would pile up."""
        for _ in range(self.config.max_batch):
            try:
                self.observe.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return

    def _receive(self) -> list[_Pending]:
        pending = []
        inflight: dict[bytes, int] = {}  # a dict, not a Counter: this runs at every wake-up
        # Frames, not messages: a message of many frames is read and dropped a frame at a time.
        frames = self.config.max_batch * (self.config.max_envelope + 1)
        received = 0
        while received < self.config.max_batch and frames:
            try:
                frame = self.request.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            frames -= 1
            msg = self._envelopes.add(frame, bool(self.request.getsockopt(zmq.RCVMORE)))
            if msg is None:
                continue
            received += 1
            peer = msg[0]
            inflight[peer] = count = inflight.get(peer, 0) + 1
            if count + self._waiting.by_peer[peer] > self.config.max_inflight_per_peer:
                self._refuse(
                    msg,
                    TooMany(
                        f"more than {self.config.max_inflight_per_peer} requests in flight from this peer: "
                        "wait for replies before sending more"
                    ),
                )
                continue
            item = self._decode(msg)
            if item is not None and item.request.observe == zest.OBSERVE_NOTIFICATION:
                # A Go driver's observe counts toward the per-peer cap, as a Zest observe does.
                error = self._observers.refusal(peer, self._calls.by_peer)
                if error is not None:
                    self._refuse(msg, error)
                    continue
                self._calls.reserve(peer)
            if item is not None:
                pending.append(item)
        return pending

    def _send(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> int:
        """Send without blocking; 0, or the errno of a message dropped (and counted)."""
        try:
            # send_multipart's checks, done by hand: this runs once per reply.
            for frame in frames[:-1]:
                sock.send(frame, _MORE)
            sock.send(frames[-1], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer has gone; EAGAIN: it is not reading
            self.dropped += 1
            return exc.errno or -1
        return 0

    def _decode(self, msg: list[bytes]) -> _Pending | None:
        envelope, frame = msg[:-1], msg[-1]
        self.served += 1
        try:
            return _Pending(envelope, *decode_frame(frame, self.config.max_frame))
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
        if is_zest(frame):
            bare = Request("POST", "/", content_format=zest.FORMAT_TEXT)
        self._send(self.request, [*envelope, encode(reply, bare)])

    def _run_batch(self, pending: list[_Pending], now: int) -> None:
        mono = mono_ms()
        pending = [_woken(p, mono) for p in self._waiting.due(mono)] + pending
        lease = self.service.lease_due_in(mono)
        timer = self.service.timer_due_in(now)
        if (
            not pending
            and (lease is None or lease > 0)
            and (timer is None or timer > 0)
            and not self.service.functions.pending
        ):
            self.service.watch_data_dir(now)  # an idle store notices a deleted directory too
            self._expire_observers(mono)
            self.service.storage.checkpoint_if_due(mono)  # quiet: commit the journaled batches
            return
        # For GET /stats, which only a batch answers: an idle turn skips this.
        self.service.transport.update(
            requests_received=self.served,
            replies_dropped=self.dropped,
            zest_observers=len(self._observers),
            waiting_takes=self._waiting.count,
            requests_discarded=self._envelopes.discarded,
        )
        woken: list[_Pending] = []

        def wake(queued: Mapping[str, int]) -> list[Request]:
            unparked = [
                _woken(parked, mono)
                for dsid, count in queued.items()
                for parked in self._waiting.wake(dsid, count)
            ]
            woken.extend(unparked)
            return [item.request for item in unparked]

        requests = [p.request for p in pending]
        try:
            expired, outcomes = self.service.handle_batch(requests, now, wake, mono)
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
                # A take parked before keeps its place; a new one past the cap is refused.
                if item.parked is not None:
                    self._waiting.repark(item.parked)
                    continue
                wait = outcome.wait
                if self._waiting.park(
                    item.request, item, item.envelope[0], wait.dsid, wait.ms, mono
                ):
                    continue
                error = TooMany(
                    f"more than {self.config.max_parked} takes are waiting in this store: "
                    "take without wait, or wait in fewer drivers"
                )
                outcome = Outcome(Reply(error.status, None, error.message, item.request.id))
            assert outcome.reply is not None
            self._reply(item, outcome)
            self._publish(outcome.changes)
        self._expire_observers(mono)

    def _reply(self, item: _Pending, outcome: Outcome) -> None:
        reply = outcome.reply
        assert reply is not None
        request = item.request
        if outcome.observe is not None:
            reply, request = self._observe(item, outcome.observe)
        if request.observe == zest.OBSERVE_NOTIFICATION:
            self._calls.observed(item.envelope[0], outcome.fn if reply.status < 400 else None)
        if outcome.fn is not None and reply.status < 400:
            self._calls.effect(outcome.fn, now_ms())
            reply.options[zest.OPT_OBSERVE_KEY] = self.public_key
        self._send(self.request, [*item.envelope, encode(reply, request if item.zest else None)])

    def _observe(self, item: _Pending, observe: Observe) -> tuple[Reply, Request]:
        """Register a Zest observer (reply: its UUID), or refuse one past the caps with 429."""
        request, peer = item.request, item.envelope[0]
        error = self._observers.refusal(peer, self._calls.by_peer)
        if error is not None:
            return Reply(error.status, None, error.message, request.id), request
        ident = self._observers.add(observe.dsid, observe.client, observe.max_age, peer, mono_ms())
        reply = Reply(200, ident.decode(), options={zest.OPT_OBSERVE_KEY: self.public_key})
        return reply, request._replace(content_format=zest.FORMAT_TEXT)

    def _update_subscriptions(self) -> None:
        """Apply the (un)subscribe messages XPUB has for us."""
        # Asking first is one call when there are none (most batches), where a read that
        # finds nothing would raise.
        while cast(int, self.notify.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._subscriptions.apply(self.notify.recv(zmq.NOBLOCK))

    def _publish(self, changes: Iterable[Change]) -> None:
        for change in changes:
            try:
                for message in self.sealer.messages(change, self._subscriptions.wanted):
                    self._send(self.notify, message)  # a PUB socket drops rather than blocks
                if len(self._observers):
                    self._push(change)
                if is_call(change.job.client):
                    self._calls.changed(change.job, now_ms())
            except Exception:
                # Subscribers catch up from their seq; the replies still to send must go out.
                # A Zest push fails here for a record an older version stored with NaN & co.
                job = change.job
                log.exception("cannot publish the change of %s/%s", job.dsid, job.job)

    def _push(self, change: Change) -> None:
        watching = self._observers.watching(change.job)
        if not watching:
            return
        frame, mono = zest.encode_push(zest_push_payload(change)), mono_ms()
        for obs in watching:
            error = self._send_observe(obs.ident, frame)
            if not error:
                obs.reached = True
            elif error == zmq.EHOSTUNREACH and (
                obs.reached or mono - obs.since >= self.config.observe_connect_ms
            ):
                # Its DEALER connected and has gone, or never came: nobody will read it.
                self._observers.forget(obs.ident)

    def _send_observe(self, ident: bytes, frame: bytes) -> int:
        # An observer that has gone or is not reading misses pushes: Zest observe is best effort.
        return self._send(self.observe, [ident, frame])

    def _expire_observers(self, mono: int) -> None:
        for ident in self._observers.expire(mono):
            self._send_observe(ident, zest.encode_bare(zest.SERVICE_UNAVAILABLE))

    def _shutdown(self) -> None:
        """Answer what was received and parked, and tell Zest observers the store is going."""
        self._run_batch(self._receive(), now_ms())
        self._waiting.end_all(mono_ms())
        self._run_batch([], now_ms())
        for ident in self._observers:
            self._send_observe(ident, zest.encode_bare(zest.SERVICE_UNAVAILABLE))
        self._observers.clear()
        self.service.storage.close()


def _woken(parked: Parked[_Pending], mono: int) -> _Pending:
    """The adapter's item for a parked take run again: what is left of its wait, its envelope."""
    return replace(parked.token, request=parked.retry(mono), parked=parked)


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
