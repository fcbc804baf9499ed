"""Find query matching (nsm_registry/matching.py)."""

from nsm_api.registry_pb2 import (
    Match,
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceLabels,
)
from nsm_common.matching import endpoint_matches, service_matches
from nsm_common.timeutil import ts_from


def test_service_query_fields() -> None:
    stored = NetworkService(name="web", payload="IP", matches=[Match(fallthrough=True)])
    assert service_matches(NetworkService(), stored)
    assert service_matches(NetworkService(name="web", payload="IP"), stored)
    assert not service_matches(NetworkService(name="db"), stored)
    assert not service_matches(NetworkService(payload="ETHERNET"), stored)
    assert service_matches(NetworkService(matches=[Match(fallthrough=True)]), stored)
    assert not service_matches(NetworkService(matches=[Match()]), stored)


def test_endpoint_query_fields() -> None:
    stored = NetworkServiceEndpoint(
        name="ep1",
        network_service_names=["web", "db"],
        network_service_labels={"web": NetworkServiceLabels(labels={"zone": "a", "app": "x"})},
        url="unix:///run/ep1.sock",
        expiration_time=ts_from(1000.5),
    )
    assert endpoint_matches(NetworkServiceEndpoint(), stored)
    assert endpoint_matches(NetworkServiceEndpoint(network_service_names=["db", "web"]), stored)
    assert not endpoint_matches(NetworkServiceEndpoint(network_service_names=["web", "cache"]), stored)
    q = NetworkServiceEndpoint(network_service_labels={"web": NetworkServiceLabels(labels={"zone": "a"})})
    assert endpoint_matches(q, stored)
    q = NetworkServiceEndpoint(network_service_labels={"web": NetworkServiceLabels(labels={"zone": "b"})})
    assert not endpoint_matches(q, stored)
    q = NetworkServiceEndpoint(network_service_labels={"db": NetworkServiceLabels(labels={"zone": "a"})})
    assert not endpoint_matches(q, stored)
    assert endpoint_matches(NetworkServiceEndpoint(url="ep1.sock"), stored)
    assert not endpoint_matches(NetworkServiceEndpoint(url="ep2"), stored)
    assert endpoint_matches(NetworkServiceEndpoint(expiration_time=ts_from(1000)), stored)
    assert not endpoint_matches(NetworkServiceEndpoint(expiration_time=ts_from(1001)), stored)
    assert not endpoint_matches(NetworkServiceEndpoint(name="ep2"), stored)
