"""Sending and receiving on the WireGuard device's UDP port, which WireGuard holds.

A NAT maps a flow by its source port: to learn the mapping of the tunnel, and to punch a
hole for it, the messages must leave from the tunnel's own port. Raw sockets do that:
sending, with a UDP header of our making; receiving, as a copy of every UDP packet the node
gets, before WireGuard drops what it does not understand. A socket filter in the kernel
keeps only packets to our port that start with the traversal magic, so the tunnel's own
traffic never reaches Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import struct

from nsm_agent.traversal.messages import MAGIC, Address

SO_ATTACH_FILTER = 26
IPV6_CHECKSUM = 7
_UDP = struct.Struct("!HHHH")

# Classic BPF opcodes.
_LD_W_ABS, _LD_H_ABS = 0x20, 0x28
_LD_W_IND, _LD_H_IND = 0x40, 0x48
_LDX_MSH = 0xB1
_JEQ_K = 0x15
_RET_K = 0x06


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Insn))]


def _filter(family: int, port: int) -> list[tuple[int, int, int, int]]:
    """Keep UDP to PORT whose payload starts with MAGIC. An IPv4 raw socket's filter sees the
    IP header first (of variable length: the X register skips it); an IPv6 one, the UDP header."""
    magic = int.from_bytes(MAGIC, "big")
    if family == 4:
        return [
            (_LDX_MSH, 0, 0, 0),  # X = IP header length
            (_LD_H_IND, 0, 0, 2),  # destination port
            (_JEQ_K, 0, 3, port),
            (_LD_W_IND, 0, 0, 8),  # first four payload bytes
            (_JEQ_K, 0, 1, magic),
            (_RET_K, 0, 0, 0xFFFF),
            (_RET_K, 0, 0, 0),
        ]
    return [
        (_LD_H_ABS, 0, 0, 2),
        (_JEQ_K, 0, 3, port),
        (_LD_W_ABS, 0, 0, 8),
        (_JEQ_K, 0, 1, magic),
        (_RET_K, 0, 0, 0xFFFF),
        (_RET_K, 0, 0, 0),
    ]


def _attach(sock: socket.socket, insns: list[tuple[int, int, int, int]]) -> None:
    array = (_Insn * len(insns))(*[_Insn(*i) for i in insns])
    prog = _Prog(len(insns), ctypes.cast(array, ctypes.POINTER(_Insn)))
    sock.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog)))
    )


class RawPort:
    """Traversal messages from and to UDP PORT, over IPv4 or IPv6 (FAMILY), in this namespace."""

    def __init__(self, family: int, port: int) -> None:
        self.family = family
        self.port = port
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        self.sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            if family == 6:
                # The kernel fills in the UDP checksum, which IPv6 requires (IPv4 lets it be 0).
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)
            # The filter before anything is read: no tunnel packet queues up in between.
            _attach(self.sock, _filter(family, port))
            self._drain()
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def _drain(self) -> None:
        """Drop what queued before the filter was attached."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(65535)
        except BlockingIOError:
            pass

    def send(self, to: Address, payload: bytes) -> None:
        header = _UDP.pack(self.port, to[1], _UDP.size + len(payload), 0)
        with contextlib.suppress(OSError):  # no route, a full queue: a lost datagram, which senders expect
            self.sock.sendto(header + payload, (to[0], 0))

    def read(self) -> list[tuple[Address, bytes]]:
        """The messages waiting (non-blocking), with their source addresses."""
        out: list[tuple[Address, bytes]] = []
        while True:
            try:
                data, src = self.sock.recvfrom(65535)
            except BlockingIOError:
                return out
            except OSError:
                return out
            if self.family == 4:
                data = data[(data[0] & 0x0F) * 4 :]
            if len(data) < _UDP.size:
                continue
            sport, dport, _, _ = _UDP.unpack_from(data)
            if dport == self.port:
                out.append(((str(ipaddress.ip_address(src[0])), sport), data[_UDP.size :]))

    def close(self) -> None:
        self.sock.close()
