"""The path MTU to another node, probed: ICMP echoes with Don't Fragment set, halving the
gap between what got through and what did not.

Inside a domain the underlay's MTU is known; across the internet it is not (a tunnel, a
PPPoE link, a cloud's 1:1 NAT in between), and a tunnel sized past it loses every full
packet silently where ICMP "fragmentation needed" is filtered. The probe runs in a thread
(a few round trips, on the first connection to a node, then kept a while), never on the
event loop or the netlink thread.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("nsm.agent")

# Linux: set DF and ignore the route's cached path MTU (send what is asked, or EMSGSIZE
# past the interface's own MTU).
IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3
IPV6_PMTUDISC_PROBE = 3
IPV6_MTU_DISCOVER = 23
HEADERS = {4: 20 + 8, 6: 40 + 8}  # IP header + ICMP echo header
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
LOWEST = {4: 1280, 6: 1280}  # below this no tunnel is worth building (IPv6's own minimum)
KEEP_FOR = 600.0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo(family: int, ident: int, seq: int, size: int) -> bytes:
    payload = os.urandom(max(0, size - HEADERS[family]))
    header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == 6:
        return header + payload  # the kernel fills in ICMPv6's checksum
    return struct.pack("!BBHHH", ECHO_REQUEST[4], 0, _checksum(header + payload), ident, seq) + payload


def _answered(sock: socket.socket, family: int, ident: int, seq: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return False
        data = sock.recv(65535)
        icmp = data[(data[0] & 0x0F) * 4 :] if family == 4 else data  # a raw IPv4 socket gets the IP header
        if len(icmp) >= 8:
            kind, _, _, got_id, got_seq = struct.unpack("!BBHHH", icmp[:8])
            if kind == ECHO_REPLY[family] and got_id == ident and got_seq == seq:
                return True
    return False


def probe(address: str, highest: int, timeout: float = 0.2) -> int | None:
    """The largest IP packet (bytes) that reaches ADDRESS and comes back with DF set, at most
    HIGHEST; None when not even the family's smallest is answered (ICMP filtered: unknown)."""
    family = ipaddress.ip_address(address).version
    af, proto = (socket.AF_INET, socket.IPPROTO_ICMP) if family == 4 else (socket.AF_INET6, socket.IPPROTO_ICMPV6)
    ident = os.getpid() & 0xFFFF
    with socket.socket(af, socket.SOCK_RAW, proto) as sock:
        if family == 4:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
        sock.connect((address, 0))
        seq = 0

        def passes(size: int, tries: int = 1) -> bool:
            nonlocal seq
            for _ in range(tries):
                seq = (seq + 1) & 0xFFFF
                try:
                    sock.send(_echo(family, ident, seq, size))
                    if _answered(sock, family, ident, seq, timeout):
                        return True
                except OSError as exc:
                    # EMSGSIZE: past this node's own interface, or a router on the way said
                    # "fragmentation needed" (queued on the socket, raised by the next call).
                    if exc.errno != errno.EMSGSIZE:
                        raise
                    return False
            return False

        low = LOWEST[family]
        if not passes(low, tries=3):  # a lost echo is not a filter: the smallest is asked again
            return None
        if passes(highest):
            return highest
        high = highest  # low passes, high does not
        while high - low > 8:
            mid = (low + high) // 2
            if passes(mid):
                low = mid
            else:
                high = mid
        return low


@dataclass
class PathMtus:
    """Probed path MTUs per address, kept KEEP_FOR seconds; a probe at a time per address."""

    highest: int
    _known: dict[str, tuple[int | None, float]] = field(default_factory=dict)
    _probing: dict[str, asyncio.Future[int | None]] = field(default_factory=dict)

    async def to(self, address: str) -> int | None:
        """The path MTU to ADDRESS (None: its probes were not answered)."""
        known = self._known.get(address)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        running = self._probing.get(address)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._probing[address] = future
        try:
            t = time.perf_counter()
            found = await asyncio.to_thread(probe, address, self.highest)
            log.info("path MTU probed", to=address, mtu=found or "unknown (no answer)",
                     ms=round((time.perf_counter() - t) * 1000))  # fmt: skip
            self._known[address] = (found, time.monotonic() + KEEP_FOR)
            future.set_result(found)
            return found
        except OSError as exc:
            log.warning("path MTU probe failed", to=address, error=str(exc))
            future.set_result(None)
            return None
        finally:
            if not future.done():  # cancelled: whoever waits on this probe goes on without it
                future.set_result(None)
            del self._probing[address]
