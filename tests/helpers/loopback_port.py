"""A node's WireGuard port for traversal tests without root: a plain UDP socket on loopback.

The agent reads and writes its port through a raw socket beside WireGuard's (`RawPort`);
this stands in for it where no WireGuard runs, with `blocked` for a NAT in the way.
"""

from __future__ import annotations

import contextlib
import socket

from nsm_agent.traversal.messages import Address


class LoopbackPort:
    """A node's port as a plain UDP socket; `blocked` drops what it sends there (a NAT in the way)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address: Address = ("127.0.0.1", self.sock.getsockname()[1])
        self.blocked: set[Address] = set()

    def send(self, to: Address, payload: bytes) -> None:
        if to not in self.blocked:
            with contextlib.suppress(OSError):  # as RawPort: unreachable is a lost datagram
                self.sock.sendto(payload, to)

    def read(self) -> list[tuple[Address, bytes]]:
        out: list[tuple[Address, bytes]] = []
        while True:
            try:
                data, src = self.sock.recvfrom(65535)
            except BlockingIOError:
                return out
            out.append(((src[0], src[1]), data))

    def close(self) -> None:
        self.sock.close()
