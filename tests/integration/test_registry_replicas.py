"""Several registry replicas on one etcd: refreshes on any replica, one expiry,
watches across replicas, restarts that lose nothing, etcd restarts and leader
changes that streams survive."""

from __future__ import annotations

import queue
import time

import grpc
import pytest

from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceEndpointResponse
from testbed.bed import Testbed
from testbed.etcd import Etcd, start_etcd
from tests.helpers.registry import Registry

MAX = 2.0


def replicas(bed: Testbed, etcd: Etcd, n: int = 2, max_expiration: float = MAX) -> list[Registry]:
    out = []
    for i in range(n):
        extra = ["--store", etcd.url, "--max-expiration", str(max_expiration)]
        _, url = bed.registry(None, extra=extra, name=f"registry-{i}")
        out.append(Registry(url))
    return out


def drain(q: queue.Queue[NetworkServiceEndpointResponse], seconds: float) -> list[NetworkServiceEndpointResponse]:
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(q.get(timeout=left))
        except queue.Empty:
            break
    return out


def ep(name: str = "ep") -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(name=name, network_service_names=["web"], url="tcp://192.0.2.1:5001")


def test_refresh_on_another_replica_and_one_expiry(bed: Testbed) -> None:
    etcd = start_etcd(bed)
    r1, r2 = replicas(bed, etcd)
    (w1, s1), (w2, s2) = r1.watch(), r2.watch()
    assert drain(w1, 0.3) == [] and drain(w2, 0.3) == []
    start = time.monotonic()
    r1.nse.Register(ep(), timeout=5)
    while time.monotonic() - start < 3 * MAX:
        time.sleep(MAX / 3)
        (r2 if int(time.monotonic() * 10) % 2 else r1).nse.Register(ep(), timeout=5)
    for w in (w1, w2):
        events = drain(w, 0.5)
        assert events and not any(e.deleted for e in events), "expired while refreshed on another replica"
    time.sleep(MAX + 2)  # no more refreshes
    for w in (w1, w2):
        deletes = [e for e in drain(w, 1.0) if e.deleted]
        assert len(deletes) == 1, f"{len(deletes)} deleted events"
    assert r1.endpoints() == [] and r2.endpoints() == []
    s1.cancel()
    s2.cancel()


def test_watch_on_one_replica_sees_another_replicas_registration(bed: Testbed) -> None:
    etcd = start_etcd(bed)
    r1, r2 = replicas(bed, etcd)
    w2, s2 = r2.watch()
    took = []
    for i in range(10):
        t0 = time.monotonic()
        r1.nse.Register(ep(f"ep{i}"), timeout=5)
        got = w2.get(timeout=5)
        took.append(time.monotonic() - t0)
        assert got.network_service_endpoint.name == f"ep{i}" and not got.deleted
    s2.cancel()
    print(f"cross-replica watch latency p50 {sorted(took)[5] * 1000:.1f} ms")


def test_stopping_every_replica_loses_nothing(bed: Testbed) -> None:
    etcd = start_etcd(bed)
    r1, _ = replicas(bed, etcd, max_expiration=60)
    r1.nse.Register(
        NetworkServiceEndpoint(name="kept", network_service_names=["web"], url="tcp://192.0.2.1:5001"), timeout=5
    )
    for p in [p for p in bed.procs if p.name.startswith("registry-")]:
        p.stop()
    (r3,) = replicas(bed, etcd, 1, max_expiration=60)
    assert [e.name for e in r3.endpoints()] == ["kept"]


def test_watch_survives_an_etcd_restart(bed: Testbed) -> None:
    etcd = start_etcd(bed)
    (r1,) = replicas(bed, etcd, 1)
    w, stream = r1.watch()
    r1.nse.Register(ep("before"), timeout=5)
    assert w.get(timeout=5).network_service_endpoint.name == "before"
    member = etcd.members[0]
    etcd.stop(member)
    time.sleep(0.5)
    etcd.start(member)
    etcd.wait_ready(member)
    deadline = time.monotonic() + 20
    while True:
        try:
            r1.nse.Register(ep("after"), timeout=5)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    names = [e.network_service_endpoint.name for e in drain(w, 3) if not e.deleted]
    assert names.count("after") == 1 and "before" not in names  # resumed: nothing lost, nothing twice
    stream.cancel()


@pytest.mark.timeout(120)
def test_watch_and_expiry_survive_a_leader_change(bed: Testbed) -> None:
    etcd = start_etcd(bed, members=3)
    r1, r2 = replicas(bed, etcd)
    w2, s2 = r2.watch()
    r1.nse.Register(ep("short"), timeout=5)
    assert w2.get(timeout=5).network_service_endpoint.name == "short"
    # Stop members one at a time until the cluster had to elect (two of three stay).
    etcd.stop(etcd.members[0])
    start = time.monotonic()
    deadline = time.monotonic() + 20
    while True:
        try:
            r1.nse.Register(ep("during"), timeout=5)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    events = drain(w2, MAX + 4)
    names = [(e.network_service_endpoint.name, e.deleted) for e in events]
    assert ("during", False) in names
    assert ("short", True) in names and names.count(("short", True)) == 1  # expired once, on time
    s2.cancel()
    assert time.monotonic() - start < 60
