"""Names across domains, and finding another domain's registry: the static map, and DNS
asked of a real DNS server (dnslib's, on a loopback UDP port this test picks) through
dnspython, as the registry asks it. No root."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import AAAA, SRV, A

from nsm_common.interdomain import DomainNameError, Remote, is_remote, join, split, validate_domain
from nsm_common.urls import parse_address
from nsm_registry.domain_registries import DomainNotFound, DomainRegistries, parse_domain_registries
from tests.helpers.dns_zone import Zone, resolver_for, serving

ZONE = {
    # cluster2: SRV for the port, A for the address, on the same name (upstream's way).
    ("registry.nsm-system.cluster2.", "SRV"): SRV(priority=0, weight=0, port=7002, target="elsewhere.example."),
    ("registry.nsm-system.cluster2.", "A"): A("192.0.2.12"),
    # v6only: no A record, only AAAA.
    ("registry.nsm-system.v6only.", "SRV"): SRV(priority=0, weight=0, port=5002, target="x."),
    ("registry.nsm-system.v6only.", "AAAA"): AAAA("2001:db8::12"),
    # noport: an address and no SRV record.
    ("registry.nsm-system.noport.", "A"): A("192.0.2.13"),
}
Served = tuple[Zone, tuple[str, int]]  # the zone (what it was asked) and the server's address


@pytest.fixture
def dns_server() -> Iterator[Served]:
    with serving(ZONE) as served:
        yield served


def test_names_split_at_the_first_separator_as_upstreams_helpers_do() -> None:
    assert split("svc@cluster2") == Remote("svc", "cluster2")
    assert split("nse-1@My.Cluster3.") == Remote("nse-1", "my.cluster3")
    with pytest.raises(DomainNameError, match="'a@b'"):  # what follows the first @ is the domain
        split("svc@a@b")
    assert split("svc") is None and not is_remote("svc") and is_remote("svc@x")
    assert join("svc", "cluster2") == "svc@cluster2" == str(Remote("svc", "cluster2"))
    with pytest.raises(DomainNameError, match="nothing before"):
        split("@cluster2")
    with pytest.raises(DomainNameError, match="empty"):
        split("svc@")


@pytest.mark.parametrize(
    ("domain", "why"),
    [("-bad.example", "'-bad'"), ("a..b", "''"), ("x" * 64, "at most 63"), ("under_score", "'under_score'")],
)
def test_a_domain_must_be_a_dns_name(domain: str, why: str) -> None:
    with pytest.raises(DomainNameError, match=why):
        validate_domain(domain)


def test_the_static_map_names_each_bad_entry_and_refuses_its_own_domain() -> None:
    found = parse_domain_registries(["cluster2=tcp://198.51.100.2:5002", "Cluster3=tcp://[2001:db8::3]"])
    assert found == {
        "cluster2": parse_address("tcp://198.51.100.2:5002"),
        "cluster3": parse_address("tcp://[2001:db8::3]:5002"),
    }
    for bad, why in [
        (["cluster2"], "expected DOMAIN=URL"),
        (["cluster2=unix:///x.sock"], "over tcp://"),
        (["cluster2=tcp://"], "needs a host"),
        (["c2=tcp://h:1", "C2=tcp://h:2"], "given twice"),
        (["bad_domain=tcp://h:1"], "not a DNS label"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_domain_registries(bad)
    with pytest.raises(DomainNameError, match="this registry's own domain"):
        parse_domain_registries(["cluster1=tcp://h:1"], own_domain="cluster1")


def test_the_static_map_wins_and_an_address_domain_skips_dns(dns_server: Served) -> None:
    registries = DomainRegistries({"cluster2": parse_address("tcp://198.51.100.2:5002")}, resolver_for(dns_server[1]))
    assert str(asyncio.run(registries.find("cluster2"))) == "tcp://198.51.100.2:5002"
    assert str(asyncio.run(registries.find("192.0.2.7:6002"))) == "tcp://192.0.2.7:6002"
    assert str(asyncio.run(registries.find("[2001:db8::7]:6002"))) == "tcp://[2001:db8::7]:6002"
    assert dns_server[0].asked == []


def test_dns_gives_the_port_from_srv_and_the_address_from_the_same_name(dns_server: Served) -> None:
    registries = DomainRegistries(resolver=resolver_for(dns_server[1]))
    assert str(asyncio.run(registries.find("cluster2"))) == "tcp://192.0.2.12:7002"
    assert dns_server[0].asked == [("registry.nsm-system.cluster2.", "SRV"), ("registry.nsm-system.cluster2.", "A")]
    assert str(asyncio.run(registries.find("v6only"))) == "tcp://[2001:db8::12]:5002"


def test_a_domain_dns_does_not_know_is_a_clear_error(dns_server: Served) -> None:
    registries = DomainRegistries(resolver=resolver_for(dns_server[1]))
    with pytest.raises(DomainNotFound, match=r"no registry for domain nowhere: registry\.nsm-system\.nowhere"):
        asyncio.run(registries.find("nowhere"))
    with pytest.raises(DomainNotFound, match="domain noport"):  # an address, but no SRV for the port
        asyncio.run(registries.find("noport"))
    with pytest.raises(DomainNameError):
        asyncio.run(registries.find("bad_domain"))


def test_no_resolver_configured_is_a_clear_error(tmp_path: Path) -> None:
    registries = DomainRegistries(resolv_conf=str(tmp_path / "resolv.conf"))  # no such file
    with pytest.raises(DomainNotFound, match=r"not in --domain-registry, and this machine has no DNS resolver"):
        asyncio.run(registries.find("cluster2"))
