"""REMOTE mechanisms: their parameters, VNIs and MTUs. Pure.

A VXLAN mechanism carries `src_ip`/`src_port` (the client agent's side),
`dst_ip`/`dst_port` (the endpoint agent's side), `vni` and `MTU`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import random
from collections.abc import Container, Mapping
from dataclasses import dataclass

from nsm_agent.decisions.wireplan import MAX_MTU, MIN_MTU
from nsm_common.errors import invalid

VXLAN = "VXLAN"
WIREGUARD = "WIREGUARD"
VXLAN_PORT = 4789  # IANA's
WIREGUARD_PORT = 51820  # wg(8)'s customary listen port
MAX_PORT = 65535
VNI_MAX = (1 << 24) - 1
VXLAN_OVERHEAD = {4: 50, 6: 70}
WIREGUARD_OVERHEAD = {4: 60, 6: 80}
REJECT_AFTER_TIME = 180  # seconds: WireGuard sends with a session's keys no longer than this

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class VxlanParams:
    src_ip: IPAddress | None
    dst_ip: IPAddress | None
    src_port: int
    dst_port: int
    vni: int  # 0: not chosen yet
    mtu: int  # 0: not given


def _ip(params: Mapping[str, str], key: str, required: bool) -> IPAddress | None:
    value = params.get(key, "")
    if not value:
        if required:
            raise invalid(f"mechanism parameter {key} is missing")
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise invalid(f"mechanism parameter {key}={value!r} is not an IP address") from exc


def _int(params: Mapping[str, str], key: str, low: int, high: int, default: int) -> int:
    value = params.get(key, "")
    if not value:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise invalid(f"mechanism parameter {key}={value!r} is not a number in {low}..{high}")
    return int(value)


def parse_vxlan(params: Mapping[str, str], need_dst: bool, default_port: int = VXLAN_PORT) -> VxlanParams:
    """Check a VXLAN mechanism's parameters; the client's side must always be there."""
    src = _ip(params, "src_ip", required=True)
    dst = _ip(params, "dst_ip", required=need_dst)
    if src is not None and dst is not None and src.version != dst.version:
        raise invalid(f"mechanism src_ip {src} and dst_ip {dst} are of different families")
    return VxlanParams(
        src_ip=src,
        dst_ip=dst,
        src_port=_int(params, "src_port", 1, MAX_PORT, default_port),
        dst_port=_int(params, "dst_port", 1, MAX_PORT, default_port),
        vni=_int(params, "vni", 1, VNI_MAX, 0),
        mtu=_int(params, "MTU", MIN_MTU, MAX_MTU, 0),
    )


def parse_public_key(params: Mapping[str, str], key: str) -> bytes:
    """A WireGuard public key (base64 of 32 bytes) from a mechanism parameter, or INVALID_ARGUMENT naming it."""
    value = params.get(key, "")
    if not value:
        raise invalid(f"mechanism parameter {key} is missing")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"mechanism parameter {key} is not base64") from exc
    if len(raw) != 32:
        raise invalid(f"mechanism parameter {key} is {len(raw)} bytes, not a 32-byte WireGuard key")
    return raw


def pick_vni(taken: Container[int], proposal: int = 0, rng: random.Random | None = None) -> int:
    """`proposal` if it is free, else a random free VNI (random keeps two agents from racing to one)."""
    if proposal and proposal not in taken:
        return proposal
    r = rng or random.Random()
    for _ in range(10_000):
        vni = r.randint(4097, VNI_MAX)  # below 4097: where other CNIs (Calico 4096, Flannel 1) live
        if vni not in taken:
            return vni
    raise RuntimeError("no free VNI found")


def pod_mtu(underlay_mtu: int, family: int, overheads: Mapping[int, int]) -> int:
    """The pod interface MTU over a tunnel whose outer header is of `family`."""
    return underlay_mtu - overheads[family]


def inner_address(public_key: str) -> ipaddress.IPv6Address:
    """The node's address inside the WireGuard tunnels, derived from its public key
    so that every node computes every other node's without asking (a ULA /128)."""
    digest = hashlib.sha256(public_key.encode()).digest()
    return ipaddress.IPv6Address(b"\xfd" + digest[:15])


def device_name(public_key: str) -> str:
    """Unique per host: wireguard-go's control sockets share /var/run/wireguard."""
    return "nsmwg" + hashlib.sha1(public_key.encode()).hexdigest()[:10]


def has_session(latest_handshake: int, now: float) -> bool:
    """Whether a WireGuard peer whose last handshake completed at LATEST_HANDSHAKE (Unix
    seconds; 0 for never, as `wg show latest-handshakes` says) has keys to send with now."""
    return latest_handshake > 0 and now - latest_handshake < REJECT_AFTER_TIME
