"""Several clusters, each behind its own router, joined by a shared "internet": the
interdomain test bed.

    python -m testbed.cluster --clusters 3 [--nodes 2] [--ipv6] [--nat [--symmetric]]

Every cluster has the same private underlay (10.0.0.0/24: nodes .1, .2, ..., its registry
.253, its router .254; with IPv6 fd00:10::/64, the same hosts in hex) and a domain of its
own (`cluster1`, `cluster2`, ...). Its router joins the internet bridge (203.0.113.0/24,
or 2001:db8:113::/64) and gives each node and the registry a public address of its own,
forwarded one to one (a cloud's 1:1 NAT, NAT66 for IPv6): node I of cluster K is
203.0.113.(10K+I) outside, the registry 203.0.113.10K. The last cluster holds only a
floating registry (domain `floating`), when there are three or more.

NAT mode (`nat=True`, `--nat`) is a cloud's NAT gateway or a home router instead: cluster K's
router has one public address, 203.0.113.10K (IPv6: the same host number), shared by all
behind it. What leaves the underlay is masqueraded (`masquerade`: Linux keeps each source
port where it can, so each node's agent listens for WireGuard on a port of its own,
51820+I-1; `masquerade random` with `symmetric`: a new port per destination, as a symmetric
NAT). Only TCP control ports are forwarded in: ROUTER:5002 to the registry, ROUTER:(5100+I)
to node I's agent (port 5001), from inside too (hairpin). Anything else arriving from the
internet is dropped unless it answers what went out, so two nodes behind such routers reach
each other over UDP only by hole punching. `Federation.set_symmetric` switches a router's
mapping at run time and `Federation.flush_conntrack` forgets its mappings.
`Federation.add_public_node` adds a node of a domain with an address of its own on the
internet, no router between (203.0.113.(10K+9)): a relay for the nodes behind NATs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from testbed.bed import TRUST_DOMAIN, Testbed, run

# Per address family: every cluster's underlay (the same range in all), and the internet
# between them (documentation ranges), each with its prefix length.
PRIVATE = {4: ("10.0.0.{}", 24), 6: ("fd00:10::{:x}", 64)}
PUBLIC = {4: ("203.0.113.{}", 24), 6: ("2001:db8:113::{:x}", 64)}
REGISTRY_HOST = 253
ROUTER_HOST = 254
FLOATING = "floating"
REGISTRY_PORT = 5002
AGENT_PORT = 5001  # every agent's TCP port on its own address
WIREGUARD_PORT = 51820  # the agents' default
# NAT mode: where the router forwards node I's agent port (5100+I); and the public node's host
# number, the last of its cluster's ten public addresses.
NAT_CONTROL_PORT = 5100
PUBLIC_NODE_HOST = 9


def public_ip(cluster: int, host: int, family: int = 4) -> str:
    """Cluster K's public address of HOST (0: its registry)."""
    return PUBLIC[family][0].format(10 * cluster + host)


def private_ip(host: int, family: int = 4) -> str:
    return PRIVATE[family][0].format(host)


def _url(address: str, port: int) -> str:
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


@dataclass
class DomainNode:
    name: str
    netns: str
    private_ip: str  # a public node's is its public address
    public_ip: str  # its own (1:1 NAT, public node) or its router's (NAT mode)
    agent: str  # unix:// URL of its agent
    control_port: int = AGENT_PORT  # where other domains reach its agent at PUBLIC_IP
    wireguard_port: int = WIREGUARD_PORT  # its WireGuard device's own listen port

    @property
    def public_url(self) -> str:
        return _url(self.public_ip, self.control_port)


@dataclass
class Domain:
    """One cluster: its domain, its router, its registry, its nodes."""

    index: int
    name: str
    underlay_ns: str
    router_ns: str
    registry: str  # unix:// URL
    registry_public: str  # tcp:// URL other domains reach it at
    nodes: list[DomainNode] = field(default_factory=list)
    public_nodes: list[DomainNode] = field(default_factory=list)  # on the internet (`add_public_node`)


@dataclass
class Federation:
    bed: Testbed
    internet_ns: str = ""
    internet_mtu: int = 1500
    family: int = 4
    domains: list[Domain] = field(default_factory=list)
    trust_domains: dict[str, str] = field(default_factory=dict)  # domain name -> its trust domain
    bundles: bool = True
    nameserver: str = ""  # on the internet: the registries' DNS server (the caller starts it)
    floating: Domain | None = None
    nat: bool = False  # one shared public address per router, masquerade, no way in unasked

    @classmethod
    def build(
        cls,
        bed: Testbed,
        clusters: int = 3,
        nodes: int = 1,
        agent_args: list[str] | None = None,
        registry_args: dict[str, list[str]] | None = None,
        internet_mtu: int = 1500,
        trust_domains: dict[str, str] | None = None,
        bundles: bool = True,
        nameserver: str = "",
        family: int = 4,
        domain_agent_args: dict[str, list[str]] | None = None,
        nat: bool = False,
        symmetric: bool = False,
    ) -> Federation:
        """CLUSTERS clusters of NODES nodes each (the last only a floating registry when there
        are three or more); every registry knows every other by the static map, unless
        REGISTRY_ARGS (per domain name) says otherwise. INTERNET_MTU: the routers' links to the
        internet (the clusters' own are 1500), a path MTU only a probe finds. TRUST_DOMAINS: a
        trust domain (and CA) per domain name (else the bed's one); with BUNDLES every component
        trusts the other domains' CAs (`--trust-bundle`), without them none does. NAMESERVER: an
        address on the internet the registries ask DNS of (the caller starts the server there).
        FAMILY: 4, or 6 for IPv6 underlays and an IPv6 internet. DOMAIN_AGENT_ARGS: more flags for
        the agents of the domains named. NAT: each router is one NAT gateway for its cluster (see
        the module's docstring) instead of its 1:1 NAT; SYMMETRIC (only with NAT): a new public
        port per destination from the start (`set_symmetric`)."""
        if symmetric and not nat:
            raise ValueError("symmetric is a kind of NAT mode: it needs nat=True")
        fed = cls(bed, internet_mtu=internet_mtu, family=family, trust_domains=dict(trust_domains or {}),
                  bundles=bundles, nat=nat)  # fmt: skip
        fed.nameserver = nameserver
        fed.internet_ns = bed.netns("inet")
        run("ip", "-n", fed.internet_ns, "link", "add", "br0", "type", "bridge")
        if nameserver:  # a DNS server for the registries, to start in the internet's namespace
            run(
                "ip",
                "-n",
                fed.internet_ns,
                "addr",
                "add",
                f"{nameserver}/{PUBLIC[family][1]}",
                *fed._nodad,
                "dev",
                "br0",
            )
        run("ip", "-n", fed.internet_ns, "link", "set", "br0", "up")
        with_floating = clusters >= 3
        names = [f"cluster{k}" for k in range(1, clusters + (0 if with_floating else 1))]
        names += [FLOATING] if with_floating else []
        peers = {name: _url(public_ip(k, 0, family), REGISTRY_PORT) for k, name in enumerate(names, start=1)}
        for k, name in enumerate(names, start=1):
            args = [f"--domain={name}"]
            if name == FLOATING:
                args.append("--floating")
            else:
                args += [f"--domain-registry={d}={url}" for d, url in peers.items() if d != name]
            if registry_args and name in registry_args:
                args = [f"--domain={name}", *registry_args[name]]
            domain = fed._cluster(k, name, args + fed._bundle_args(name), symmetric)
            if name == FLOATING:
                fed.floating = domain
            else:
                for i in range(1, nodes + 1):
                    fed.add_node(domain, i, [*(agent_args or []), *(domain_agent_args or {}).get(name, [])])
            fed.domains.append(domain)
        return fed

    def trust_domain(self, name: str) -> str:
        return self.trust_domains.get(name, TRUST_DOMAIN)

    def _bundle_args(self, name: str) -> list[str]:
        """`--trust-bundle` for every other domain's trust domain (none without bundles)."""
        own = self.trust_domain(name)
        others = sorted({td for td in self.trust_domains.values() if td != own}) if self.bundles else []
        return [f"--trust-bundle={td}={self.bed.ca(td) / 'ca.crt'}" for td in others]

    @property
    def _nodad(self) -> list[str]:
        return ["nodad"] if self.family == 6 else []

    def _private(self, host: int) -> str:
        return private_ip(host, self.family)

    def _addr(self, netns: str, address: str, plen: int, dev: str) -> None:
        run("ip", "-n", netns, "addr", "add", f"{address}/{plen}", *self._nodad, "dev", dev)

    def domain(self, name: str) -> Domain:
        return next(d for d in self.domains if d.name == name)

    @property
    def _ip(self) -> str:
        """nftables' name of the family."""
        return "ip" if self.family == 4 else "ip6"

    def _cluster(self, k: int, name: str, registry_args: list[str], symmetric: bool = False) -> Domain:
        bed = self.bed
        ul = bed.netns(f"c{k}ul")
        router = bed.netns(f"c{k}rt")
        plen = PRIVATE[self.family][1]
        run("ip", "-n", ul, "link", "add", "br0", "type", "bridge")
        self._addr(ul, self._private(REGISTRY_HOST), plen, "br0")
        run("ip", "-n", ul, "link", "set", "br0", "up")
        run("ip", "-n", ul, "route", "add", "default", "via", self._private(ROUTER_HOST))
        # The router: one leg on the cluster's underlay, one on the internet.
        run("ip", "link", "add", "priv", "netns", router, "type", "veth", "peer", "name", "rt", "netns", ul)
        run("ip", "-n", ul, "link", "set", "rt", "master", "br0", "up")
        self._addr(router, self._private(ROUTER_HOST), plen, "priv")
        port = f"{bed.prefix}-c{k}"[-15:]
        run(
            "ip", "link", "add", "pub", "netns", router, "type", "veth", "peer", "name", port, "netns", self.internet_ns
        )
        run("ip", "-n", self.internet_ns, "link", "set", port, "mtu", str(self.internet_mtu), "master", "br0", "up")
        run("ip", "-n", router, "link", "set", "pub", "mtu", str(self.internet_mtu))
        for dev in ("priv", "pub"):
            run("ip", "-n", router, "link", "set", dev, "up")
        forwarding = "net.ipv4.ip_forward=1" if self.family == 4 else "net.ipv6.conf.all.forwarding=1"
        run("ip", "netns", "exec", router, "sysctl", "-qw", forwarding)
        if self.nat:
            self._gateway(router, k, symmetric)
        else:
            self._nat(router, k, REGISTRY_HOST, 0)
        domain = Domain(k, name, ul, router, "", _url(public_ip(k, 0, self.family), REGISTRY_PORT))
        if self.nameserver:
            bed.resolv_conf(ul, self.nameserver)
        _, domain.registry = bed.registry(
            ul, extra=["--listen", _url(self._private(REGISTRY_HOST), REGISTRY_PORT), *registry_args],
            name=f"registry-{name}",
            trust_domain=self.trust_domain(name),
        )  # fmt: skip
        return domain

    def _nat(self, router: str, k: int, host: int, public_host: int) -> None:
        """Forward public address 203.0.113.(10K+PUBLIC_HOST) to private HOST, both ways."""
        outside, inside = public_ip(k, public_host, self.family), self._private(host)
        self._addr(router, outside, PUBLIC[self.family][1], "pub")
        table, ip = f"nat{host}", ("ip" if self.family == 4 else "ip6")
        # From inside too (hairpin, as a cloud's NAT answers its own nodes): the router stands
        # in for the sender, so that the answer comes back through it.
        rules = f"""table {ip} {table} {{
  chain pre {{ type nat hook prerouting priority dstnat; {ip} daddr {outside} dnat to {inside}; }}
  chain post {{
    type nat hook postrouting priority srcnat;
    oifname "pub" {ip} saddr {inside} snat to {outside};
    iifname "priv" oifname "priv" {ip} daddr {inside} snat to {self._private(ROUTER_HOST)};
  }}
}}"""
        run("ip", "netns", "exec", router, "nft", "-f", "-", input_text=rules)

    def _gateway(self, router: str, k: int, symmetric: bool) -> None:
        """NAT mode: router K's one public address, the registry's port forwarded to it, the
        masquerade (`_masquerade`) and the filter of a NAT gateway."""
        outside, ip = public_ip(k, 0, self.family), self._ip
        self._addr(router, outside, PUBLIC[self.family][1], "pub")
        # Hairpin for every forward (`ct status dnat`: those only), as in `_nat`: the router
        # stands in for an inside sender, so that the answer comes back through it and is
        # translated back. The nodes' forwards join chain pre (`_forward`).
        rules = f"""table {ip} nat {{
  chain pre {{ type nat hook prerouting priority dstnat; }}
  chain post {{
    type nat hook postrouting priority srcnat;
    iifname "priv" oifname "priv" ct status dnat snat to {self._private(ROUTER_HOST)};
  }}
}}
table {ip} outbound {{
  chain post {{ type nat hook postrouting priority srcnat; }}
}}
table inet filter {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "pub" ct state established,related accept;
    iifname "pub" meta l4proto {{ icmp, ipv6-icmp }} accept;
    iifname "pub" drop;
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "pub" ct state established,related accept;
    iifname "pub" ct status dnat accept;
    iifname "pub" drop;
  }}
}}"""
        # Dropped in the filter, an unasked packet's conntrack entry is never confirmed: it
        # leaves nothing behind that a later packet from inside would count as an answer to
        # (what hole punching relies on: only the inside's own packets open the way).
        run("ip", "netns", "exec", router, "nft", "-f", "-", input_text=rules)
        self._forward(router, k, REGISTRY_PORT, REGISTRY_HOST, REGISTRY_PORT)
        self._masquerade(router, symmetric)

    def _forward(self, router: str, k: int, port: int, host: int, to_port: int) -> None:
        """NAT mode: TCP to router K's public PORT goes to private HOST's TO_PORT (from inside too)."""
        ip, inside = self._ip, self._private(host)
        to = f"[{inside}]:{to_port}" if self.family == 6 else f"{inside}:{to_port}"
        rule = f"add rule {ip} nat pre {ip} daddr {public_ip(k, 0, self.family)} tcp dport {port} dnat to {to}\n"
        run("ip", "netns", "exec", router, "nft", "-f", "-", input_text=rule)

    def _masquerade(self, router: str, symmetric: bool) -> None:
        """NAT mode: what leaves the underlay through "pub" takes the router's address; with
        SYMMETRIC a random port per connection (a new mapping per destination), else Linux keeps
        the source port unless another connection holds that mapping already."""
        ip = self._ip
        underlay = f"{self._private(0)}/{PRIVATE[self.family][1]}"
        # One transaction (`nft -f`): no packet ever meets the chain empty or with both rules.
        # Connections the kernel tracks already keep their mappings (`flush_conntrack`).
        rules = f"""flush chain {ip} outbound post
add rule {ip} outbound post oifname "pub" {ip} saddr {underlay} masquerade{" random" if symmetric else ""}
"""
        run("ip", "netns", "exec", router, "nft", "-f", "-", input_text=rules)

    def set_symmetric(self, domain: Domain, on: bool) -> None:
        """NAT mode: DOMAIN's router maps each new connection to a random port (ON: a symmetric
        NAT) or keeps source ports (off). Mappings made before stay until `flush_conntrack`."""
        if not self.nat:
            raise ValueError("set_symmetric: the federation is not in NAT mode")
        self._masquerade(domain.router_ns, on)

    def flush_conntrack(self, domain: Domain) -> None:
        """Forget every connection DOMAIN's router tracks: its mappings, and the holes punched in
        it (a NAT gateway's restart, or its idle timeouts, at once)."""
        run("ip", "netns", "exec", domain.router_ns, "conntrack", "-F")  # every family's

    def add_node(self, domain: Domain, i: int, agent_args: list[str] | None = None) -> DomainNode:
        """Node I of DOMAIN, its agent told its public URL (and, behind a 1:1 NAT, its public
        address; behind a NAT gateway it has none of its own to be told)."""
        bed = self.bed
        name = f"c{domain.index}n{i}"
        ns = bed.netns(name)
        port = f"{bed.prefix}-{name}"[-15:]
        run("ip", "link", "add", port, "netns", domain.underlay_ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", domain.underlay_ns, "link", "set", port, "master", "br0", "up")
        private = self._private(i)
        self._addr(ns, private, PRIVATE[self.family][1], "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "route", "add", "default", "via", self._private(ROUTER_HOST))
        if self.nat:
            public = public_ip(domain.index, 0, self.family)
            control, wireguard = NAT_CONTROL_PORT + i, WIREGUARD_PORT + i - 1
            self._forward(domain.router_ns, domain.index, control, i, AGENT_PORT)
            # Listen ports of their own: the router's masquerade keeps each (two nodes on one
            # port would have one of them mapped to another port), so what a node learns of its
            # mapping stays true while the NAT is not symmetric.
            outside = ["--wireguard-port", str(wireguard)]
        else:
            self._nat(domain.router_ns, domain.index, i, i)
            public, control, wireguard = public_ip(domain.index, i, self.family), AGENT_PORT, WIREGUARD_PORT
            outside = ["--public-ip", public]
        _, agent = bed.agent(
            ns,
            name,
            _url(self._private(REGISTRY_HOST), REGISTRY_PORT),
            extra=[
                "--listen", _url(private, AGENT_PORT), "--tunnel-ip", private,
                "--public-url", _url(public, control), *outside, *self._bundle_args(domain.name),
                *(agent_args or []),
            ],
            trust_domain=self.trust_domain(domain.name),
        )  # fmt: skip
        node = DomainNode(name, ns, private, public, agent, control, wireguard)
        domain.nodes.append(node)
        return node

    def add_public_node(self, domain: Domain, agent_args: list[str] | None = None) -> DomainNode:
        """A node of DOMAIN on the internet itself (no router between: its own public address,
        203.0.113.(10K+9)), its agent registered at DOMAIN's registry through the router's
        public address like another domain's; in DOMAIN.public_nodes, not DOMAIN.nodes. One per
        domain."""
        if domain.public_nodes:
            raise ValueError(f"{domain.name} has its public node already")
        bed = self.bed
        name = f"c{domain.index}pub"
        ns = bed.netns(name)
        port = f"{bed.prefix}-{name}"[-15:]
        run("ip", "link", "add", port, "netns", self.internet_ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        # On the internet's links, at the internet's MTU (the routers' "pub" have it too).
        mtu = str(self.internet_mtu)
        run("ip", "-n", self.internet_ns, "link", "set", port, "mtu", mtu, "master", "br0", "up")
        public = public_ip(domain.index, PUBLIC_NODE_HOST, self.family)
        # The internet is one subnet: the routers' public addresses are on its link.
        self._addr(ns, public, PUBLIC[self.family][1], "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "mtu", mtu, "up")
        if self.nameserver:
            bed.resolv_conf(ns, self.nameserver)
        _, agent = bed.agent(
            ns,
            name,
            domain.registry_public,
            extra=[
                "--listen", _url(public, AGENT_PORT), "--tunnel-ip", public, "--public-url", _url(public, AGENT_PORT),
                *self._bundle_args(domain.name), *(agent_args or []),
            ],
            trust_domain=self.trust_domain(domain.name),
        )  # fmt: skip
        node = DomainNode(name, ns, public, public, agent)
        domain.public_nodes.append(node)
        return node

    def pod(self, node: DomainNode, short: str) -> str:
        return self.bed.netns(f"{node.name}-{short}")
