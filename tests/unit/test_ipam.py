"""Point-to-point IPAM of the endpoint runtime."""

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_endpoint.ipam import PointToPointPool, PoolExhausted


def test_pairs_are_host_addresses_and_idempotent_per_connection() -> None:
    pool = PointToPointPool("10.60.0.0/24")
    a = pool.allocate("c1")
    assert a.cidrs() == ("10.60.0.1/32", "10.60.0.2/32")
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
    pool = PointToPointPool("10.60.0.0/29")  # 6 usable: 3 pairs
    for i in range(3):
        pool.allocate(f"c{i}")
    with pytest.raises(PoolExhausted, match=r"10\.60\.0\.0/29"):
        pool.allocate("c3")
    assert pool.free("c1") is True and pool.free("c1") is False
    pool.allocate("c3")


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
