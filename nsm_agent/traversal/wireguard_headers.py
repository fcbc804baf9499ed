"""Which peer a WireGuard packet is for, from its clear-text header alone. Pure.

A relay serves a node's one WireGuard port for all of that node's relayed peers, so the
source address says whose packet it is, not whom it is for. WireGuard says so in the clear
without anything being decrypted: a handshake initiation's (and response's) `mac1` is keyed
by the receiver's public key, and every other message names its receiver by the index that
receiver chose in its own handshake message.
"""

from __future__ import annotations

import hashlib
import hmac

INITIATION, RESPONSE, COOKIE, DATA = 1, 2, 3, 4
_SIZES = {INITIATION: 148, RESPONSE: 92, COOKIE: 64}
_MAC1_AT = {INITIATION: 116, RESPONSE: 60}
_LABEL_MAC1 = b"mac1----"


def kind(data: bytes) -> int:
    """WireGuard's message type, or 0 when this is none (by its header and size)."""
    if len(data) < 16 or data[1:4] != b"\0\0\0" or data[0] not in (INITIATION, RESPONSE, COOKIE, DATA):
        return 0
    if data[0] in _SIZES and len(data) != _SIZES[data[0]]:
        return 0
    # Data: header, counter and tag (32 bytes) around a payload padded to 16.
    if data[0] == DATA and (len(data) < 32 or len(data) % 16):
        return 0
    return data[0]


def mac1_for(data: bytes, receiver_public: bytes) -> bool:
    """Whether a handshake message's mac1 was made for the holder of RECEIVER_PUBLIC."""
    at = _MAC1_AT[data[0]]
    key = hashlib.blake2s(_LABEL_MAC1 + receiver_public).digest()
    return hmac.compare_digest(hashlib.blake2s(data[:at], digest_size=16, key=key).digest(), data[at : at + 16])


def sender_index(data: bytes) -> bytes | None:
    """The index a handshake message's sender chose: later messages to it name it."""
    return data[4:8] if data[0] in (INITIATION, RESPONSE) else None


def receiver_index(data: bytes) -> bytes | None:
    """The index naming this message's receiver (a response, cookie reply or data)."""
    if data[0] == RESPONSE:
        return data[8:12]
    if data[0] in (COOKIE, DATA):
        return data[4:8]
    return None


def make_mac1(body: bytes, receiver_public: bytes) -> bytes:
    """BODY (up to mac1) with a mac1 for RECEIVER_PUBLIC: for tests of the routing above."""
    key = hashlib.blake2s(_LABEL_MAC1 + receiver_public).digest()
    return body + hashlib.blake2s(body, digest_size=16, key=key).digest()
