"""Where another domain's registry is: a static map, else DNS as upstream finds it.

The map comes from `--domain-registry DOMAIN=URL`. Without an entry the registry asks DNS
for `registry.nsm-system.DOMAIN`, as upstream's dnsresolve does: the port from its SRV
record (the name itself, no `_service._proto` prefix), the address from its A/AAAA
records (the same name, not the SRV target). A domain that is an address with a port
(`10.0.0.1:5002`) is used as it is, without DNS, as upstream allows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from nsm_common.interdomain import DomainNameError, validate_domain
from nsm_common.urls import REGISTRY_PORT, Address, parse_address

REGISTRY_SERVICE = "registry.nsm-system"  # upstream's DefaultRegistryService


class DomainNotFound(LookupError):
    """No registry is known for a domain; the message says what was tried."""


def parse_domain_registries(items: Iterable[str], own_domain: str = "") -> dict[str, Address]:
    """`DOMAIN=URL` entries as a map (the port defaults to the registry's, 5002); DomainNameError
    or ValueError naming the bad entry. The registry's own domain is refused: a peer of its own
    name would be itself."""
    found: dict[str, Address] = {}
    for item in items:
        domain, sep, url = item.partition("=")
        if not sep or not url:
            raise ValueError(f"--domain-registry {item!r}: expected DOMAIN=URL")
        name = validate_domain(domain)
        if own_domain and name == own_domain:
            raise DomainNameError(f"--domain-registry {item!r}: {name} is this registry's own domain")
        if name in found:
            raise ValueError(f"--domain-registry {item!r}: {name} is given twice")
        try:
            found[name] = parse_address(url, REGISTRY_PORT)
        except ValueError as exc:
            raise ValueError(f"--domain-registry {item!r}: {exc}") from exc
        if found[name].scheme != "tcp":
            raise ValueError(f"--domain-registry {item!r}: another domain's registry is reached over tcp://")
    return found


def _literal(domain: str) -> Address | None:
    """A domain written as HOST:PORT with HOST an address (`[v6]:port` for IPv6)."""
    host, sep, port = domain.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return parse_address(f"tcp://{host}:{port}")


class DomainRegistries:
    """Finds a domain's registry URL: the static map first, then DNS."""

    def __init__(
        self,
        static: Mapping[str, Address] | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
        service: str = REGISTRY_SERVICE,
        resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        self.static = dict(static or {})
        self._resolver = resolver
        self.service = service
        self.resolv_conf = resolv_conf

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        # Made on first use: a registry that never asks DNS never reads resolv.conf.
        if self._resolver is None:
            self._resolver = dns.asyncresolver.Resolver(filename=self.resolv_conf)
        return self._resolver

    async def find(self, domain: str) -> Address:
        """DOMAIN's registry; DomainNotFound with what was asked of DNS when it has none."""
        literal = _literal(domain)
        if literal is not None:
            return literal
        name = validate_domain(domain)
        if name in self.static:
            return self.static[name]
        query = f"{self.service}.{name}"
        try:
            resolver = self.resolver
        except dns.resolver.NoResolverConfiguration:
            raise DomainNotFound(f"no registry for domain {name}: it is not in --domain-registry, and this "
                                 "machine has no DNS resolver configured (/etc/resolv.conf)") from None  # fmt: skip
        try:
            srv = await resolver.resolve(query, dns.rdatatype.SRV)
            port = int(next(iter(srv)).port)  # type: ignore[attr-defined]
            host = await self._address(resolver, query)
        except dns.exception.DNSException as exc:  # an empty answer is NoAnswer, one of these
            raise DomainNotFound(f"no registry for domain {name}: {query}: {exc or type(exc).__name__}") from exc
        return Address("tcp", host=host, port=port)

    @staticmethod
    async def _address(resolver: dns.asyncresolver.Resolver, query: str) -> str:
        """The first A record of QUERY, else its first AAAA."""
        try:
            answer = await resolver.resolve(query, dns.rdatatype.A)
        except dns.resolver.NoAnswer:
            answer = await resolver.resolve(query, dns.rdatatype.AAAA)
        return str(next(iter(answer)).address)  # type: ignore[attr-defined]
