"""Point-to-point IPAM of the endpoint runtime."""

import contextlib
import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_endpoint.ipam import IpamPolicy, PointToPointPool, PoolExhausted, parse_pools


def test_pairs_are_host_addresses_and_idempotent_per_connection() -> None:
    pool = PointToPointPool("10.60.0.0/24")
    a = pool.allocate("c1")
    # As upstream's: every address of an IPv4 pool is a host address, the first one too.
    assert a.cidrs() == ("10.60.0.0/32", "10.60.0.1/32")
    assert pool.allocate("c1") == a
    b = pool.allocate("c2")
    assert {b.endpoint, b.client}.isdisjoint({a.endpoint, a.client})


def test_ipv6_pool_gives_128s() -> None:
    lease = PointToPointPool("fd00:60::/120").allocate("c")
    assert lease.cidrs()[0].endswith("/128")


def test_excluded_prefixes_are_avoided() -> None:
    pool = PointToPointPool("10.60.0.0/29")
    lease = pool.allocate("c", excluded=["10.60.0.0/30"])
    assert all(ip not in ipaddress.ip_network("10.60.0.0/30") for ip in (lease.endpoint, lease.client))


def test_exhaustion_and_free() -> None:
    pool = PointToPointPool("10.60.0.0/29")  # 8 addresses: 4 pairs
    for i in range(4):
        pool.allocate(f"c{i}")
    with pytest.raises(PoolExhausted, match=r"10\.60\.0\.0/29"):
        pool.allocate("c4")
    assert pool.free("c1") is True and pool.free("c1") is False
    pool.allocate("c4")


def test_adopt_after_restart_and_refuse_conflicts() -> None:
    pool = PointToPointPool("10.60.0.0/24")
    assert pool.adopt("old", "10.60.0.9/32", "10.60.0.10/32") is not None
    assert pool.adopt("other", "10.60.0.9/32", "10.60.0.11/32") is None  # taken
    assert pool.adopt("x", "10.99.0.1/32", "10.99.0.2/32") is None  # not ours
    fresh = pool.allocate("new")
    assert fresh.endpoint not in (ipaddress.ip_address("10.60.0.9"), ipaddress.ip_address("10.60.0.10"))


@settings(max_examples=50)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=60))
def test_no_address_is_ever_handed_out_twice(ops: list[tuple[bool, int]]) -> None:
    pool = PointToPointPool("10.60.0.0/28")
    for alloc, n in ops:
        if alloc:
            with contextlib.suppress(PoolExhausted):
                pool.allocate(f"c{n}")
        else:
            pool.free(f"c{n}")
        addrs = [a for lease in pool.leases.values() for a in (lease.endpoint, lease.client)]
        assert len(addrs) == len(set(addrs))


def test_upstream_exclude_prefixes_example_gives_the_outer_pair() -> None:
    # deployments-k8s features/exclude-prefixes: .201 and .202 excluded from 172.16.1.200/30.
    lease = PointToPointPool("172.16.1.200/30").allocate("c", ["172.16.1.201/32", "172.16.1.202/32"])
    assert lease.cidrs() == ("172.16.1.200/32", "172.16.1.203/32")


def test_a_31_is_one_pair_and_ipv6_skips_the_subnet_router_address() -> None:
    assert PointToPointPool("172.16.1.100/31").allocate("c").cidrs() == ("172.16.1.100/32", "172.16.1.101/32")
    assert PointToPointPool("fd00::/126").allocate("c").cidrs() == ("fd00::1/128", "fd00::2/128")
    with pytest.raises(ValueError, match="too small"):
        PointToPointPool("172.16.1.100/32")


def test_preferred_addresses_are_taken_only_when_free_and_not_excluded() -> None:
    pool = PointToPointPool("10.60.0.0/29")
    ip = ipaddress.ip_address
    kept = pool.allocate("a", prefer=(ip("10.60.0.4"), ip("10.60.0.5")))
    assert kept.cidrs() == ("10.60.0.4/32", "10.60.0.5/32")
    # Taken, outside the pool, or excluded: another address instead.
    other = pool.allocate("b", excluded=["10.60.0.6/32"], prefer=(ip("10.60.0.5"), ip("10.60.0.6")))
    assert {other.endpoint, other.client}.isdisjoint({ip("10.60.0.4"), ip("10.60.0.5"), ip("10.60.0.6")})
    outside = pool.allocate("c", prefer=(ip("10.99.0.1"), None))
    assert outside.endpoint in pool.network


def test_pools_parse_as_given_and_name_the_bad_entry() -> None:
    assert parse_pools(["172.16.1.0/29, fd00::/120", "10.60.0.0/24"]) == ["172.16.1.0/29", "fd00::/120", "10.60.0.0/24"]
    with pytest.raises(ValueError, match=re.escape("'172.16.300.0/29' is not a CIDR")):
        parse_pools(["172.16.1.0/29,172.16.300.0/29"])
    with pytest.raises(ValueError, match=re.escape("overlaps the pool 172.16.1.0/29")):
        parse_pools(["172.16.1.0/29", "172.16.1.4/30"])
    with pytest.raises(ValueError, match="too small"):
        parse_pools(["10.0.0.1/32"])


def test_ipam_policies_by_name() -> None:
    assert IpamPolicy.parse("strict") is IpamPolicy.STRICT
    assert IpamPolicy.parse("default") is IpamPolicy.POLITE  # upstream's name for it
    with pytest.raises(ValueError, match="'lenient' is not an IPAM policy: use polite"):
        IpamPolicy.parse("lenient")
