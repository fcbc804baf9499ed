"""Which tunnels may join two domains, and names translated for another domain's registry
(pure, no root)."""

from __future__ import annotations

import pytest

from nsm_agent.decisions.interdomain import (
    crosses_domains,
    nothing_to_offer_between_domains,
    offered_between_domains,
    refused_between_domains,
)
from nsm_api.connection_pb2 import Connection
from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint, NetworkServiceLabels
from nsm_common.interdomain import (
    DomainNameError,
    domain_of,
    endpoint_from,
    endpoint_to,
    local_name,
    service_from,
    service_to,
)


def test_only_wireguard_crosses_and_the_offer_keeps_its_order() -> None:
    assert crosses_domains(Connection(network_service="svc@cluster2"))
    assert not crosses_domains(Connection(network_service="svc"))
    assert offered_between_domains(["VXLAN", "WIREGUARD"]) == ["WIREGUARD"]
    assert offered_between_domains(["VXLAN"]) == []
    assert refused_between_domains("WIREGUARD") is None
    assert "only WIREGUARD" in (refused_between_domains("VXLAN") or "")
    assert "this agent offers VXLAN" in nothing_to_offer_between_domains(["VXLAN"])


def test_one_domain_per_call() -> None:
    assert domain_of(["a", "", "b"]) is None
    assert domain_of(["a@c2", "b@C2"]) == "c2"
    with pytest.raises(DomainNameError, match="names of 2 domains"):
        domain_of(["a@c2", "b@c3"])


def test_names_lose_their_domain_on_the_way_and_get_it_back() -> None:
    assert local_name("svc@c2", "c2") == "svc" and local_name("svc@c3", "c2") == "svc@c3"
    assert local_name("svc", "c2") == "svc"
    ns = service_to(NetworkService(name="svc@c2", payload="ETHERNET"), "c2")
    assert (ns.name, ns.payload) == ("svc", "ETHERNET")
    assert service_from(ns, "c2").name == "svc@c2"
    nse = NetworkServiceEndpoint(
        name="db@c2",
        network_service_names=["svc@c2", "other@c2"],
        network_service_labels={"svc@c2": NetworkServiceLabels(labels={"app": "db"})},
        url="tcp://198.51.100.1:5001",
    )
    there = endpoint_to(nse, "c2")
    assert there.name == "db" and list(there.network_service_names) == ["svc", "other"]
    assert dict(there.network_service_labels["svc"].labels) == {"app": "db"} and len(there.network_service_labels) == 1
    assert endpoint_from(there, "c2") == nse
    assert nse.name == "db@c2"  # the original is left as it was
    # An empty name stays empty: a query by service only.
    assert endpoint_from(NetworkServiceEndpoint(network_service_names=["svc"]), "c2").name == ""
