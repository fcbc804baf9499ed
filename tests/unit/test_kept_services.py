"""The services an agent proxied, kept to register again (in process)."""

from __future__ import annotations

from pathlib import Path

from nsm_agent.registry.cache import RegistryCache
from nsm_agent.registry.kept_services import KeptServices, wanted
from nsm_api.registry_pb2 import Match, NetworkService
from tests.helpers.steps import FakeRegistry, endpoint


def test_records_survive_a_restart_exactly_as_registered(tmp_path: Path) -> None:
    kept = KeptServices(tmp_path)
    service = NetworkService(name="eth", payload="ETHERNET", matches=[Match(source_selector={"app": "web"})])
    kept.put(service)
    kept.endpoint_registered("ep1")
    again = KeptServices(tmp_path)
    assert again.get("eth") == service and again.endpoints == {"ep1"}
    again.remove("eth")
    again.endpoint_unregistered("ep1")
    third = KeptServices(tmp_path)
    assert third.get("eth") is None and third.endpoints == set()
    (tmp_path / "services.json").write_text("not json")
    assert KeptServices(tmp_path).endpoints == set()  # a broken file is no reason not to start


def test_wanted_are_the_lost_services_our_endpoints_name(tmp_path: Path) -> None:
    kept = KeptServices(tmp_path)
    kept.put(NetworkService(name="svc", payload="ETHERNET"))
    kept.put(NetworkService(name="gone"))
    kept.endpoint_registered("ours")
    registry = FakeRegistry([], [])
    cache = RegistryCache.__new__(RegistryCache)
    cache.services, cache.services_ready = {}, False
    cache.endpoints = {
        e.name: e for e in (endpoint("ours", "unix:///o.sock"), endpoint("theirs", "unix:///t.sock", "other"))
    }
    cache.endpoints_ready = True
    registry.cache = cache
    assert [s.name for s in wanted(kept, registry)] == ["svc"]  # "gone" is named by no endpoint of ours
    cache.services, cache.services_ready = {"svc": NetworkService(name="svc")}, True
    assert wanted(kept, registry) == []
    cache.endpoints_ready = False
    assert wanted(kept, registry) == []
