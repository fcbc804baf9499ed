"""This node's side of tunnels: its underlay address and MTU, and its VNIs."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from nsm_agent.datapath import vxlan
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.tunnel import pick_vni


@dataclass
class Underlay:
    ip: str
    mtu: int

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.ip).version


def find_underlay(nl: NetlinkThread, tunnel_ip: str) -> Underlay | None:
    """The tunnel address given, or that of the default-route interface; and its interface's MTU."""
    ipr = nl.node()
    if not tunnel_ip:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_default_routes(family=family):
                oif = route.get("RTA_OIF")
                addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=oif, family=family)] if oif else []
                usable = [a for a in addrs if a and not ipaddress.ip_address(a).is_link_local]
                if usable:
                    tunnel_ip = usable[0]
                    break
            if tunnel_ip:
                break
    if not tunnel_ip:
        return None
    for addr in ipr.get_addr():
        if addr.get("IFA_ADDRESS") == tunnel_ip or addr.get("IFA_LOCAL") == tunnel_ip:
            link = ipr.get_links(addr["index"])[0]
            return Underlay(tunnel_ip, int(link.get("mtu")))
    raise ValueError(f"--tunnel-ip {tunnel_ip} is not an address of this node")


@dataclass
class VniBook:
    """VNIs this agent holds on its node, and the check against the kernel's."""

    port: int
    held: dict[int, str] = field(default_factory=dict)  # vni -> connection id
    # The VNIs the kernel has on this port here (the datapath; a fake in tests).
    scan: Callable[[NetlinkThread, int], set[int]] = vxlan.vnis_in_use

    def reserve(self, nl: NetlinkThread, conn_id: str, proposal: int = 0) -> int:
        """A VNI free on this node (the proposal if it is), held for `conn_id`."""
        taken = set(self.held) | self.scan(nl, self.port)
        vni = pick_vni(taken, proposal)
        self.held[vni] = conn_id
        return vni

    def take(self, nl: NetlinkThread, conn_id: str, vni: int) -> bool:
        """Hold exactly `vni` if it is free here."""
        if self.held.get(vni) == conn_id:
            return True
        if vni in self.held or vni in self.scan(nl, self.port):
            return False
        self.held[vni] = conn_id
        return True

    def release(self, vni: int, conn_id: str) -> None:
        if self.held.get(vni) == conn_id:
            del self.held[vni]
