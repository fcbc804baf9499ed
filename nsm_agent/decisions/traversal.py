"""Which path a tunnel to a node of another domain takes: direct through both NATs, or by a
relay. Pure: the runtime (nsm_agent/traversal/paths.py) tells it what was heard and when,
and does what it says.

A path is direct once the peer's ping (or its answer to ours) is heard on it: our NAT let
it in, so we have sent to where it came from; and the peer's NAT, which it left by, lets in
our packets from where it was sent to. Both have a hole open for the other. Where none is
heard for PUNCH_FOR seconds, and a relay both ends asked has paired them, traffic goes by
the relay while pings go on trying the direct path, which takes over again when one is
heard. A direct path that falls silent
(a NAT restarted, its mapping gone) is tried afresh, by the relay meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from nsm_common.errors import invalid
from nsm_common.urls import host_port

PUNCH_FOR = 3.0  # seconds of pings unanswered before the relay carries the traffic
PING_EVERY = {"punching": 0.5, "direct": 2.0, "relayed": 1.0}  # by Mode's value
DEAD_AFTER = 6.0  # seconds of silence on a direct path: three pings unanswered
PROBE_EVERY = 15.0  # keeps a NAT's mapping toward the relay (an unanswered UDP entry lives 30 s)
RELAY_PROBE_EVERY = 1.0  # while a pairing is wanted
MAX_PORT = 65535

Address = tuple[str, int]


class Mode(Enum):
    PUNCHING = "punching"
    DIRECT = "direct"
    RELAYED = "relayed"


@dataclass(frozen=True)
class RelayRef:
    """A relay as the mechanism names it: `ip:port` and the relay's WireGuard key."""

    address: Address
    key: str

    def __str__(self) -> str:
        return host_port(*self.address)


def parse_address(value: str, what: str) -> Address:
    """`IP:PORT` or `[IPv6]:PORT`, or INVALID_ARGUMENT naming WHAT."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise invalid(f"{what}={value!r} is not IP:PORT") from None
    if not sep or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
        raise invalid(f"{what}={value!r} has no port in 1..{MAX_PORT}")
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        # Named by a peer in another domain: this node would send there every second.
        raise invalid(f"{what}={value!r} is a loopback, unspecified, multicast or link-local address")
    return str(ip), int(port)


def parse_relay(params: Mapping[str, str], prefix: str) -> RelayRef | None:
    """The relay a side names (`{prefix}_relay`, `{prefix}_relay_key`), if it names one."""
    value = params.get(f"{prefix}_relay", "")
    if not value:
        return None
    address = parse_address(value, f"{prefix}_relay")
    key = params.get(f"{prefix}_relay_key", "")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise invalid(f"mechanism parameter {prefix}_relay_key is not a 32-byte WireGuard key in base64")
    return RelayRef(address, key)


def relay_params(relay: RelayRef, prefix: str) -> dict[str, str]:
    return {f"{prefix}_relay": str(relay), f"{prefix}_relay_key": relay.key}


def agreed_relays(params: Mapping[str, str]) -> tuple[RelayRef, ...]:
    """The relays both ends ask for a pairing: each relay either side named, ordered by key.
    Both ends, and a connection each way between the same two nodes, compute the same; and
    a pair relayed by two relays at once works (each forwards between them)."""
    named = {r.key: r for r in (parse_relay(params, "src"), parse_relay(params, "dst")) if r is not None}
    return tuple(named[k] for k in sorted(named))


@dataclass
class PeerPath:
    """What is known of the path to one peer node."""

    told: Address  # the peer's mapping, as the mechanism gave it
    relays: tuple[RelayRef, ...] = ()  # asked for a pairing, in this order of preference
    mode: Mode = Mode.PUNCHING
    since: float = 0.0  # when this mode began
    heard: Address | None = None  # where the peer's last ping or pong came from
    heard_at: float = -1e9
    paired: dict[str, tuple[float, Address]] = field(default_factory=dict)  # relay key -> (when, peer seen at)

    def candidates(self) -> list[Address]:
        """Where to ping the peer: where it was last heard, as told, as each relay sees it."""
        out: list[Address] = []
        for addr in (self.heard, self.told, *(seen for _, seen in self.paired.values())):
            if addr is not None and addr not in out:
                out.append(addr)
        return out

    def paired_relay(self, now: float) -> RelayRef | None:
        """The first relay that said lately it pairs the two (a dead relay stops saying so)."""
        return next((r for r in self.relays if now - self.paired.get(r.key, (-1e9,))[0] <= DEAD_AFTER), None)

    def wants_relay(self, now: float) -> bool:
        """Whether to ask the relays for a pairing now: not while a direct path is heard."""
        if not self.relays:
            return False
        if self.mode is Mode.RELAYED:
            return True
        if self.mode is Mode.PUNCHING:
            return now - self.since >= PUNCH_FOR / 3  # early, so that the pairing is ready in time
        return now - self.heard_at > DEAD_AFTER / 2

    def endpoint(self, now: float) -> Address:
        """Where WireGuard sends to the peer in this mode."""
        relay = self.paired_relay(now) if self.mode is Mode.RELAYED else None
        if relay is not None:
            return relay.address
        return self.heard if self.mode is Mode.DIRECT and self.heard is not None else self.told


def carried_path(told: Address, relays: tuple[RelayRef, ...], kept: Address, now: float) -> PeerPath:
    """The path to a peer whose tunnel a restart carried on, WireGuard still sending to KEPT:
    presumed as the last run left it, so that its first tick does not move a working tunnel
    back to TOLD. At one of RELAYS: relayed, as if that relay had just said it pairs the two
    (its pairing is asked again at once, and lapses in DEAD_AFTER unless it answers). Else:
    direct, as if the peer had just been heard at KEPT (it lapses likewise unless it is)."""
    path = PeerPath(told=told, relays=relays, since=now)
    relay = next((r for r in relays if r.address == kept), None)
    if relay is not None:
        path.mode, path.paired[relay.key] = Mode.RELAYED, (now, told)
    elif kept != told:
        path.mode, path.heard, path.heard_at = Mode.DIRECT, kept, now
    return path


def handshake_now(mode: Mode, own_key: bytes, peer_key: bytes) -> bool:
    """Whether WireGuard should start a handshake at once where the endpoint moves (else its
    next one, up to 5 s off, goes there). Only onto a relay: the path was silent for PUNCH_FOR
    or DEAD_AFTER, so no handshake is under way that starting anew would throw away (a move to
    where a direct peer was heard comes a round trip after one began). And from one end only,
    the one with the lower key: two initiations that cross each replace the other's handshake,
    and both are lost."""
    return mode is Mode.RELAYED and own_key < peer_key


def decide(path: PeerPath, now: float) -> Mode:
    """The mode the path should be in now."""
    if now - path.heard_at <= DEAD_AFTER:
        return Mode.DIRECT
    paired = path.paired_relay(now) is not None
    if path.mode is Mode.PUNCHING and now - path.since < PUNCH_FOR:
        return Mode.PUNCHING
    # Punched in vain, or a direct path gone silent: the relay carries the traffic meanwhile,
    # if one pairs the two; pings go on trying direct either way.
    return Mode.RELAYED if paired else Mode.PUNCHING
