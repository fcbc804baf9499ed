"""Traversal messages (no root): each kind through encode and decode, the MAC binding both
keys, forgeries and replays refused."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nsm_agent.traversal.messages import (
    NO_KEY,
    Freshness,
    Keys,
    Kind,
    Message,
    MessageError,
    RelayCookies,
    decode,
    encode,
)


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
        {"kind": Kind.PROBE, "key": os.urandom(32), "cookie": os.urandom(16)},
        {"kind": Kind.MAPPED, "address": ("203.0.113.10", 51820), "peer": ("2001:db8::1", 4000)},
        {"kind": Kind.MAPPED, "address": ("203.0.113.10", 51820), "cookie": os.urandom(16)},
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


def test_a_probe_is_no_smaller_than_the_answer_it_gets() -> None:
    """From a forged source, a probe makes the relay send that address no more than it sent."""
    a, b = _keys(), _keys()
    probe = encode(a, b.public, Message(Kind.PROBE, a.public, os.urandom(12), 1))
    answer = encode(b, a.public, Message(Kind.MAPPED, b.public, os.urandom(12), 1, address=("2001:db8::1", 1),
                                         peer=("2001:db8::2", 2), cookie=os.urandom(16)))  # fmt: skip
    assert len(probe) >= len(answer)


def test_a_cookie_is_bound_to_its_address_and_key_and_lasts_one_epoch_more() -> None:
    now = [0.0]
    cookies = RelayCookies(clock=lambda: now[0])
    key, other = os.urandom(32), os.urandom(32)
    cookie = cookies.make(("203.0.113.10", 4000), key)
    assert cookies.valid(cookie, ("203.0.113.10", 4000), key)
    assert not cookies.valid(cookie, ("203.0.113.10", 4001), key)  # another port: another mapping
    assert not cookies.valid(cookie, ("203.0.113.10", 4000), other)
    now[0] = RelayCookies.EPOCH + 1
    assert cookies.valid(cookie, ("203.0.113.10", 4000), key)  # the last epoch's still counts
    now[0] = 2 * RelayCookies.EPOCH + 1
    assert not cookies.valid(cookie, ("203.0.113.10", 4000), key)
    assert not RelayCookies().valid(cookie, ("203.0.113.10", 4000), key)  # another relay's secret
