"""The traversal messages on a node's WireGuard port, and their authentication. Pure.

They share the UDP port with WireGuard, so that a NAT maps them exactly as it maps the
tunnel: a WireGuard message starts with its type (1 to 4) and three zero bytes, these with
`MAGIC`, so neither is taken for the other.

Every message is authenticated by an HMAC whose key both ends derive without asking:
X25519 of the sender's WireGuard private key with the receiver's public key, as WireGuard's
own static-static term. So a reflector's answer is known to come from the reflector the
registry named, a ping from the peer node configured, and a relay forwards only for the
keys that asked it. A timestamp, newer than the last one seen from the same key, makes a
replay worthless; and a relay takes an address as a node's only once the node has echoed
the cookie it sent there (`RelayCookies`): who cannot receive at an address cannot make
the relay send to it, and an old probe replayed from elsewhere carries the wrong cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

MAGIC = b"NSMt"
KEY_BYTES = 32
NONCE_BYTES = 12
MAC_BYTES = 16
COOKIE_BYTES = 16
_HEADER = struct.Struct("!4sB32s12sQ")  # magic, kind, sender's public key, nonce, timestamp (ns)
_ADDRESS = struct.Struct("!B16sH")  # family (0: none), address, port
NO_KEY = bytes(KEY_BYTES)
NO_COOKIE = bytes(COOKIE_BYTES)

Address = tuple[str, int]


class Kind(IntEnum):
    PROBE = 1  # node → reflector: what address do you see? (and: relay me to this key)
    MAPPED = 2  # reflector → node: the address seen (and the paired peer's)
    PING = 3  # node → node, on the path being tried
    PONG = 4  # node → node: the ping's nonce back, and the address it came from


class MessageError(ValueError):
    pass


@dataclass(frozen=True)
class Message:
    kind: Kind
    sender: bytes  # the sender's WireGuard public key, raw
    nonce: bytes
    timestamp: int
    key: bytes = NO_KEY  # PROBE: the peer to be relayed to
    address: Address | None = None  # MAPPED, PONG: where the asker was seen from
    peer: Address | None = None  # MAPPED: where the paired peer was seen from
    cookie: bytes = NO_COOKIE  # MAPPED: the relay's for this address; PROBE: echoed back


def raw_key(b64: str) -> bytes:
    raw = base64.b64decode(b64)
    if len(raw) != KEY_BYTES:
        raise MessageError(f"a WireGuard key is {KEY_BYTES} bytes, not {len(raw)}")
    return raw


class Keys:
    """This node's static key and the MAC keys it shares with each other key (kept: an X25519
    is some tens of microseconds)."""

    def __init__(self, private_b64: str) -> None:
        self._private = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._shared: dict[bytes, bytes] = {}

    def shared(self, other: bytes) -> bytes:
        key = self._shared.get(other)
        if key is None:
            secret = self._private.exchange(X25519PublicKey.from_public_bytes(other))
            key = hashlib.sha256(b"nsm traversal v1" + secret).digest()
            if len(self._shared) > 4096:  # a flood of made-up keys costs the flooder, not memory
                self._shared.clear()
            self._shared[other] = key
        return key


def _address(addr: Address | None) -> bytes:
    if addr is None:
        return _ADDRESS.pack(0, bytes(16), 0)
    ip = ipaddress.ip_address(addr[0])
    return _ADDRESS.pack(ip.version, ip.packed.rjust(16, b"\0"), addr[1])


def _read_address(data: bytes) -> Address | None:
    family, packed, port = _ADDRESS.unpack(data)
    if family == 0:
        return None
    if family == 4:
        return str(ipaddress.IPv4Address(packed[12:])), port
    if family == 6:
        return str(ipaddress.IPv6Address(packed)), port
    raise MessageError(f"address family {family}")


_MAPPED_BODY = 2 * _ADDRESS.size + COOKIE_BYTES
# A PROBE is padded to a MAPPED's size: a probe sent from a forged source makes the relay
# send no more bytes to that address than the forger sent.
_PROBE_PAD = _MAPPED_BODY - KEY_BYTES - COOKIE_BYTES
_BODY = {
    Kind.PROBE: KEY_BYTES + COOKIE_BYTES + _PROBE_PAD,
    Kind.MAPPED: _MAPPED_BODY,
    Kind.PING: 0,
    Kind.PONG: _ADDRESS.size,
}


def encode(keys: Keys, to: bytes, msg: Message) -> bytes:
    """MSG from `keys` to the holder of public key TO."""
    head = _HEADER.pack(MAGIC, msg.kind, keys.public, msg.nonce, msg.timestamp)
    if len(msg.cookie) != COOKIE_BYTES:
        raise MessageError(f"a cookie is {COOKIE_BYTES} bytes, not {len(msg.cookie)}")
    if msg.kind is Kind.PROBE:
        body = msg.key + msg.cookie + bytes(_PROBE_PAD)
    elif msg.kind is Kind.MAPPED:
        body = _address(msg.address) + _address(msg.peer) + msg.cookie
    elif msg.kind is Kind.PONG:
        body = _address(msg.address)
    else:
        body = b""
    data = head + body
    return data + hmac.new(keys.shared(to), data, hashlib.sha256).digest()[:MAC_BYTES]


def is_traversal(data: bytes) -> bool:
    return data[:4] == MAGIC


def decode(keys: Keys, data: bytes) -> Message:
    """A message to `keys`, authenticated; MessageError when it is malformed or forged."""
    if len(data) < _HEADER.size + MAC_BYTES or not is_traversal(data):
        raise MessageError("not a traversal message")
    _, kind_n, sender, nonce, timestamp = _HEADER.unpack_from(data)
    try:
        kind = Kind(kind_n)
    except ValueError:
        raise MessageError(f"unknown kind {kind_n}") from None
    if len(data) != _HEADER.size + _BODY[kind] + MAC_BYTES:
        raise MessageError(f"a {kind.name} of {len(data)} bytes")
    signed, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    try:
        expected = hmac.new(keys.shared(sender), signed, hashlib.sha256).digest()[:MAC_BYTES]
    except ValueError as exc:  # not a curve point cryptography accepts
        raise MessageError(f"sender key: {exc}") from exc
    if not hmac.compare_digest(mac, expected):
        raise MessageError("bad MAC")
    body = signed[_HEADER.size :]
    if kind is Kind.PROBE:
        return Message(kind, sender, nonce, timestamp, key=body[:KEY_BYTES],
                       cookie=body[KEY_BYTES : KEY_BYTES + COOKIE_BYTES])  # fmt: skip
    if kind is Kind.MAPPED:
        return Message(
            kind, sender, nonce, timestamp,
            address=_read_address(body[: _ADDRESS.size]), peer=_read_address(body[_ADDRESS.size : 2 * _ADDRESS.size]),
            cookie=body[2 * _ADDRESS.size :],
        )  # fmt: skip
    if kind is Kind.PONG:
        return Message(kind, sender, nonce, timestamp, address=_read_address(body))
    return Message(kind, sender, nonce, timestamp)


class Freshness:
    """Per sender key, the newest timestamp seen: an older or equal one is a replay."""

    def __init__(self, limit: int = 4096) -> None:
        self._last: dict[bytes, int] = {}
        self._limit = limit

    def fresh(self, msg: Message) -> bool:
        if msg.timestamp <= self._last.get(msg.sender, -1):
            return False
        if len(self._last) >= self._limit and msg.sender not in self._last:
            self._last.pop(next(iter(self._last)))
        self._last[msg.sender] = msg.timestamp
        return True


class RelayCookies:
    """The relay's cookies: an HMAC of the address a probe came from and its sender's key,
    under a secret of the relay's own, per EPOCH seconds (the last epoch's still counts).
    Nothing is kept per address: a probe without a good cookie is answered, and forgotten."""

    EPOCH = 120.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = os.urandom(32)
        self._clock = clock

    def _make(self, epoch: int, source: Address, sender: bytes) -> bytes:
        data = struct.pack("!q", epoch) + _address(source) + sender
        return hmac.new(self._secret, data, hashlib.sha256).digest()[:COOKIE_BYTES]

    def make(self, source: Address, sender: bytes) -> bytes:
        return self._make(int(self._clock() // self.EPOCH), source, sender)

    def valid(self, cookie: bytes, source: Address, sender: bytes) -> bool:
        epoch = int(self._clock() // self.EPOCH)
        return any(hmac.compare_digest(cookie, self._make(e, source, sender)) for e in (epoch, epoch - 1))
