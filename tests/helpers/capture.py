"""Packets seen on an interface inside a namespace of the test's own, decoded by scapy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from scapy.all import AsyncSniffer, Packet
from scapy.arch.linux import L2ListenSocket

from nsm_common.netns import inside


@contextmanager
def capture(netns: str, iface: str) -> Iterator[list[Packet]]:
    """Everything `iface` in `netns` sends and receives while the block runs (the list fills at its end).

    The packet socket is opened inside the namespace and stays bound there; the
    sniffing thread may run anywhere. Not promiscuous: scapy would look the
    interface up among the host's, and the node's own traffic is what we want.
    """
    sock = inside(f"/var/run/netns/{netns}", lambda: L2ListenSocket(iface=iface, promisc=False))
    sniffer = AsyncSniffer(opened_socket=sock, store=True)
    sniffer.start()
    packets: list[Packet] = []
    try:
        yield packets
    finally:
        sniffer.stop()
        packets.extend(sniffer.results or [])
        sock.close()
