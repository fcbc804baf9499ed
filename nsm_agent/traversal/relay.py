"""The reflector and relay an agent with a public address serves (`--relay`), on one UDP port.

Reflector: a node's PROBE, sent from its WireGuard port, is answered with the address and
port it arrived from, which is the node's NAT mapping. Relay: two nodes whose probes each
name the other (both asked: neither can be made a relay target alone) are paired, and any
other datagram from one's mapping is sent on to the other's, from this same port, through
the holes their probes keep open. What is relayed is WireGuard's own packets: the session
stays end to end, and the relay never holds a key to it. A node paired with several peers
sends to all of them from its one WireGuard port, so whom a packet is for is read from
WireGuard's clear-text header (`wireguard_headers`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field

import structlog

from nsm_agent.traversal import wireguard_headers as wg
from nsm_agent.traversal.messages import (
    NO_KEY,
    Address,
    Freshness,
    Keys,
    Kind,
    Message,
    MessageError,
    decode,
    encode,
    is_traversal,
)

log = structlog.get_logger("nsm.agent")

FORGET_AFTER = 60.0  # seconds without a probe: the node (and its pairings) are forgotten
MAX_CLIENTS = 10_000
MAX_INDICES = 100_000  # two per live session; the oldest go first


@dataclass
class _Client:
    address: Address
    seen: float
    wants: dict[bytes, float] = field(default_factory=dict)  # peer key -> when last asked


class Relay(asyncio.DatagramProtocol):
    """Its state is soft: a restarted relay learns every node again from its next probe."""

    def __init__(self, keys: Keys, clock: object = time.monotonic) -> None:
        self.keys = keys
        self._clock = clock
        self.clients: dict[bytes, _Client] = {}
        self.by_address: dict[Address, bytes] = {}
        self.fresh = Freshness()
        self.transport: asyncio.DatagramTransport | None = None
        self.relayed_packets = 0
        self.indices: dict[bytes, bytes] = {}  # a WireGuard index -> the key of the node that chose it

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator,no-any-return]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:  # type: ignore[override]
        source: Address = (str(addr[0]), int(addr[1]))
        if is_traversal(data):
            self._probe(data, source)
        else:
            self._forward(data, source)

    def mutual(self, a: bytes, b: bytes) -> bool:
        """Whether A and B both asked, lately, to be relayed to each other."""
        now = self._now()
        ca, cb = self.clients.get(a), self.clients.get(b)
        return (
            ca is not None
            and cb is not None
            and now - ca.wants.get(b, -FORGET_AFTER) < FORGET_AFTER
            and now - cb.wants.get(a, -FORGET_AFTER) < FORGET_AFTER
        )

    def partner(self, key: bytes) -> _Client | None:
        """KEY's peer on this relay: the first of those it asked for that asked for it too."""
        me = self.clients.get(key)
        if me is None:
            return None
        for peer_key in me.wants:
            if self.mutual(key, peer_key):
                return self.clients[peer_key]
        return None

    def _forward(self, data: bytes, source: Address) -> None:
        key = self.by_address.get(source)
        target = self._target(key, data) if key is not None else None
        if target is not None and self.transport is not None:
            self.transport.sendto(data, self.clients[target].address)
            self.relayed_packets += 1

    def _target(self, key: bytes, data: bytes) -> bytes | None:
        """Whom KEY's packet is for, among the peers it is paired with: by the packet's WireGuard
        header (wireguard_headers), else the one peer when there is only one."""
        me = self.clients[key]
        peers = [p for p in me.wants if self.mutual(key, p)]
        if not peers:
            return None
        kind = wg.kind(data)
        if not kind:
            return None  # only WireGuard's packets are relayed: no general-purpose UDP relay
        target = None
        if kind in (wg.INITIATION, wg.RESPONSE):
            target = next((p for p in peers if wg.mac1_for(data, p)), None)
        elif kind:
            index = wg.receiver_index(data)
            owner = self.indices.get(index) if index is not None else None
            target = owner if owner in peers else None
        if target is None and len(peers) == 1:
            target = peers[0]  # e.g. data right after this relay restarted, before a handshake
        sender = wg.sender_index(data)
        if target is not None and sender is not None:
            if len(self.indices) >= MAX_INDICES:
                self.indices.pop(next(iter(self.indices)))
            self.indices[sender] = key  # what names this index from now on is for KEY
        return target

    def _probe(self, data: bytes, source: Address) -> None:
        try:
            msg = decode(self.keys, data)
        except MessageError:
            return  # forged or garbled: no answer, nothing learned
        if msg.kind is not Kind.PROBE or not self.fresh.fresh(msg):
            return
        now = self._now()
        self._expire(now)
        client = self.clients.get(msg.sender)
        if client is None:
            if len(self.clients) >= MAX_CLIENTS:
                return
            client = self.clients[msg.sender] = _Client(source, now)
            log.info("relay: node seen", address=f"{source[0]}:{source[1]}")
        elif client.address != source:
            self.by_address.pop(client.address, None)
            log.info("relay: node's mapping changed", old=f"{client.address[0]}:{client.address[1]}",
                     new=f"{source[0]}:{source[1]}")  # fmt: skip
            client.address = source
        self.by_address[source] = msg.sender
        client.seen = now
        if msg.key != NO_KEY and msg.key != msg.sender:
            client.wants[msg.key] = now
        peer = self.clients[msg.key].address if self.mutual(msg.sender, msg.key) else None
        reply = Message(Kind.MAPPED, self.keys.public, msg.nonce, time.time_ns(), address=source, peer=peer)
        if self.transport is not None:
            self.transport.sendto(encode(self.keys, msg.sender, reply), source)

    def _expire(self, now: float) -> None:
        for key in [k for k, c in self.clients.items() if now - c.seen > FORGET_AFTER]:
            client = self.clients.pop(key)
            self.by_address.pop(client.address, None)
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
    except OSError:
        sock.close()
        raise
    transport, relay = await loop.create_datagram_endpoint(lambda: Relay(keys), sock=sock)
    log.info("relay serving", address=f"{host}:{port}", pid=os.getpid())
    return transport, relay
