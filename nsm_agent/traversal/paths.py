"""The runtime of NAT traversal on a node: its mapping learned from the reflectors, and one
path followed per WireGuard peer in another domain (`nsm_agent.decisions.traversal` decides;
this sends, listens and sets WireGuard's endpoint).

Everything is sent from the WireGuard port (`RawPort`), so that each NAT maps these
messages as it maps the tunnel, and every hole they open is the tunnel's. One task ticks
every TICK seconds; a mode change costs one `wg set` (a spawn, in a worker thread; and one
`wg show` where a handshake may be started at once), never one per connection; and each
CHECK_EVERY seconds, while paths are followed, one `wg show` tells whether WireGuard's
endpoints moved under the paths (WireGuard roams; a wireguard-go restart resets them),
which are then set right.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from nsm_agent.decisions.traversal import (
    PING_EVERY,
    PROBE_EVERY,
    RELAY_PROBE_EVERY,
    Mode,
    PeerPath,
    RelayRef,
    carried_path,
    decide,
    handshake_now,
)
from nsm_agent.traversal.messages import (
    NO_COOKIE,
    NO_KEY,
    Address,
    Freshness,
    Keys,
    Kind,
    Message,
    MessageError,
    decode,
    encode,
)
from nsm_agent.traversal.rawudp import RawPort
from nsm_common.urls import host_port

log = structlog.get_logger("nsm.agent")

TICK = 0.1
RELAYS_EVERY = 1.0  # the relay source answers from the registry's watched copy: no round trip
CHECK_EVERY = 10.0  # seconds between looks at WireGuard's own endpoints
RETRY_AFTER = 5.0  # seconds before a failed `wg set` is tried again
PENDING_FOR = 5.0  # seconds an unanswered nonce is remembered
IDLE_FOR = 120.0  # seconds with no path followed and no Request across before the port is let go

SetEndpoint = Callable[[str, Address, bool], Awaitable[None]]  # peer, where, handshake now
Endpoints = Callable[[], Awaitable[dict[str, Address]]]


@dataclass
class _Followed:
    path: PeerPath
    raw_key: bytes
    configured: Address | None = None  # WireGuard's endpoint as this path last set it
    last_ping: float = -1e9
    last_pair_probe: float = -1e9
    failed_at: float = -1e9  # the last `wg set` that failed


@dataclass(frozen=True)
class _Asked:
    kind: Kind
    to: bytes  # whose answer it awaits: the relay's or the peer's key
    pair_with: bytes  # a PROBE's peer
    at: float
    relay: RelayRef | None = None  # a PROBE's relay
    cookie: bytes = NO_COOKIE  # a PROBE's, as sent


class Traversal:
    """SET_ENDPOINT(peer key, address) points WireGuard's peer there; RELAYS() names the relays of
    this domain (`RelayFinder`, asked each RELAYS_EVERY); ENDPOINTS() reads WireGuard's own."""

    def __init__(
        self,
        keys: Keys,
        open_port: Callable[[], RawPort],
        set_endpoint: SetEndpoint,
        relays: Callable[[], Awaitable[list[RelayRef]]],
        endpoints: Endpoints | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self._open_port = open_port
        self._port: RawPort | None = None  # open only while this node crosses domains
        self._used_at = -1e9
        self._set_endpoint = set_endpoint
        self._relays_source = relays
        self._endpoints = endpoints
        self._clock = clock
        self.relays: list[RelayRef] = []  # this domain's
        self.mappings: dict[str, Address] = {}  # relay key -> this node's WireGuard port as it sees it
        self.peers: dict[str, _Followed] = {}
        self._probed: dict[str, float] = {}  # relay key -> when last probed for the mapping
        self._cookies: dict[str, bytes] = {}  # relay key -> its cookie for this node's mapping
        self._pending: dict[bytes, _Asked] = {}  # nonce -> what was asked
        self._fresh = Freshness()
        self._timestamp = 0
        self._task: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()
        self._next_relays = -1e9
        self._next_check = -1e9

    # Lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close_port()

    def _port_open(self) -> RawPort:
        """The raw port, opened on first need. Closed, it costs nothing: open, the kernel hands it
        a copy of every UDP packet the node gets (its filter drops them there), so a node that
        never crosses domains never opens it."""
        if self._port is None:
            self._used_at = self._clock()
            self._port = self._open_port()
            asyncio.get_running_loop().add_reader(self._port.sock.fileno(), self._receive)
            log.info("nat traversal: listening on the wireguard port")
        return self._port

    def _close_port(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._port.sock.fileno())
            self._port.close()
            self._port = None
            self.mappings.clear()  # unprobed, a NAT forgets them within 30 s
            self._cookies.clear()
            log.info("nat traversal: idle, wireguard port no longer read")

    # What the tunnels ask ----------------------------------------------------------
    @property
    def mapping(self) -> Address | None:
        """This node's mapping as its own domain's first relay sees it (the one it offers)."""
        return next((self.mappings[r.key] for r in self.relays if r.key in self.mappings), None)

    def mapping_via(self, relay: RelayRef | None) -> Address | None:
        """The mapping to give a peer that named RELAY: this domain's relays' first, else (a
        domain with none of its own) the one RELAY saw, given to that peer only: another
        domain's relay never decides what this node tells the rest."""
        own = self.mapping
        if own is not None or relay is None:
            return own
        return self.mappings.get(relay.key)

    async def ready(self, also: RelayRef | None = None, timeout: float = 1.0) -> Address | None:
        """`mapping_via(ALSO)`: learned already, or asked now (TIMEOUT at most) of this domain's
        relays and of ALSO, the relay a peer named."""
        self._used_at = self._clock()  # a Request across: the port is wanted (not the tick's own probes)
        if self.mapping_via(also) is not None:
            return self.mapping_via(also)
        # Asked again now: a relay may have registered since the last tick (the finder
        # answers from the registry's watched copy, and keeps a round trip's answer a while).
        await self._refresh_relays(force=True)
        asked = [*self.relays, *([also] if also is not None else [])]
        if not asked:
            return None  # no reflector anywhere: the node's --public-ip, if any, stands
        for relay in asked:
            self._probe(relay, NO_KEY)
        deadline = self._clock() + timeout
        while self.mapping_via(also) is None and self._clock() < deadline:
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), max(0.0, deadline - self._clock()))
        return self.mapping_via(also)

    def offered_relay(self) -> RelayRef | None:
        """The relay this node offers its peers: the first of its domain's."""
        return self.relays[0] if self.relays else None

    def follow(self, peer_key: str, told: Address, relays: tuple[RelayRef, ...], kept: Address | None = None) -> None:
        """Follow the path to PEER_KEY, told to be at TOLD; RELAYS: those its connections named;
        KEPT: where WireGuard sends to it, when a restart carried its tunnel on."""
        known = self.peers.get(peer_key)
        if known is not None:
            # Every relay any connection to this peer named is asked: two connections, one each
            # way, may name different ones.
            relays = tuple(sorted({r.key: r for r in (*known.path.relays, *relays)}.values(), key=lambda r: r.key))
            if known.path.told == told and known.path.relays == relays:
                return
        now = self._clock()
        self._used_at = now
        # WireGuard's endpoint as it is now: what the device kept, when carried on; told, when
        # use_peer just set it (a peer new, or told a new address); else what this path set last.
        configured: Address | None
        if known is None and kept is not None:
            path, configured = carried_path(told, relays, kept, now), kept
        else:
            path = PeerPath(told=told, relays=relays, since=now)
            configured = told if known is None or known.path.told != told else known.configured
        if known is not None:  # told anew (a new mapping, another relay): what was heard stays
            path.mode, path.since, path.heard, path.heard_at = (
                known.path.mode, known.path.since, known.path.heard, known.path.heard_at,
            )  # fmt: skip
            path.paired = known.path.paired
        followed = self.peers[peer_key] = _Followed(path, base64.b64decode(peer_key), configured, last_ping=now)
        # At once, not at the next tick: on the endpoint's node this runs before the answer
        # goes back, so this NAT's hole toward the client is open before the client's
        # WireGuard sends its first handshake (lost, it would be retried only after 5 s).
        for addr in path.candidates():
            self._send(addr, followed.raw_key, Kind.PING)
        log.info("nat path: following", peer=peer_key[:8], told=_fmt(told),
                 relays=",".join(str(r) for r in relays) or "none")  # fmt: skip

    def forget(self, peer_key: str) -> None:
        if self.peers.pop(peer_key, None) is not None:
            log.info("nat path: forgotten", peer=peer_key[:8])

    def keep_only(self, peer_keys: set[str]) -> None:
        """Forget every path but those to PEER_KEYS (after a restart's tidy-up removed peers)."""
        for key in set(self.peers) - peer_keys:
            self.forget(key)

    def mode(self, peer_key: str) -> Mode | None:
        followed = self.peers.get(peer_key)
        return followed.path.mode if followed is not None else None

    # The loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad tick must not end traversal
                log.warning("nat traversal tick failed", error=str(exc))
            await asyncio.sleep(TICK)

    async def _refresh_relays(self, force: bool = False) -> None:
        now = self._clock()
        if now < self._next_relays and not force:
            return
        self._next_relays = now + RELAYS_EVERY
        try:
            self.relays = await self._relays_source()
        except Exception as exc:
            log.warning("nat traversal: relays not found", error=str(exc))

    async def _tick(self) -> None:
        now = self._clock()
        if self._port is None:
            return  # nothing crosses: no mapping to keep, no path to follow
        if not self.peers and now - self._used_at > IDLE_FOR:
            self._close_port()
            return
        await self._refresh_relays()
        used = {r.key: r for f in self.peers.values() for r in f.path.relays}
        wanted = {**used, **{r.key: r for r in self.relays}}
        for key, relay in wanted.items():
            if now - self._probed.get(key, -1e9) >= PROBE_EVERY:
                self._probe(relay, NO_KEY)
        for key in set(self._probed) - set(wanted):
            del self._probed[key]
        for stale in [n for n, asked in self._pending.items() if now - asked.at > PENDING_FOR]:
            del self._pending[stale]
        for key, followed in list(self.peers.items()):
            await self._step(key, followed, now)
        if self.peers and self._endpoints is not None and now >= self._next_check:
            self._next_check = now + CHECK_EVERY
            await self._check_roaming(await self._endpoints())

    async def _step(self, key: str, followed: _Followed, now: float) -> None:
        """One peer's tick: its mode decided, its pings and pairing probes sent, its endpoint set."""
        path = followed.path
        mode = decide(path, now)
        if mode is not path.mode:
            heard = _fmt(path.heard) if mode is Mode.DIRECT else ""
            log.info(f"nat path: {mode.value}", peer=key[:8], was=path.mode.value,
                     after=round(now - path.since, 2), heard=heard)  # fmt: skip
            path.mode, path.since = mode, now
        if path.wants_relay(now) and now - followed.last_pair_probe >= RELAY_PROBE_EVERY:
            followed.last_pair_probe = now
            for relay in path.relays:
                self._probe(relay, followed.raw_key)
        if now - followed.last_ping >= PING_EVERY[path.mode.value]:
            followed.last_ping = now
            for addr in path.candidates():
                self._send(addr, followed.raw_key, Kind.PING)
        endpoint = path.endpoint(now)
        if endpoint != followed.configured and now - followed.failed_at >= RETRY_AFTER:
            try:
                await self._set_endpoint(key, endpoint, handshake_now(path.mode, self.keys.public, followed.raw_key))
            except Exception as exc:  # this peer tries again later; the others go on
                followed.failed_at = now
                log.warning("nat path: setting the wireguard endpoint failed", peer=key[:8], error=str(exc))
                return
            followed.configured = endpoint
            log.info("nat path: wireguard endpoint set", peer=key[:8], endpoint=_fmt(endpoint),
                     mode=path.mode.value)  # fmt: skip

    async def _check_roaming(self, actual: dict[str, Address]) -> None:
        """WireGuard's endpoints as they are, where they differ from what this path set: it moves
        a peer's endpoint to wherever its last packet came from (one relayed packet arriving
        after the switch to direct leaves it on a relay that stops pairing the two once neither
        asks), and a wireguard-go restarted under it is given the addresses first told. Seen,
        the next tick sets the endpoint this path decides (where the peer roamed for good, its
        pings are heard from there within PING_EVERY, and that is what is decided)."""
        for key, followed in self.peers.items():
            now_at = actual.get(key)
            if now_at is not None and followed.configured is not None and now_at != followed.configured:
                log.info("nat path: wireguard's endpoint had moved", peer=key[:8], endpoint=_fmt(now_at),
                         expected=_fmt(followed.configured))  # fmt: skip
                followed.configured = now_at

    # Sending and receiving -----------------------------------------------------------
    def _stamp(self) -> int:
        self._timestamp = max(time.time_ns(), self._timestamp + 1)
        return self._timestamp

    def _send(self, to: Address, to_key: bytes, kind: Kind, nonce: bytes = b"", **body: object) -> bytes:
        """A message of KIND to the holder of TO_KEY at TO; a PING's nonce is kept for its PONG."""
        nonce = nonce or os.urandom(12)
        msg = Message(kind, self.keys.public, nonce, self._stamp(), **body)  # type: ignore[arg-type]
        try:
            data = encode(self.keys, to_key, msg)
        except ValueError as exc:  # a key no X25519 can be made with (named by a peer or a record)
            log.warning("nat traversal: a key that is no WireGuard key", key=base64.b64encode(to_key).decode()[:8],
                        error=str(exc))  # fmt: skip
            return nonce
        if kind is Kind.PING:
            self._pending[nonce] = _Asked(kind, to_key, NO_KEY, self._clock())
        self._port_open().send(to, data)
        return nonce

    def _probe(self, relay: RelayRef, pair_with: bytes) -> None:
        if pair_with == NO_KEY:
            self._probed[relay.key] = self._clock()
        relay_key = base64.b64decode(relay.key)
        cookie = self._cookies.get(relay.key, NO_COOKIE)
        nonce = self._send(relay.address, relay_key, Kind.PROBE, key=pair_with, cookie=cookie)
        self._pending[nonce] = _Asked(Kind.PROBE, relay_key, pair_with, self._clock(), relay, cookie)

    def _receive(self) -> None:
        if self._port is None:
            return
        for source, data in self._port.read():
            try:
                msg = decode(self.keys, data)
            except MessageError:
                continue
            self._handle(source, msg)

    def _handle(self, source: Address, msg: Message) -> None:
        now = self._clock()
        sender = base64.b64encode(msg.sender).decode()
        if msg.kind is Kind.PING:
            followed = self.peers.get(sender)
            if followed is None or not self._fresh.fresh(msg):
                return
            self._send(source, msg.sender, Kind.PONG, nonce=msg.nonce, address=source)
            followed.path.heard, followed.path.heard_at = source, now
            return
        asked = self._pending.get(msg.nonce)
        if asked is None or asked.to != msg.sender:
            return  # unasked, answered already, or not from whom it was asked of
        del self._pending[msg.nonce]
        if msg.kind is Kind.PONG and asked.kind is Kind.PING:
            followed = self.peers.get(sender)
            if followed is not None:
                followed.path.heard, followed.path.heard_at = source, now
        elif msg.kind is Kind.MAPPED and asked.kind is Kind.PROBE and msg.address is not None:
            if self.mappings.get(sender) != msg.address:
                log.info("nat mapping learned", relay=sender[:8], mapping=_fmt(msg.address),
                         was=_fmt(self.mappings.get(sender)))  # fmt: skip
            self.mappings[sender] = msg.address
            self._answered.set()
            if msg.cookie != asked.cookie:
                # Not kept by the relay (first seen, a new mapping, the relay restarted): asked
                # again at once with the cookie that proves this address, not at the next probe.
                self._cookies[sender] = msg.cookie
                if asked.relay is not None:
                    self._probe(asked.relay, asked.pair_with)
                return
            if asked.pair_with != NO_KEY and msg.peer is not None:
                followed = self.peers.get(base64.b64encode(asked.pair_with).decode())
                if followed is not None:
                    followed.path.paired[sender] = (now, msg.peer)


def _fmt(addr: Address | None) -> str:
    if addr is None:
        return "none"
    return host_port(*addr)
