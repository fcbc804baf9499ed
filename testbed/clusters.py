"""Several clusters, each behind its own router, joined by a shared "internet": the
interdomain test bed.

    python -m testbed.cluster --clusters 3 [--nodes 2] [--ipv6]

Every cluster has the same private underlay (10.0.0.0/24: nodes .1, .2, ..., its registry
.253, its router .254; with IPv6 fd00:10::/64, the same hosts in hex) and a domain of its
own (`cluster1`, `cluster2`, ...). Its router joins the internet bridge (203.0.113.0/24,
or 2001:db8:113::/64) and gives each node and the registry a public address of its own,
forwarded one to one (a cloud's 1:1 NAT, NAT66 for IPv6): node I of cluster K is
203.0.113.(10K+I) outside, the registry 203.0.113.10K. The last cluster holds only a
floating registry (domain `floating`), when there are three or more.
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
    private_ip: str
    public_ip: str
    agent: str  # unix:// URL of its agent


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
    ) -> Federation:
        """CLUSTERS clusters of NODES nodes each (the last only a floating registry when there
        are three or more); every registry knows every other by the static map, unless
        REGISTRY_ARGS (per domain name) says otherwise. INTERNET_MTU: the routers' links to the
        internet (the clusters' own are 1500), a path MTU only a probe finds. TRUST_DOMAINS: a
        trust domain (and CA) per domain name (else the bed's one); with BUNDLES every component
        trusts the other domains' CAs (`--trust-bundle`), without them none does. NAMESERVER: an
        address on the internet the registries ask DNS of (the caller starts the server there).
        FAMILY: 4, or 6 for IPv6 underlays and an IPv6 internet. DOMAIN_AGENT_ARGS: more flags for
        the agents of the domains named."""
        fed = cls(bed, internet_mtu=internet_mtu, family=family, trust_domains=dict(trust_domains or {}),
                  bundles=bundles)  # fmt: skip
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
        peers = {name: _url(public_ip(k, 0, family), 5002) for k, name in enumerate(names, start=1)}
        for k, name in enumerate(names, start=1):
            args = [f"--domain={name}"]
            if name == FLOATING:
                args.append("--floating")
            else:
                args += [f"--domain-registry={d}={url}" for d, url in peers.items() if d != name]
            if registry_args and name in registry_args:
                args = [f"--domain={name}", *registry_args[name]]
            domain = fed._cluster(k, name, args + fed._bundle_args(name))
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

    def _cluster(self, k: int, name: str, registry_args: list[str]) -> Domain:
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
        self._nat(router, k, REGISTRY_HOST, 0)
        domain = Domain(k, name, ul, router, "", _url(public_ip(k, 0, self.family), 5002))
        if self.nameserver:
            bed.resolv_conf(ul, self.nameserver)
        _, domain.registry = bed.registry(
            ul, extra=["--listen", _url(self._private(REGISTRY_HOST), 5002), *registry_args], name=f"registry-{name}",
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

    def add_node(self, domain: Domain, i: int, agent_args: list[str] | None = None) -> DomainNode:
        """Node I of DOMAIN, its agent told its public address and URL."""
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
        self._nat(domain.router_ns, domain.index, i, i)
        public = public_ip(domain.index, i, self.family)
        _, agent = bed.agent(
            ns,
            name,
            _url(self._private(REGISTRY_HOST), 5002),
            extra=[
                "--listen", _url(private, 5001), "--tunnel-ip", private,
                "--public-url", _url(public, 5001), "--public-ip", public, *self._bundle_args(domain.name),
                *(agent_args or []),
            ],
            trust_domain=self.trust_domain(domain.name),
        )  # fmt: skip
        node = DomainNode(name, ns, private, public, agent)
        domain.nodes.append(node)
        return node

    def pod(self, node: DomainNode, short: str) -> str:
        return self.bed.netns(f"{node.name}-{short}")
