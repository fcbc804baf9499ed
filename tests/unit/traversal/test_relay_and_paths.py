"""The relay and the path runtime in process (no root), over real UDP on loopback: mappings
learned, a pairing only when both ask, opaque forwarding both ways, and two nodes' paths
going direct, relayed when their direct packets are lost, and direct again.

The nodes' "WireGuard ports" here are plain UDP sockets, where the agent uses a raw socket
beside WireGuard's (tests/integration/test_nat_traversal.py runs that, through real NATs)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nsm_agent.decisions.traversal import PUNCH_FOR, Mode, RelayRef
from nsm_agent.traversal import relay as relay_module
from nsm_agent.traversal.messages import NO_COOKIE, NO_KEY, Address, Keys, Kind, Message, decode, encode
from nsm_agent.traversal.paths import IDLE_FOR, Traversal
from nsm_agent.traversal.relay import Relay, serve_relay
from nsm_agent.traversal.wireguard_headers import make_mac1
from tests.helpers.loopback_port import LoopbackPort


def _keys() -> tuple[Keys, str]:
    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    keys = Keys(base64.b64encode(raw).decode())
    return keys, base64.b64encode(keys.public).decode()


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Relay, RelayRef, Keys]]:
    keys, public = _keys()
    transport, served = await serve_relay(keys, "127.0.0.1", 0)
    port = transport.get_extra_info("sockname")[1]
    yield served, RelayRef(("127.0.0.1", port), public), keys
    transport.close()


def _probe(
    sock: socket.socket, keys: Keys, relay: RelayRef, pair_with: bytes = NO_KEY, cookie: bytes = NO_COOKIE
) -> Message:
    msg = Message(Kind.PROBE, keys.public, os.urandom(12), time.time_ns(), key=pair_with, cookie=cookie)
    sock.sendto(encode(keys, base64.b64decode(relay.key), msg), relay.address)
    sock.settimeout(2)
    data, _ = sock.recvfrom(2048)
    reply = decode(keys, data)
    assert reply.kind is Kind.MAPPED and reply.nonce == msg.nonce
    return reply


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _proven(sock: socket.socket, keys: Keys, relay: RelayRef, pair_with: bytes = NO_KEY) -> Message:
    """A probe answered, then the same with the cookie that answer brought: kept by the relay."""
    first = _probe(sock, keys, relay, pair_with)
    return _probe(sock, keys, relay, pair_with, first.cookie)


async def test_the_relay_reflects_pairs_only_on_both_asking_and_forwards_opaquely(
    relay: tuple[Relay, RelayRef, Keys],
) -> None:
    served, ref, _ = relay
    (ka, _), (kb, _) = _keys(), _keys()
    a, b = _bound(), _bound()
    try:
        got = await asyncio.to_thread(_proven, a, ka, ref, kb.public)
        assert got.address == a.getsockname() and got.peer is None  # b has not asked
        a_cookie = got.cookie
        # a forged probe (b's key, a's socket) moves nothing: the MAC is a's, not b's
        forged = bytearray(
            encode(ka, base64.b64decode(ref.key), Message(Kind.PROBE, ka.public, os.urandom(12), time.time_ns()))
        )
        forged[5:37] = kb.public
        a.sendto(bytes(forged), ref.address)
        await asyncio.sleep(0.1)
        assert kb.public not in served.clients
        # one-sided: nothing is forwarded
        a.sendto(b"\x04\x00\x00\x00ciphertext1234", ref.address)
        await asyncio.sleep(0.1)
        assert served.relayed_packets == 0
        got = await asyncio.to_thread(_proven, b, kb, ref, ka.public)
        assert got.peer == a.getsockname()  # paired: each is told where the other is seen
        a.sendto(b"\x04\x00\x00\x00" + b"to b" * 7, ref.address)
        b.settimeout(2)
        assert await asyncio.to_thread(b.recvfrom, 100) == (b"\x04\x00\x00\x00" + b"to b" * 7, ref.address)
        b.sendto(b"\x04\x00\x00\x00" + b"to a" * 7, ref.address)
        a.settimeout(2)
        assert await asyncio.to_thread(a.recvfrom, 100) == (b"\x04\x00\x00\x00" + b"to a" * 7, ref.address)
        # a replayed probe (an old timestamp, the address's cookie) is not answered
        old = Message(Kind.PROBE, ka.public, os.urandom(12), 1, cookie=a_cookie)
        a.sendto(encode(ka, base64.b64decode(ref.key), old), ref.address)
        a.settimeout(0.3)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(a.recvfrom, 100)
        # only WireGuard's packets are relayed, even between a pair
        a.sendto(b"plain text, no WireGuard header", ref.address)
        b.settimeout(0.3)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(b.recvfrom, 100)
    finally:
        a.close()
        b.close()


async def test_the_relay_keeps_nothing_for_an_address_that_did_not_echo_its_cookie(
    relay: tuple[Relay, RelayRef, Keys],
) -> None:
    """A probe is answered wherever it comes from, but kept (the node, its address, whom it
    asks for) only once it echoes the cookie sent to that address: a forged source cannot
    make the relay send there, and a probe replayed from elsewhere moves nothing."""
    served, ref, _ = relay
    (ka, _), (kb, _) = _keys(), _keys()
    a, c = _bound(), _bound()
    try:
        first = await asyncio.to_thread(_probe, a, ka, ref, kb.public)
        assert first.address == a.getsockname() and first.cookie != NO_COOKIE  # the mapping, at once
        assert served.clients == {} and served.by_address == {}  # and nothing kept
        proof = Message(Kind.PROBE, ka.public, os.urandom(12), time.time_ns(), key=kb.public, cookie=first.cookie)
        data = encode(ka, base64.b64decode(ref.key), proof)
        a.sendto(data, ref.address)
        a.settimeout(2)
        assert decode(ka, (await asyncio.to_thread(a.recvfrom, 2048))[0]).cookie == first.cookie
        assert served.clients[ka.public].address == a.getsockname()
        assert served.clients[ka.public].wants.keys() == {kb.public}
        # The same probe from another address: answered there, with that address's cookie.
        c.sendto(data, ref.address)
        c.settimeout(2)
        there = decode(ka, (await asyncio.to_thread(c.recvfrom, 2048))[0])
        assert there.address == c.getsockname() and there.cookie != first.cookie and there.peer is None
        assert served.clients[ka.public].address == a.getsockname()
        assert c.getsockname() not in served.by_address
    finally:
        a.close()
        c.close()


async def test_one_address_keeps_at_most_max_per_address_nodes(
    relay: tuple[Relay, RelayRef, Keys], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes behind one NAT share its address, up to MAX_PER_ADDRESS: one host making up keys
    cannot fill the relay's table for everyone else."""
    served, ref, _ = relay
    monkeypatch.setattr(relay_module, "MAX_PER_ADDRESS", 2)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
            answer = await asyncio.to_thread(_proven, sock, _keys()[0], ref)
            assert answer.address == sock.getsockname()  # each still learns its mapping
        assert len(served.clients) == 2 and served.per_ip == {"127.0.0.1": 2}
    finally:
        for sock in socks:
            sock.close()


async def test_two_nodes_go_direct_relayed_when_blocked_and_direct_again(relay: tuple[Relay, RelayRef, Keys]) -> None:
    _, ref, _ = relay
    nodes = []
    handshakes_now: list[Address] = []  # where an endpoint move asked for a handshake at once
    for _ in range(2):
        keys, public = _keys()
        port = LoopbackPort()
        endpoints: list[Address] = []

        async def set_endpoint(_key: str, addr: Address, now: bool, seen: list[Address] = endpoints) -> None:
            seen.append(addr)
            if now:
                handshakes_now.append(addr)

        async def relays() -> list[RelayRef]:
            return [ref]

        t = Traversal(keys, lambda p=port: p, set_endpoint, relays)  # type: ignore[misc]
        nodes.append((t, public, port, endpoints))
    (ta, pa, porta, epa), (tb, pb, portb, epb) = nodes
    for t, _, _, _ in nodes:
        t.start()
    try:
        assert await ta.ready() == porta.address  # the mapping, as the relay sees it
        assert await tb.ready() == portb.address
        assert ta.offered_relay() == ref

        async def until(cond: object, within: float) -> None:
            deadline = time.monotonic() + within
            while not cond():  # type: ignore[operator]
                assert time.monotonic() < deadline, f"not within {within} s"
                await asyncio.sleep(0.05)

        # Direct: each told the other's port.
        ta.follow(pb, portb.address, (ref,))
        tb.follow(pa, porta.address, (ref,))
        await until(lambda: ta.mode(pb) is Mode.DIRECT and tb.mode(pa) is Mode.DIRECT, 2.0)

        # Blocked both ways (symmetric NATs): relayed after PUNCH_FOR, WireGuard pointed at the relay.
        porta.blocked.add(portb.address)
        portb.blocked.add(porta.address)
        await until(lambda: ta.mode(pb) is Mode.RELAYED and tb.mode(pa) is Mode.RELAYED, PUNCH_FOR + 12)
        await until(lambda: epa[-1:] == [ref.address] and epb[-1:] == [ref.address], 1.0)
        # One end starts a handshake there at once: two would cross, and each lose the other's.
        assert handshakes_now == [ref.address]

        # Unblocked: direct again, by the pings that went on meanwhile.
        porta.blocked.clear()
        portb.blocked.clear()
        await until(lambda: ta.mode(pb) is Mode.DIRECT and tb.mode(pa) is Mode.DIRECT, 4.0)
        await until(lambda: epa[-1:] == [portb.address] and epb[-1:] == [porta.address], 1.0)
        ta.forget(pb)
        assert ta.mode(pb) is None
    finally:
        for t, _, _, _ in nodes:
            await t.aclose()


def _initiation(sender: bytes, to: Keys) -> bytes:
    body = b"\x01\0\0\0" + sender + os.urandom(108)
    return make_mac1(body, to.public) + bytes(16)  # mac2: no cookie


def _response(sender: bytes, receiver: bytes, to: Keys) -> bytes:
    return make_mac1(b"\x02\0\0\0" + sender + receiver + os.urandom(48), to.public) + bytes(16)


async def test_a_node_paired_with_two_peers_is_relayed_by_wireguards_headers(
    relay: tuple[Relay, RelayRef, Keys],
) -> None:
    """A's one port, paired with B and with C: a handshake goes to whose key its mac1 is made
    with, the rest by the receiver index that peer chose."""
    _, ref, _ = relay
    keys = {name: _keys()[0] for name in "abc"}
    socks = {name: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for name in "abc"}
    for s in socks.values():
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
    try:
        for me, others in (("a", "bc"), ("b", "a"), ("c", "a")):
            for other in others:
                await asyncio.to_thread(_proven, socks[me], keys[me], ref, keys[other].public)

        async def via_relay(sender: str, data: bytes, receiver: str) -> None:
            socks[sender].sendto(data, ref.address)
            got, _ = await asyncio.to_thread(socks[receiver].recvfrom, 2048)
            assert got == data

        i_a, i_c, i_b = b"AAAA", b"CCCC", b"BBBB"
        await via_relay("a", _initiation(i_a, keys["c"]), "c")
        await via_relay("c", _response(i_c, i_a, keys["a"]), "a")
        await via_relay("a", b"\x04\0\0\0" + i_c + os.urandom(40), "c")
        await via_relay("a", _initiation(b"A2A2", keys["b"]), "b")
        await via_relay("b", _response(i_b, b"A2A2", keys["a"]), "a")
        await via_relay("a", b"\x04\0\0\0" + i_b + os.urandom(40), "b")
        await via_relay("b", b"\x04\0\0\0" + b"A2A2" + os.urandom(40), "a")
        # Nothing went to the wrong peer.
        for name in "bc":
            socks[name].settimeout(0.2)
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(socks[name].recvfrom, 2048)
    finally:
        for s in socks.values():
            s.close()


async def test_following_again_keeps_what_was_heard_and_keep_only_forgets_the_rest() -> None:
    keys, _ = _keys()
    port = LoopbackPort()
    set_to: list[Address] = []
    own_relay = RelayRef(("127.0.0.8", 51800), _keys()[1])  # probed by the tick: no use of the port

    async def set_endpoint(_key: str, addr: Address, _now: bool) -> None:
        set_to.append(addr)

    async def relays() -> list[RelayRef]:
        return [own_relay]

    now = [0.0]
    opened: list[LoopbackPort] = []

    def open_port() -> LoopbackPort:
        opened.append(port)
        return port

    t = Traversal(keys, open_port, set_endpoint, relays, clock=lambda: now[0])  # type: ignore[arg-type]
    try:
        (_, pb), (_, pc) = _keys(), _keys()
        relay = RelayRef(("127.0.0.9", 51800), pb)
        t.follow(pb, ("127.0.0.2", 51820), ())
        t.peers[pb].path.heard, t.peers[pb].configured = ("127.0.0.2", 40000), ("127.0.0.2", 40000)
        t.follow(pb, ("127.0.0.2", 51820), (relay,))  # another connection names a relay: same address
        assert t.peers[pb].path.relays == (relay,) and t.peers[pb].configured == ("127.0.0.2", 40000)
        assert t.peers[pb].path.heard == ("127.0.0.2", 40000)
        t.follow(pb, ("127.0.0.3", 51820), ())  # told a new address: use_peer set it
        assert t.peers[pb].configured == ("127.0.0.3", 51820)
        assert t.peers[pb].path.relays == (relay,)  # what any connection named is kept
        t.follow(pc, ("127.0.0.4", 51820), ())
        t.keep_only({pc})
        assert set(t.peers) == {pc}
        # The port was opened once, for the first path, and is let go when none is left.
        assert opened == [port]
        t.forget(pc)
        now[0] = IDLE_FOR - 1
        await t._tick()
        assert t._port is not None  # still open: the idle time has not passed
        assert own_relay.key in t._probed  # the tick probed its domain's relay meanwhile
        now[0] = IDLE_FOR + 1
        await t._tick()
        assert t._port is None and t.mappings == {}  # that probe did not keep the port wanted
    finally:
        port.close()


async def test_an_endpoint_wireguard_moved_is_set_back_to_the_paths() -> None:
    """WireGuard roamed (or a restarted wireguard-go was given the address first told): the
    look at its endpoints sees it, and the next tick sets the endpoint the path decides."""
    keys, _ = _keys()
    port = LoopbackPort()
    set_to: list[Address] = []
    seen: dict[str, Address] = {}

    async def set_endpoint(_key: str, addr: Address, _now: bool) -> None:
        set_to.append(addr)

    async def relays() -> list[RelayRef]:
        return []

    async def endpoints() -> dict[str, Address]:
        return dict(seen)

    t = Traversal(keys, lambda: port, set_endpoint, relays, endpoints=endpoints)  # type: ignore[arg-type,return-value]
    try:
        _, pb = _keys()
        t.follow(pb, ("127.0.0.2", 51820), ())
        await t._tick()
        assert set_to == []  # as told, as set
        seen[pb] = ("127.0.0.9", 51800)  # a late relayed packet moved it
        t._next_check = -1e9
        await t._tick()  # seen
        await t._tick()  # set back
        assert set_to == [("127.0.0.2", 51820)]
    finally:
        port.close()


async def test_a_tunnel_carried_on_by_a_restart_keeps_its_relay() -> None:
    """The restored connection follows its path again while the device still sends by the
    relay: no tick sets the endpoint back to the told mapping (that would cut a relayed
    tunnel until punching gave up again)."""
    keys, _ = _keys()
    port = LoopbackPort()
    set_to: list[Address] = []
    _, relay_key = _keys()
    relay = RelayRef(("127.0.0.9", 51800), relay_key)

    async def set_endpoint(_key: str, addr: Address, _now: bool) -> None:
        set_to.append(addr)

    async def relays() -> list[RelayRef]:
        return [relay]

    async def endpoints() -> dict[str, Address]:
        return {pb: relay.address}

    t = Traversal(keys, lambda: port, set_endpoint, relays, endpoints=endpoints)  # type: ignore[arg-type,return-value]
    try:
        _, pb = _keys()
        t.follow(pb, ("127.0.0.2", 51820), (relay,), kept=relay.address)
        for _ in range(5):
            await t._tick()
        assert set_to == [] and t.mode(pb) is Mode.RELAYED
    finally:
        port.close()
