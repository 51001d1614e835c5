"""Macaroon authorisation, checked exactly as Databox core-store (zestdb) checks it.

A token is a libmacaroons v1 macaroon in base64 (URL-safe or standard alphabet, padded or
not) whose signature is the HMAC-SHA256 chain keyed by the store's token secret, the way
the arbiter (and pymacaroons) mint it. The store builds the *required caveats* of each
request; every first-party caveat in the token must equal one of them, or end in ``*``
with the text before the ``*`` a prefix of one of them followed by at least one more
character (zestdb's ``has_prefix``). A required caveat the token lacks is fine: fewer
caveats make a broader token. Third-party caveats are refused, since no discharge
macaroons are ever presented (zestdb verifies with an empty discharge list).

Pure: no sockets, no I/O. A token is refused before parsing when it is longer or has
more caveats than the :class:`Authoriser` allows (the arbiter's tokens have at most five
caveats and a few hundred characters). The verdict on a token, its signature-checked
caveats or why it is refused, is cached in a cache bounded in entries and bytes, so a
repeated token, forged ones included, costs only the caveat matching.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterable

from jobstore.errors import Unauthorized

_KEY_GENERATOR = b"macaroons-key-generator"
_SIGNATURE_SIZE = 32
MAX_TOKEN = 4096  # characters of base64; the arbiter's tokens are a few hundred
MAX_CAVEATS = 16  # the arbiter mints at most five
CACHE_ENTRIES = 1024
CACHE_BYTES = 8 << 20
_ENTRY_OVERHEAD = 256  # bytes a cache entry costs beyond its token and caveats, roughly
_HEX = frozenset(b"0123456789abcdefABCDEF")
_KEYS = ("path", "method", "target", "client", "observe")
_TO_STANDARD = str.maketrans("-_", "+/")


def required_caveats(
    *, method: str, path: str, target: str, client: str | None = None, observe: bool = False
) -> tuple[str, ...]:
    """The caveats a request satisfies, spelt ``"key = value"`` as the arbiter mints them."""
    caveats = [f"path = {path}", f"method = {method.upper()}", f"target = {target}"]
    if client is not None:
        caveats.append(f"client = {client}")
    if observe:
        caveats.append("observe = data")
    return tuple(caveats)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _derive(secret: bytes) -> bytes:
    return _hmac(_KEY_GENERATOR, secret)


def _signature(key: bytes, identifier: bytes, caveats: Iterable[bytes]) -> bytes:
    """The HMAC chain from ``key``, the secret's derived key as libmacaroons makes it."""
    signature = _hmac(key, identifier)
    for caveat in caveats:
        signature = _hmac(signature, caveat)
    return signature


def _packet(key: bytes, value: bytes) -> bytes:
    size = 4 + len(key) + 1 + len(value) + 1
    if size > 0xFFFF:
        raise ValueError(f"macaroon {key.decode()} packet is {size} bytes; the v1 limit is 65535")
    return b"%04x%s %s\n" % (size, key, value)


def mint(
    secret: bytes,
    caveats: Iterable[str],
    *,
    location: str = "jobstore",
    identifier: str = "jobstore-dev",
) -> str:
    """A v1 macaroon with these first-party caveats, URL-safe padded base64 like the arbiter's."""
    cids = [caveat.encode() for caveat in caveats]
    raw = _packet(b"location", location.encode()) + _packet(b"identifier", identifier.encode())
    raw += b"".join(_packet(b"cid", cid) for cid in cids)
    raw += _packet(b"signature", _signature(_derive(secret), identifier.encode(), cids))
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _malformed(reason: str) -> Unauthorized:
    return Unauthorized(f"token is not valid base64 macaroon: {reason}")


def _decode(token: str) -> bytes:
    try:
        standard = token.translate(_TO_STANDARD)
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("it is not base64 (URL-safe or standard alphabet)") from None


def _packets(raw: bytes, limit: int) -> list[tuple[bytes, bytes]]:
    packets: list[tuple[bytes, bytes]] = []
    at = 0
    while at < len(raw):
        if len(packets) == limit:
            raise Unauthorized(
                f"token has more than {limit - 3} caveats, this store's limit: "
                "ask the arbiter for a token with fewer caveats"
            )
        prefix = raw[at : at + 4]
        if len(prefix) < 4 or not _HEX.issuperset(prefix):
            raise _malformed(f"no 4-hex-digit packet length at byte {at}")
        end = at + int(prefix, 16)
        body = raw[at + 4 : end]
        if end > len(raw) or not body.endswith(b"\n") or b" " not in body:
            raise _malformed(f"the packet at byte {at} is not 'key value\\n' of its stated length")
        key, _, value = body[:-1].partition(b" ")
        packets.append((key, value))
        at = end
    return packets


def _parse(raw: bytes, max_caveats: int) -> tuple[bytes, list[bytes], bytes]:
    """Identifier, caveat ids and signature of a v1 macaroon; first-party caveats only."""
    packets = _packets(raw, max_caveats + 3)
    if packets and packets[0][0] == b"location":
        packets = packets[1:]
    if not packets or packets[0][0] != b"identifier":
        raise _malformed("it has no identifier packet after the optional location")
    if packets[-1][0] != b"signature":
        raise _malformed("its last packet is not the signature")
    if len(packets[-1][1]) != _SIGNATURE_SIZE:
        raise _malformed(f"the signature is not {_SIGNATURE_SIZE} bytes")
    cids: list[bytes] = []
    for key, value in packets[1:-1]:
        if key in (b"vid", b"cl") and cids:
            raise Unauthorized(
                "token has a third-party caveat, which this store cannot discharge; "
                "use a token with first-party caveats only"
            )
        if key != b"cid":
            raise _malformed(f"unexpected packet {key[:32]!r}")
        cids.append(value)
    return packets[0][1], cids, packets[-1][1]


def _matches(caveat: str, required: tuple[str, ...]) -> bool:
    if caveat in required:
        return True
    if not caveat.endswith("*"):
        return False
    prefix = caveat[:-1]
    # Contract section 8: the part before ``*`` is a prefix of a required caveat. zestdb's
    # has_prefix wants at least one more character; docs/protocol.md ("Authorisation", which wins) does not.
    return any(r.startswith(prefix) for r in required)


def _verify(key: bytes, token: str, max_caveats: int) -> tuple[str, ...]:
    """The caveats of a well-formed token whose signature chain starts from ``key``."""
    identifier, cids, signature = _parse(_decode(token), max_caveats)
    if not hmac.compare_digest(_signature(key, identifier, cids), signature):
        raise Unauthorized(
            "token signature does not verify: it was not minted with this store's secret"
        )
    try:
        return tuple(cid.decode() for cid in cids)
    except UnicodeDecodeError:
        raise _malformed("a caveat is not UTF-8 text") from None


class Authoriser:
    """Decides whether a request's token grants it; off (allows everything) without a secret.

    ``issuer`` names where tokens come from, in the advice of a refusal.
    """

    def __init__(
        self,
        secret: bytes | None,
        identity: str,
        *,
        issuer: str = "the arbiter",
        max_token: int = MAX_TOKEN,
        max_caveats: int = MAX_CAVEATS,
        cache_entries: int = CACHE_ENTRIES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.identity = identity
        self.issuer = issuer
        self.max_token, self.max_caveats = max_token, max_caveats
        self.cache_entries, self.cache_bytes = cache_entries, cache_bytes
        # Only the derived key is kept. A token's verdict depends on nothing else, so a
        # repeated token skips parsing and HMACs: its caveats, or the refusal's message.
        self._key = None if secret is None else _derive(secret)
        self._cache: OrderedDict[str, tuple[str, ...] | str] = OrderedDict()
        self.cached_bytes = 0
        self.verified = 0  # tokens parsed and their signatures checked, i.e. cache misses

    @property
    def enabled(self) -> bool:
        """True when a token secret is configured and requests need a macaroon."""
        return self._key is not None

    def _verified(self, key: bytes, token: str) -> tuple[str, ...]:
        verdict = self._cache.get(token)
        if verdict is None:
            self.verified += 1
            try:
                verdict = _verify(key, token, self.max_caveats)
            except Unauthorized as exc:
                verdict = exc.message
            self._remember(token, verdict)
        else:
            self._cache.move_to_end(token)
        if isinstance(verdict, str):
            raise Unauthorized(verdict)
        return verdict

    def _remember(self, token: str, verdict: tuple[str, ...] | str) -> None:
        self._cache[token] = verdict
        self.cached_bytes += _entry_size(token, verdict)
        while self._cache and (
            len(self._cache) > self.cache_entries or self.cached_bytes > self.cache_bytes
        ):
            old, old_verdict = self._cache.popitem(last=False)
            self.cached_bytes -= _entry_size(old, old_verdict)

    def check(
        self,
        token: str | bytes | None,
        *,
        method: str,
        path: str,
        client: str | None = None,
        observe: bool = False,
    ) -> None:
        """Return if ``token`` grants the request, else raise :class:`Unauthorized` saying why."""
        if self._key is None:
            return
        if not token:
            raise Unauthorized(f"missing token: this store requires a macaroon from {self.issuer}")
        if len(token) > self.max_token:
            raise Unauthorized(
                f"token is {len(token)} characters long; this store's limit is {self.max_token}: "
                f"ask {self.issuer} for a token with fewer caveats"
            )
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise _malformed("it is not ASCII text") from None
        required = required_caveats(
            method=method, path=path, target=self.identity, client=client, observe=observe
        )
        for caveat in self._verified(self._key, token):
            if not _matches(caveat, required):
                raise Unauthorized(_refusal(caveat, required, self.issuer))


def _entry_size(token: str, verdict: tuple[str, ...] | str) -> int:
    caveats = len(verdict) if isinstance(verdict, str) else sum(len(c) for c in verdict)
    return _ENTRY_OVERHEAD + len(token) + caveats


def _refusal(caveat: str, required: tuple[str, ...], issuer: str) -> str:
    """Why ``caveat`` does not grant a request with ``required`` caveats, and what to do."""
    request = ", ".join(required)
    key = caveat.split(" = ", 1)[0] if " = " in caveat else None
    if key not in _KEYS:
        return (
            f'token caveat "{caveat}" is not one this store checks (it checks '
            f"{', '.join(_KEYS)}); get a token without it from {issuer}"
        )
    value = next((r.split(" = ", 1)[1] for r in required if r.startswith(f"{key} = ")), None)
    if value is None:
        return (
            f'token caveat "{caveat}" does not match this request ({request}), '
            f"which has no {key}; use a token minted for this kind of request"
        )
    return (
        f'token caveat "{caveat}" does not match this request ({request}); '
        f"get a token covering {key} {value} from {issuer}"
    )
