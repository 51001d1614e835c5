"""Where and how the store's ZeroMQ adapter listens: :class:`ServerConfig` and its defaults."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_REQUEST = "tcp://0.0.0.0:5555"
DEFAULT_OBSERVE = "tcp://0.0.0.0:5556"
DEFAULT_NOTIFY = "tcp://0.0.0.0:5557"


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
    send_hwm: int = 1000  # messages queued per peer before more are dropped
    recv_hwm: int = 1000  # messages ZeroMQ reads ahead per peer before it stops reading
    socket_buffer: int = 0  # kernel SO_SNDBUF / SO_RCVBUF per connection; 0 = the OS default
    max_envelope: int = 8  # routing frames before the request frame
    max_envelope_frame: int = 256  # bytes of one routing frame (a ZeroMQ identity is <= 255)
    max_observers: int = 10_000
    max_observers_per_peer: int = 100
    max_parked: int = 10_000  # waiting takes, over all peers
    observe_connect_ms: int = 10_000  # time an observer has to connect before it can be dropped
