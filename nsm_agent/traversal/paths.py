"""The runtime of NAT traversal on a node: its mapping learned from the reflectors, and one
path followed per WireGuard peer in another domain (`nsm_agent.decisions.traversal` decides;
this sends, listens and sets WireGuard's endpoint).

Everything is sent from the WireGuard port (`RawPort`), so that each NAT maps these
messages as it maps the tunnel, and every hole they open is the tunnel's. One task ticks
every TICK seconds; a mode change costs one `wg set` (a spawn, in a worker thread), never
one per connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from nsm_agent.decisions.traversal import (
    PING_EVERY,
    PROBE_EVERY,
    RELAY_PROBE_EVERY,
    Mode,
    PeerPath,
    RelayRef,
    decide,
)
from nsm_agent.traversal.messages import NO_KEY, Address, Freshness, Keys, Kind, Message, MessageError, decode, encode
from nsm_agent.traversal.rawudp import RawPort

log = structlog.get_logger("nsm.agent")

TICK = 0.1
RELAYS_EVERY = 1.0  # the relay source answers from the registry's watched copy: no round trip
PENDING_FOR = 5.0  # seconds an unanswered nonce is remembered


@dataclass
class _Followed:
    path: PeerPath
    raw_key: bytes
    configured: Address | None = None
    last_ping: float = -1e9
    last_pair_probe: float = -1e9
    switches: list[tuple[float, Mode]] = field(default_factory=list)


class Traversal:
    """SET_ENDPOINT(peer key, address) points WireGuard's peer there; RELAYS() names the relays of
    this domain (`RelayFinder`, asked each RELAYS_EVERY)."""

    def __init__(
        self,
        keys: Keys,
        raw: RawPort,
        set_endpoint: Callable[[str, Address], Awaitable[None]],
        relays: Callable[[], Awaitable[list[RelayRef]]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.raw = raw
        self._set_endpoint = set_endpoint
        self._relays_source = relays
        self._clock = clock
        self.relays: list[RelayRef] = []
        self.mapping: Address | None = None  # this node's WireGuard port as the first relay sees it
        self.peers: dict[str, _Followed] = {}
        self._probed: dict[Address, float] = {}
        self._pending: dict[bytes, tuple[Kind, bytes, float]] = {}  # nonce -> what, to whom, when
        self._fresh = Freshness()
        self._timestamp = 0
        self._task: asyncio.Task[None] | None = None
        self._learned = asyncio.Event()
        self._next_relays = -1e9

    # Lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.raw.sock.fileno(), self._receive)
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.raw.sock.fileno())
        self.raw.close()

    # What the tunnels ask ----------------------------------------------------------
    async def ready(self, also: RelayRef | None = None, timeout: float = 1.0) -> Address | None:
        """This node's mapping: learned already, or asked now (TIMEOUT at most) of this domain's
        relays and of ALSO, the relay a peer named (a domain may have none of its own)."""
        if self.mapping is None:
            # Asked again now: a relay may have registered since the last tick (the finder
            # answers from the registry's watched copy, and keeps a round trip's answer a while).
            await self._refresh_relays(force=True)
            asked = [*self.relays, *([also] if also is not None else [])]
            for relay in asked:
                self._probe(relay, NO_KEY)
            if not asked:
                return None  # no reflector anywhere: the node's --public-ip, if any, stands
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._learned.wait(), timeout)
        return self.mapping

    def offered_relay(self) -> RelayRef | None:
        """The relay this node offers its peers: the first of its domain's."""
        return self.relays[0] if self.relays else None

    def follow(self, peer_key: str, told: Address, relay: RelayRef | None) -> None:
        """Follow the path to PEER_KEY, told to be at TOLD; RELAY is the one both ends agreed on."""
        known = self.peers.get(peer_key)
        if known is not None and known.path.told == told and known.path.relay == relay:
            return
        now = self._clock()
        path = PeerPath(told=told, relay=relay, since=now)
        # WireGuard's endpoint as it is now: told, when use_peer just set it (a peer new, or
        # told a new address); else what this path set last.
        configured = told if known is None or known.path.told != told else known.configured
        if known is not None:  # told anew (a new mapping, another relay): what was heard stays
            path.mode, path.heard, path.heard_at = known.path.mode, known.path.heard, known.path.heard_at
        followed = self.peers[peer_key] = _Followed(
            path, base64.b64decode(peer_key), configured=configured, last_ping=now
        )
        # At once, not at the next tick: on the endpoint's node this runs before the answer
        # goes back, so this NAT's hole toward the client is open before the client's
        # WireGuard sends its first handshake (lost, it would be retried only after 5 s).
        for addr in path.candidates():
            self._send(addr, followed.raw_key, Kind.PING)
        log.info("nat path: following", peer=peer_key[:8], told=_fmt(told), relay=str(relay) if relay else "none")

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
            except Exception as exc:  # one bad tick (a failed `wg set`) must not end traversal
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
        await self._refresh_relays()
        used = {f.path.relay for f in self.peers.values() if f.path.relay is not None}
        for relay in [*self.relays, *sorted(used - set(self.relays), key=str)]:
            if now - self._probed.get(relay.address, -1e9) >= PROBE_EVERY:
                self._probe(relay, NO_KEY)
        for stale in [n for n, (_, _, at) in self._pending.items() if now - at > PENDING_FOR]:
            del self._pending[stale]
        for key, followed in list(self.peers.items()):
            path = followed.path
            mode = decide(path, now)
            if mode is not path.mode:
                heard = _fmt(path.heard) if mode is Mode.DIRECT else ""
                log.info(f"nat path: {mode.value}", peer=key[:8], was=path.mode.value,
                         after=round(now - path.since, 2), heard=heard)  # fmt: skip
                path.mode, path.since = mode, now
                followed.switches.append((now, mode))
            if path.relay is not None and path.wants_relay(now) and now - followed.last_pair_probe >= RELAY_PROBE_EVERY:
                followed.last_pair_probe = now
                self._probe(path.relay, followed.raw_key)
            if now - followed.last_ping >= PING_EVERY[path.mode.value]:
                followed.last_ping = now
                for addr in path.candidates():
                    self._send(addr, followed.raw_key, Kind.PING)
            endpoint = path.endpoint()
            if endpoint != followed.configured:
                await self._set_endpoint(key, endpoint)
                followed.configured = endpoint
                log.info(
                    "nat path: wireguard endpoint set", peer=key[:8], endpoint=_fmt(endpoint), mode=path.mode.value
                )

    # Sending and receiving -----------------------------------------------------------
    def _stamp(self) -> int:
        self._timestamp = max(time.time_ns(), self._timestamp + 1)
        return self._timestamp

    def _send(self, to: Address, to_key: bytes, kind: Kind, nonce: bytes = b"", **body: object) -> bytes:
        """MSG to the holder of TO_KEY at TO; a PING's nonce is remembered for its PONG."""
        nonce = nonce or os.urandom(12)
        msg = Message(kind, self.keys.public, nonce, self._stamp(), **body)  # type: ignore[arg-type]
        if kind is Kind.PING:
            self._pending[nonce] = (kind, to_key, self._clock())
        self.raw.send(to, encode(self.keys, to_key, msg))
        return nonce

    def _probe(self, relay: RelayRef, pair_with: bytes) -> None:
        if pair_with == NO_KEY:
            self._probed[relay.address] = self._clock()
        nonce = self._send(relay.address, base64.b64decode(relay.key), Kind.PROBE, key=pair_with)
        self._pending[nonce] = (Kind.PROBE, pair_with, self._clock())

    def _receive(self) -> None:
        for source, data in self.raw.read():
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
            self._heard(followed, source, now)
            return
        pending = self._pending.pop(msg.nonce, None)
        if pending is None:
            return  # unasked, or answered already
        kind, key, _ = pending
        if msg.kind is Kind.PONG and kind is Kind.PING:
            followed = self.peers.get(sender)
            if followed is not None:
                self._heard(followed, source, now)
        elif msg.kind is Kind.MAPPED and kind is Kind.PROBE and msg.address is not None:
            first = self.relays[0].key if self.relays else sender
            if sender == first or self.mapping is None:
                if msg.address != self.mapping:
                    log.info("nat mapping learned", mapping=_fmt(msg.address), was=_fmt(self.mapping))
                self.mapping = msg.address
                self._learned.set()
            if key != NO_KEY and msg.peer is not None:
                followed = self.peers.get(base64.b64encode(key).decode())
                if followed is not None:
                    followed.path.relay_peer, followed.path.paired_at = msg.peer, now

    def _heard(self, followed: _Followed, source: Address, now: float) -> None:
        followed.path.heard, followed.path.heard_at = source, now


def _fmt(addr: Address | None) -> str:
    if addr is None:
        return "none"
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
