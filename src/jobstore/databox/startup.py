"""Databox start-up (docs/databox.md): secrets from /run/secrets, token secret from the arbiter."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, Unavailable
from .arbiter import fetch_store_secret, request_token

log = logging.getLogger(__name__)

DEFAULT_SECRETS_DIR = "/run/secrets"
DEFAULT_ARBITER = "tcp://arbiter:4444"
DEFAULT_DATA_DIR = "/database"


@dataclass(frozen=True)
class Secrets:
    """The files the container manager mounts into a store's container."""

    arbiter_token: str
    secret_key: bytes
    public_key: bytes


def read_secrets(directory: str | Path) -> Secrets:
    """Read ARBITER_TOKEN, ZMQ_SECRET_KEY and ZMQ_PUBLIC_KEY, or raise ConfigError naming what is missing."""
    values = {}
    for name in ("ARBITER_TOKEN", "ZMQ_SECRET_KEY", "ZMQ_PUBLIC_KEY"):
        path = Path(directory) / name
        try:
            values[name] = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the Databox secret {path} ({exc.strerror}); the container manager mounts "
                "it, or pass --secrets-dir to point at a directory holding it"
            ) from None
    for name in ("ZMQ_SECRET_KEY", "ZMQ_PUBLIC_KEY"):
        if len(values[name]) != 40:
            raise ConfigError(
                f"{name} must be a 40-character Z85 CURVE key, got {len(values[name])} characters"
            )
    return Secrets(
        values["ARBITER_TOKEN"].decode(), values["ZMQ_SECRET_KEY"], values["ZMQ_PUBLIC_KEY"]
    )


def token_secret(
    arbiter: str,
    secrets: Secrets,
    identity: str,
    *,
    attempts: int = 10,
    timeout: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """The store's macaroon secret from the arbiter, retrying a silent arbiter a bounded number of times.

    A refusal (wrong ARBITER_TOKEN) is not retried: it will not change.
    """
    for attempt in range(1, attempts + 1):
        try:
            secret = fetch_store_secret(
                arbiter, secrets.public_key.decode(), secrets.arbiter_token, identity, timeout
            )
        except Unavailable as exc:
            log.warning("arbiter attempt %d of %d: %s", attempt, attempts, exc.message)
            if attempt < attempts:
                sleep(min(2.0 ** (attempt - 1), 10.0))
            continue
        if not secret:
            raise ConfigError("the arbiter returned an empty token secret for this store")
        return secret
    raise ConfigError(
        f"the arbiter at {arbiter} did not answer after {attempts} attempts; is it running, and is "
        "DATABOX_ARBITER_ENDPOINT right?"
    )


class ArbiterTokens:
    """Macaroons from the arbiter for a client library, one per method, cached.

    Pass an instance as ``token`` to :class:`~jobstore.client.JobClient` or
    :class:`~jobstore.client.Driver`. Each token is asked for ``path`` (e.g.
    ``/sensor-jobs/*`` for an app, ``/*`` for the store's driver), so one token per
    method covers every request. ``client`` asks for jobstore's ``client`` caveat, which
    the Databox arbiter ignores (only ``jobstore fake-arbiter --client-caveats`` mints it):
    under its tokens an app's client id is what keeps its jobs private (docs/databox.md).
    Subscribing is authorised as a GET of the observed path, so the GET token serves it.

    A token the store refuses (401: a restarted store has a new secret from the arbiter) is
    forgotten by the client, which asks for a fresh one and sends the request once more
    (:class:`~jobstore.client.requests.RefreshableToken`).
    """

    def __init__(
        self,
        arbiter: str,
        server_key: str | None,
        arbiter_token: str,
        *,
        target: str,
        path: str,
        client: str | None = None,
        identity: str | None = None,
    ) -> None:
        self.arbiter, self.server_key, self.arbiter_token = arbiter, server_key, arbiter_token
        self.target, self.path, self.client, self.identity = target, path, client, identity
        self._tokens: dict[str, str] = {}

    def __call__(self, method: str, path: str) -> str:
        method = _token_method(method, path)
        token = self._tokens.get(method)
        if token is None:
            token = self._tokens[method] = request_token(
                self.arbiter,
                self.server_key,
                self.arbiter_token,
                target=self.target,
                path=self.path,
                method=method,
                client=self.client,
                identity=self.identity,
            )
        return token

    def forget(self, method: str, path: str, token: str) -> None:
        """Drop the cached token for ``method path`` if it is ``token`` (the store refused it),
        so the next call asks the arbiter again; a newer one, fetched meanwhile, is kept."""
        method = _token_method(method, path)
        if self._tokens.get(method) == token:
            del self._tokens[method]


def _token_method(method: str, path: str) -> str:
    # Subscriptions are POSTs authorised as GETs of the observed path.
    return "GET" if path.startswith("/sub/") else method
