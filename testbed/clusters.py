"""Several clusters, each behind its own router, joined by a shared "internet": the
interdomain test bed.

    python -m testbed.cluster --clusters 3 [--nodes 2]

Every cluster has the same private underlay (10.0.0.0/24: nodes .1, .2, ..., its registry
.253, its router .254) and a domain of its own (`cluster1`, `cluster2`, ...). Its router
joins the internet bridge (203.0.113.0/24) and gives each node and the registry a public
address of its own, forwarded one to one (a cloud's 1:1 NAT): node I of cluster K is
203.0.113.(10K+I) outside, the registry 203.0.113.10K. The last cluster holds only a
floating registry (domain `floating`), when there are three or more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from testbed.bed import TRUST_DOMAIN, Testbed, run

PRIVATE = "10.0.0.{}"  # every cluster's underlay, the same range in all
PRIVATE_PLEN = 24
REGISTRY_HOST = 253
ROUTER_HOST = 254
PUBLIC = "203.0.113.{}"  # the internet between them (TEST-NET-3)
PUBLIC_PLEN = 24
FLOATING = "floating"


def public_ip(cluster: int, host: int) -> str:
    """Cluster K's public address of HOST (0: its registry)."""
    return PUBLIC.format(10 * cluster + host)


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
    ) -> Federation:
        """CLUSTERS clusters of NODES nodes each (the last only a floating registry when there
        are three or more); every registry knows every other by the static map, unless
        REGISTRY_ARGS (per domain name) says otherwise. INTERNET_MTU: the routers' links to the
        internet (the clusters' own are 1500), a path MTU only a probe finds. TRUST_DOMAINS: a
        trust domain (and CA) per domain name (else the bed's one); with BUNDLES every component
        trusts the other domains' CAs (`--trust-bundle`), without them none does. NAMESERVER: an
        address on the internet the registries ask DNS of (the caller starts the server there)."""
        fed = cls(bed, internet_mtu=internet_mtu, trust_domains=dict(trust_domains or {}), bundles=bundles)
        fed.nameserver = nameserver
        fed.internet_ns = bed.netns("inet")
        run("ip", "-n", fed.internet_ns, "link", "add", "br0", "type", "bridge")
        if nameserver:  # a DNS server for the registries, to start in the internet's namespace
            run("ip", "-n", fed.internet_ns, "addr", "add", f"{nameserver}/{PUBLIC_PLEN}", "dev", "br0")
        run("ip", "-n", fed.internet_ns, "link", "set", "br0", "up")
        with_floating = clusters >= 3
        names = [f"cluster{k}" for k in range(1, clusters + (0 if with_floating else 1))]
        names += [FLOATING] if with_floating else []
        peers = {name: f"tcp://{public_ip(k, 0)}:5002" for k, name in enumerate(names, start=1)}
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
                    fed.add_node(domain, i, agent_args)
            fed.domains.append(domain)
        return fed

    def trust_domain(self, name: str) -> str:
        return self.trust_domains.get(name, TRUST_DOMAIN)

    def _bundle_args(self, name: str) -> list[str]:
        """`--trust-bundle` for every other domain's trust domain (none without bundles)."""
        own = self.trust_domain(name)
        others = sorted({td for td in self.trust_domains.values() if td != own}) if self.bundles else []
        return [f"--trust-bundle={td}={self.bed.ca(td) / 'ca.crt'}" for td in others]

    def domain(self, name: str) -> Domain:
        return next(d for d in self.domains if d.name == name)

    def _cluster(self, k: int, name: str, registry_args: list[str]) -> Domain:
        bed = self.bed
        ul = bed.netns(f"c{k}ul")
        router = bed.netns(f"c{k}rt")
        run("ip", "-n", ul, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", ul, "addr", "add", f"{PRIVATE.format(REGISTRY_HOST)}/{PRIVATE_PLEN}", "dev", "br0")
        run("ip", "-n", ul, "link", "set", "br0", "up")
        run("ip", "-n", ul, "route", "add", "default", "via", PRIVATE.format(ROUTER_HOST))
        # The router: one leg on the cluster's underlay, one on the internet.
        run("ip", "link", "add", "priv", "netns", router, "type", "veth", "peer", "name", "rt", "netns", ul)
        run("ip", "-n", ul, "link", "set", "rt", "master", "br0", "up")
        run("ip", "-n", router, "addr", "add", f"{PRIVATE.format(ROUTER_HOST)}/{PRIVATE_PLEN}", "dev", "priv")
        port = f"{bed.prefix}-c{k}"[-15:]
        run(
            "ip", "link", "add", "pub", "netns", router, "type", "veth", "peer", "name", port, "netns", self.internet_ns
        )
        run("ip", "-n", self.internet_ns, "link", "set", port, "mtu", str(self.internet_mtu), "master", "br0", "up")
        run("ip", "-n", router, "link", "set", "pub", "mtu", str(self.internet_mtu))
        for dev in ("priv", "pub"):
            run("ip", "-n", router, "link", "set", dev, "up")
        run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._nat(router, k, REGISTRY_HOST, 0)
        domain = Domain(k, name, ul, router, "", f"tcp://{public_ip(k, 0)}:5002")
        if self.nameserver:
            bed.resolv_conf(ul, self.nameserver)
        host = PRIVATE.format(REGISTRY_HOST)
        _, domain.registry = bed.registry(
            ul, extra=["--listen", f"tcp://{host}:5002", *registry_args], name=f"registry-{name}",
            trust_domain=self.trust_domain(name),
        )  # fmt: skip
        return domain

    def _nat(self, router: str, k: int, host: int, public_host: int) -> None:
        """Forward public address 203.0.113.(10K+PUBLIC_HOST) to private HOST, both ways."""
        outside, inside = public_ip(k, public_host), PRIVATE.format(host)
        run("ip", "-n", router, "addr", "add", f"{outside}/{PUBLIC_PLEN}", "dev", "pub")
        table = f"nat{host}"
        # From inside too (hairpin, as a cloud's NAT answers its own nodes): the router stands
        # in for the sender, so that the answer comes back through it.
        rules = f"""table ip {table} {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {outside} dnat to {inside}; }}
  chain post {{
    type nat hook postrouting priority srcnat;
    oifname "pub" ip saddr {inside} snat to {outside};
    iifname "priv" oifname "priv" ip daddr {inside} snat to {PRIVATE.format(ROUTER_HOST)};
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
        private = PRIVATE.format(i)
        run("ip", "-n", ns, "addr", "add", f"{private}/{PRIVATE_PLEN}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "route", "add", "default", "via", PRIVATE.format(ROUTER_HOST))
        self._nat(domain.router_ns, domain.index, i, i)
        public = public_ip(domain.index, i)
        _, agent = bed.agent(
            ns,
            name,
            f"tcp://{PRIVATE.format(REGISTRY_HOST)}:5002",
            extra=[
                "--listen", f"tcp://{private}:5001", "--tunnel-ip", private,
                "--public-url", f"tcp://{public}:5001", "--public-ip", public, *self._bundle_args(domain.name),
                *(agent_args or []),
            ],
            trust_domain=self.trust_domain(domain.name),
        )  # fmt: skip
        node = DomainNode(name, ns, private, public, agent)
        domain.nodes.append(node)
        return node

    def pod(self, node: DomainNode, short: str) -> str:
        return self.bed.netns(f"{node.name}-{short}")
