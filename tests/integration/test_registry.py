"""The registry over real gRPC: Register, Find (with watch), Unregister, expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from nsm_api.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceLabels,
    NetworkServiceQuery,
)
from nsm_common.timeutil import ts_from, ts_seconds
from testbed.bed import Testbed
from testbed.etcd import start_etcd
from tests.helpers.registry import Registry

MAX = 3.0


@pytest.fixture(params=["memory", "etcd"])
def store(bed: Testbed, request: pytest.FixtureRequest) -> str:
    """Every test here runs against both stores: one shared suite."""
    return "memory" if request.param == "memory" else start_etcd(bed).url


@pytest.fixture
def reg(bed: Testbed, store: str) -> Iterator[Registry]:
    _, url = bed.registry(None, extra=["--max-expiration", str(MAX), "--store", store])
    r = Registry(url)
    yield r
    r.channel.close()


def test_service_register_find_unregister(reg: Registry) -> None:
    stored = reg.ns.Register(NetworkService(name="web"), timeout=5)
    assert stored.payload == "IP"  # empty is stored as IP
    reg.ns.Register(NetworkService(name="l2", payload="ETHERNET"), timeout=5)
    found = [r.network_service.name for r in reg.ns.Find(NetworkServiceQuery(), timeout=5)]
    assert sorted(found) == ["l2", "web"]
    only = [
        r.network_service.name
        for r in reg.ns.Find(NetworkServiceQuery(network_service=NetworkService(payload="ETHERNET")), timeout=5)
    ]
    assert only == ["l2"]
    reg.ns.Unregister(NetworkService(name="web"), timeout=5)
    assert [r.network_service.name for r in reg.ns.Find(NetworkServiceQuery(), timeout=5)] == ["l2"]


def test_bad_registrations_are_refused(reg: Registry) -> None:
    with pytest.raises(grpc.RpcError) as info:
        reg.ns.Register(NetworkService(name=""), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name is empty" in str(info.value.details())
    with pytest.raises(grpc.RpcError) as info:
        reg.ns.Register(NetworkService(name="x", payload="BOGUS"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "BOGUS" in str(info.value.details())
    with pytest.raises(grpc.RpcError) as info:
        reg.nse.Register(NetworkServiceEndpoint(name="e", network_service_names=[""]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        reg.nse.Register(NetworkServiceEndpoint(name="e" * 254, network_service_names=["web"]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 253" in str(info.value.details())
    labels = {"web": NetworkServiceLabels(labels={f"k{i}": "v" for i in range(65)})}
    with pytest.raises(grpc.RpcError) as info:
        reg.nse.Register(
            NetworkServiceEndpoint(name="e", network_service_names=["web"], network_service_labels=labels), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels" in str(info.value.details())
    assert reg.endpoints() == []


def test_endpoint_expiration_is_capped_and_initial_time_kept(reg: Registry) -> None:
    t0 = time.time()
    first = reg.nse.Register(
        NetworkServiceEndpoint(name="ep", network_service_names=["web"], url="unix:///x"), timeout=5
    )
    assert t0 + MAX - 1 <= ts_seconds(first.expiration_time) <= time.time() + MAX + 0.01
    initial = ts_seconds(first.initial_registration_time)
    time.sleep(0.2)
    longer = reg.nse.Register(
        NetworkServiceEndpoint(name="ep", network_service_names=["web"], expiration_time=ts_from(time.time() + 3600)),
        timeout=5,
    )
    assert ts_seconds(longer.expiration_time) <= time.time() + MAX + 0.01
    assert ts_seconds(longer.initial_registration_time) == initial
    shorter_at = time.time() + 1
    shorter = reg.nse.Register(
        NetworkServiceEndpoint(name="ep", network_service_names=["web"], expiration_time=ts_from(shorter_at)), timeout=5
    )
    assert ts_seconds(shorter.expiration_time) == pytest.approx(shorter_at, abs=0.01)
    assert len(reg.endpoints()) == 1  # updated in place


def test_empty_name_gets_a_generated_one(reg: Registry) -> None:
    a = reg.nse.Register(NetworkServiceEndpoint(network_service_names=["web"]), timeout=5)
    b = reg.nse.Register(NetworkServiceEndpoint(network_service_names=["web"]), timeout=5)
    assert a.name and b.name and a.name != b.name
    assert sorted(e.name for e in reg.endpoints()) == sorted([a.name, b.name])


def test_find_matches_the_query(reg: Registry) -> None:
    reg.nse.Register(
        NetworkServiceEndpoint(
            name="a",
            network_service_names=["web", "db"],
            network_service_labels={"web": NetworkServiceLabels(labels={"zone": "z1"})},
            url="tcp://10.0.0.1:5001",
        ),
        timeout=5,
    )
    reg.nse.Register(NetworkServiceEndpoint(name="b", network_service_names=["web"], url="unix:///b.sock"), timeout=5)

    def names(q: NetworkServiceEndpoint) -> list[str]:
        return sorted(e.name for e in reg.endpoints(q))

    assert names(NetworkServiceEndpoint(network_service_names=["web"])) == ["a", "b"]
    assert names(NetworkServiceEndpoint(network_service_names=["web", "db"])) == ["a"]
    assert names(
        NetworkServiceEndpoint(network_service_labels={"web": NetworkServiceLabels(labels={"zone": "z1"})})
    ) == ["a"]
    assert names(NetworkServiceEndpoint(url="b.sock")) == ["b"]
    assert names(NetworkServiceEndpoint(name="c")) == []


def test_watch_streams_current_then_changes_then_expiry(reg: Registry) -> None:
    reg.nse.Register(NetworkServiceEndpoint(name="old", network_service_names=["web"]), timeout=5)
    events, stream = reg.watch(NetworkServiceEndpoint(network_service_names=["web"]))
    try:
        first = events.get(timeout=5)
        assert first.network_service_endpoint.name == "old" and not first.deleted
        reg.nse.Register(NetworkServiceEndpoint(name="other-svc", network_service_names=["db"]), timeout=5)
        reg.nse.Register(NetworkServiceEndpoint(name="new", network_service_names=["web"]), timeout=5)
        got = events.get(timeout=5)
        assert got.network_service_endpoint.name == "new" and not got.deleted  # "db" was filtered out
        reg.nse.Unregister(NetworkServiceEndpoint(name="new"), timeout=5)
        gone = events.get(timeout=5)
        assert gone.network_service_endpoint.name == "new" and gone.deleted
        # "old" is never registered again: it expires within MAX seconds and watchers hear of it.
        t0 = time.time()
        expired = events.get(timeout=MAX + 3)
        assert expired.network_service_endpoint.name == "old" and expired.deleted
        assert time.time() - t0 <= MAX + 1.5
        assert "old" not in [e.name for e in reg.endpoints()]
        assert events.empty()
    finally:
        stream.cancel()


def test_non_watch_find_ends(reg: Registry) -> None:
    reg.nse.Register(NetworkServiceEndpoint(name="x", network_service_names=["web"]), timeout=5)
    start = time.time()
    assert [e.name for e in reg.endpoints()] == ["x"]
    assert time.time() - start < 2


def test_concurrent_registration_of_one_name(reg: Registry) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def register(i: int) -> NetworkServiceEndpoint:
        return reg.nse.Register(  # type: ignore[no-any-return]
            NetworkServiceEndpoint(name="same", network_service_names=["web"], url=f"unix:///e{i}.sock"), timeout=10
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(register, range(16)))
    stored = reg.endpoints()
    assert [e.name for e in stored] == ["same"]
    assert stored[0].url in {r.url for r in results}
    assert {ts_seconds(r.initial_registration_time) for r in results} == {
        ts_seconds(stored[0].initial_registration_time)
    }
