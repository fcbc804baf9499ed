"""Traversal messages (no root): each kind through encode and decode, the MAC binding both
keys, forgeries and replays refused."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nsm_agent.traversal.messages import NO_KEY, Freshness, Keys, Kind, Message, MessageError, decode, encode


def _keys() -> Keys:
    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return Keys(base64.b64encode(raw).decode())


@pytest.mark.parametrize(
    "msg_body",
    [
        {"kind": Kind.PROBE, "key": os.urandom(32)},
        {"kind": Kind.PROBE},
        {"kind": Kind.MAPPED, "address": ("203.0.113.10", 51820), "peer": ("2001:db8::1", 4000)},
        {"kind": Kind.MAPPED, "address": ("203.0.113.10", 1)},
        {"kind": Kind.PING},
        {"kind": Kind.PONG, "address": ("198.51.100.7", 65535)},
    ],
)
def test_each_kind_survives_the_wire(msg_body: dict[str, object]) -> None:
    a, b = _keys(), _keys()
    kind = msg_body.pop("kind")
    msg = Message(kind, a.public, os.urandom(12), 7, **msg_body)  # type: ignore[arg-type]
    got = decode(b, encode(a, b.public, msg))
    assert got == msg
    assert got.key == msg_body.get("key", NO_KEY)


def test_a_message_for_someone_else_or_altered_is_refused() -> None:
    a, b, c = _keys(), _keys(), _keys()
    data = encode(a, b.public, Message(Kind.PING, a.public, os.urandom(12), 1))
    with pytest.raises(MessageError, match="bad MAC"):
        decode(c, data)  # made for b: c derives another key
    flipped = bytearray(data)
    flipped[-20] ^= 1  # inside the timestamp
    with pytest.raises(MessageError, match="bad MAC"):
        decode(b, bytes(flipped))
    # A sender claiming a's key without a's private key cannot make a's MAC.
    forged = bytearray(encode(c, b.public, Message(Kind.PING, c.public, os.urandom(12), 1)))
    forged[5:37] = a.public
    with pytest.raises(MessageError, match="bad MAC"):
        decode(b, bytes(forged))


def test_garbage_and_wireguard_packets_are_not_messages() -> None:
    b = _keys()
    for data in (b"", b"NSMt", b"\x04\x00\x00\x00" + os.urandom(60), os.urandom(100), b"NSMt\x09" + bytes(80)):
        with pytest.raises(MessageError):
            decode(b, data)


def test_a_replayed_timestamp_is_stale() -> None:
    a = _keys()
    fresh = Freshness()
    first = Message(Kind.PROBE, a.public, os.urandom(12), 100)
    assert fresh.fresh(first)
    assert not fresh.fresh(first)  # the same again: a replay
    assert not fresh.fresh(Message(Kind.PROBE, a.public, os.urandom(12), 99))
    assert fresh.fresh(Message(Kind.PROBE, a.public, os.urandom(12), 101))
