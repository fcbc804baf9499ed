"""Data-plane liveness: ICMP echo from a pod's namespace to the far end of its connection.

One thread serves every connection a Prober watches (the keepers of one process
share one): it opens one raw socket per (namespace, family), sends one echo per
target per interval and reads the replies with select(). A few hundred bytes a
second per target, and no process per probe.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from nsm_common.netns import inside

ICMP_ECHO, ICMP_REPLY = 8, 0
ICMP6_ECHO, ICMP6_REPLY = 128, 129


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_packet(version: int, ident: int, seq: int) -> bytes:
    """An ICMP (v4) or ICMPv6 echo request; the kernel fills in the ICMPv6 checksum."""
    kind = ICMP_ECHO if version == 4 else ICMP6_ECHO
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    payload = b"nsm-probe"
    if version == 6:
        return header + payload  # the kernel fills the ICMPv6 checksum
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload


@dataclass
class _Target:
    netns: str
    address: str
    version: int
    ident: int
    started: float
    last_reply: float = 0.0


class Prober:
    """ICMP echo to each watched target every `interval`, from inside its namespace, on one thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._targets: dict[str, _Target] = {}
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._next_ident = (os.getpid() & 0x7FFF) << 1
        self._thread.start()

    def watch(self, key: str, netns: str, address: str) -> None:
        version = ipaddress.ip_address(address).version
        with self._lock:
            self._next_ident = (self._next_ident + 1) & 0xFFFF
            self._targets[key] = _Target(netns, address, version, self._next_ident, time.monotonic())

    def unwatch(self, key: str) -> None:
        with self._lock:
            self._targets.pop(key, None)

    def silent_for(self, key: str) -> float:
        """Seconds since the last reply (or since watching began)."""
        with self._lock:
            t = self._targets.get(key)
            if t is None:
                return 0.0
            return time.monotonic() - max(t.last_reply, t.started)

    def answered(self, key: str) -> bool:
        """A reply came since watching (re)began: the far end is reached."""
        with self._lock:
            t = self._targets.get(key)
            return t is not None and t.last_reply > t.started

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in self._sockets.values():
            s.close()

    def _socket(self, netns: str, version: int) -> socket.socket:
        key = (netns, version)
        sock = self._sockets.get(key)
        if sock is None:
            # A socket belongs to the namespace it was opened in.
            sock = inside(netns, lambda: _icmp_socket(version))
            self._sockets[key] = sock
        return sock

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            tick = time.monotonic()
            seq = (seq + 1) & 0xFFFF
            with self._lock:
                targets = list(self._targets.values())
            by_socket: dict[socket.socket, tuple[int, list[_Target]]] = {}
            for t in targets:
                try:
                    sock = self._socket(t.netns, t.version)
                    sock.sendto(echo_packet(t.version, t.ident, seq), (t.address, 0))
                except OSError:
                    continue  # the namespace or the route is gone: silence says so
                by_socket.setdefault(sock, (t.version, []))[1].append(t)
            deadline = tick + self.interval
            while (left := deadline - time.monotonic()) > 0 and by_socket:
                ready, _, _ = select.select(list(by_socket), [], [], left)
                for sock in ready:
                    version, waiting = by_socket[sock]
                    self._read(sock, version, waiting)
            time.sleep(max(0.0, deadline - time.monotonic()))

    def _read(self, sock: socket.socket, version: int, waiting: list[_Target]) -> None:
        while True:
            try:
                data, _ = sock.recvfrom(2048)
            except (BlockingIOError, OSError):
                return
            icmp = data[(data[0] & 0x0F) * 4 :] if version == 4 else data  # IPv4 raw sockets include the IP header
            if len(icmp) < 8:
                continue
            kind, _, _, ident, _ = struct.unpack("!BBHHH", icmp[:8])
            if kind != (ICMP_REPLY if version == 4 else ICMP6_REPLY):
                continue
            now = time.monotonic()
            with self._lock:
                for t in waiting:
                    if t.ident == ident:
                        t.last_reply = now


def _icmp_socket(version: int) -> socket.socket:
    if version == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setblocking(False)
    # One reply per target arrives in a burst each interval: room for thousands.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock
