"""The reflector and relay an agent with a public address serves (`--relay`), on one UDP port.

Reflector: a node's PROBE, sent from its WireGuard port, is answered with the address and
port it arrived from, which is the node's NAT mapping, and a cookie for that address. Only a
probe that echoes it makes the relay keep anything (the node, its address, whom it asks
for): one from a forged source gets one answer, no larger than itself, and changes nothing.

Relay: two nodes whose probes each name the other (both asked: neither can be made a relay
target alone) are paired, and any other datagram from one's mapping is sent on to the
other's, from this same port, through the holes their probes keep open. What is relayed is
WireGuard's own packets: the session stays end to end, and the relay never holds a key to
it. A node paired with several peers sends to all of them from its one WireGuard port, so
whom a packet is for is read from WireGuard's clear-text header (`wireguard_headers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from nsm_agent.traversal import wireguard_headers as wg
from nsm_agent.traversal.messages import (
    NO_KEY,
    Address,
    Keys,
    Kind,
    Message,
    MessageError,
    RelayCookies,
    decode,
    encode,
    is_traversal,
)

log = structlog.get_logger("nsm.agent")

FORGET_AFTER = 60.0  # seconds without a probe: the node (and its pairings) are forgotten
EXPIRE_EVERY = 5.0
MAX_CLIENTS = 10_000
MAX_PER_ADDRESS = 1024  # nodes kept behind one public IP address (one NAT's)
MAX_WANTS = 256  # peers one node may ask to be paired with at once
MAX_INDICES = 100_000  # two per live session; the oldest go first
PROBES_PER_SOURCE = 200  # a second, per source address: a NAT with many nodes behind it shares one


@dataclass
class _Client:
    address: Address
    seen: float
    stamp: int  # the newest probe's timestamp: an older or equal one is a replay
    wants: dict[bytes, float] = field(default_factory=dict)  # peer key -> when last asked


class Relay(asyncio.DatagramProtocol):
    """Its state is soft: a restarted relay learns every node again from its next probe."""

    def __init__(self, keys: Keys, sock: socket.socket, clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.sock = sock
        self._clock = clock
        self.clients: dict[bytes, _Client] = {}
        self.by_address: dict[Address, bytes] = {}
        self.per_ip: dict[str, int] = {}  # clients kept per source IP address
        self.cookies = RelayCookies(clock)
        self.relayed_packets = 0
        self.indices: dict[bytes, bytes] = {}  # a WireGuard index -> the key of the node that chose it
        self._probes: dict[str, tuple[float, int]] = {}  # source address -> (second, probes in it)
        self._next_expiry = -1e9

    def _send(self, data: bytes, to: Address) -> None:
        # Straight to the socket: a full buffer drops the datagram, as a router would, instead
        # of queueing without bound in the transport.
        with contextlib.suppress(OSError):
            self.sock.sendto(data, to)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:  # type: ignore[override]
        source: Address = (str(addr[0]), int(addr[1]))
        if is_traversal(data):
            self._probe(data, source)
        else:
            self._forward(data, source)

    def mutual(self, a: bytes, b: bytes) -> bool:
        """Whether A and B both asked, lately, to be relayed to each other."""
        now = self._clock()
        ca, cb = self.clients.get(a), self.clients.get(b)
        return (
            ca is not None
            and cb is not None
            and now - ca.wants.get(b, -FORGET_AFTER) < FORGET_AFTER
            and now - cb.wants.get(a, -FORGET_AFTER) < FORGET_AFTER
        )

    def _forward(self, data: bytes, source: Address) -> None:
        key = self.by_address.get(source)
        for target in self._targets(key, data) if key is not None else ():
            self._send(data, self.clients[target].address)
            self.relayed_packets += 1

    def _targets(self, key: bytes, data: bytes) -> list[bytes]:
        """Whom KEY's packet is for, among the peers it is paired with, by the packet's WireGuard
        header (wireguard_headers). Data whose receiver index is not known yet (this relay
        restarted, or the pair came here from a direct path) goes to each of them: the others'
        WireGuard drops a packet for an index it never gave, and the next handshake teaches the
        index."""
        kind = wg.kind(data)
        if not kind:
            return []  # only WireGuard's packets are relayed: no general-purpose UDP relay
        peers = [p for p in self.clients[key].wants if self.mutual(key, p)]
        if not peers:
            return []
        if kind in (wg.INITIATION, wg.RESPONSE):
            target = next((p for p in peers if wg.mac1_for(data, p)), None)
            if target is not None:
                if len(self.indices) >= MAX_INDICES:
                    self.indices.pop(next(iter(self.indices)))
                index = wg.sender_index(data)
                assert index is not None
                self.indices[index] = key  # what names this index from now on is for KEY
            return [target] if target is not None else []
        index = wg.receiver_index(data)
        owner = self.indices.get(index) if index is not None else None
        return [owner] if owner in peers else peers

    def _allowed(self, source: Address, now: float) -> bool:
        """PROBES_PER_SOURCE a second from one address: each costs an X25519 before its MAC
        can be checked."""
        second, count = self._probes.get(source[0], (-1e9, 0))
        if now - second >= 1.0:
            if source[0] not in self._probes and len(self._probes) >= MAX_CLIENTS:
                # Only this second's counts matter; while that many addresses probe within
                # one second, a new one waits for the next.
                self._probes = {ip: c for ip, c in self._probes.items() if now - c[0] < 1.0}
                if len(self._probes) >= MAX_CLIENTS:
                    return False
            self._probes[source[0]] = (now, 1)
            return True
        self._probes[source[0]] = (second, count + 1)
        return count < PROBES_PER_SOURCE

    def _probe(self, data: bytes, source: Address) -> None:
        now = self._clock()
        if not self._allowed(source, now):
            return
        try:
            msg = decode(self.keys, data)
        except MessageError:
            return  # forged or garbled: no answer, nothing learned
        if msg.kind is not Kind.PROBE:
            return
        if not self.cookies.valid(msg.cookie, source, msg.sender):
            self._answer(msg, source, None)  # the cookie for here: echoed, it proves the address
            return
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            self._expire(now)
        client = self.clients.get(msg.sender)
        if client is not None and msg.timestamp <= client.stamp:
            return  # replayed (from the same address: a cookie is bound to it)
        if client is None:
            if len(self.clients) >= MAX_CLIENTS or self.per_ip.get(source[0], 0) >= MAX_PER_ADDRESS:
                self._answer(msg, source, None)  # still a reflector: the mapping, not a relay
                return
            client = self.clients[msg.sender] = _Client(source, now, msg.timestamp)
            self._count(source, 1)
            log.info("relay: node seen", address=f"{source[0]}:{source[1]}")
        elif client.address != source:
            self._unbind(client.address, msg.sender)
            self._count(client.address, -1)
            self._count(source, 1)
            log.info("relay: node's mapping changed", old=f"{client.address[0]}:{client.address[1]}",
                     new=f"{source[0]}:{source[1]}")  # fmt: skip
            client.address = source
        self.by_address[source] = msg.sender
        client.seen, client.stamp = now, msg.timestamp
        if msg.key not in (NO_KEY, msg.sender) and (msg.key in client.wants or len(client.wants) < MAX_WANTS):
            client.wants[msg.key] = now
        self._answer(msg, source, self.clients[msg.key].address if self.mutual(msg.sender, msg.key) else None)

    def _answer(self, probe: Message, source: Address, peer: Address | None) -> None:
        """MAPPED: SOURCE as seen, the paired PEER's address (if paired), the cookie for SOURCE."""
        cookie = self.cookies.make(source, probe.sender)
        reply = Message(Kind.MAPPED, self.keys.public, probe.nonce, time.time_ns(), address=source, peer=peer,
                        cookie=cookie)  # fmt: skip
        self._send(encode(self.keys, probe.sender, reply), source)

    def _count(self, address: Address, by: int) -> None:
        left = self.per_ip.get(address[0], 0) + by
        if left > 0:
            self.per_ip[address[0]] = left
        else:
            self.per_ip.pop(address[0], None)

    def _unbind(self, address: Address, key: bytes) -> None:
        """ADDRESS no longer KEY's; left alone if another node holds it now (after a NAT
        restart two nodes behind it may have swapped ports)."""
        if self.by_address.get(address) == key:
            del self.by_address[address]

    def _expire(self, now: float) -> None:
        gone = [k for k, c in self.clients.items() if now - c.seen > FORGET_AFTER]
        for key in gone:
            address = self.clients.pop(key).address
            self._unbind(address, key)
            self._count(address, -1)
        if gone:
            left = set(gone)
            self.indices = {i: k for i, k in self.indices.items() if k not in left}
        for client in self.clients.values():
            for peer in [p for p, asked in client.wants.items() if now - asked > FORGET_AFTER]:
                del client.wants[peer]


async def serve_relay(keys: Keys, host: str, port: int) -> tuple[asyncio.DatagramTransport, Relay]:
    """The relay bound to HOST:PORT (IPv4 or IPv6 by HOST)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # Room for bursts: what is relayed is a tunnel's whole traffic.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    transport, relay = await loop.create_datagram_endpoint(lambda: Relay(keys, sock), sock=sock)
    log.info("relay serving", address=f"{host}:{port}", pid=os.getpid())
    return transport, relay
