"""Registration limits (nsm_registry/validation.py)."""

import pytest

from nsm_api.registry_pb2 import Destination, Match, NetworkService, NetworkServiceEndpoint, NetworkServiceLabels
from nsm_common.names import MAX_LABELS
from nsm_registry.validation import MAX_SERVICES, validate_endpoint, validate_service


@pytest.mark.parametrize("name", ["web", "a.b-c", "x" * 253, "svc@cluster-2.example", "0"])
def test_good_names(name: str) -> None:
    assert validate_service(NetworkService(name=name)) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("Web", "DNS subdomain"),
        ("-web", "DNS subdomain"),
        ("web-", "DNS subdomain"),
        ("we b", "DNS subdomain"),
        ("x" * 254, "at most 253"),
        ("svc@", "domain"),
        ("svc@Bad_Domain", "domain"),
    ],
)
def test_bad_names(name: str, words: str) -> None:
    problem = validate_service(NetworkService(name=name))
    assert problem is not None and words in problem


def test_label_and_count_limits() -> None:
    many = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
    assert "at most 64" in (validate_service(NetworkService(name="s", matches=[Match(source_selector=many)])) or "")
    bad_key = NetworkService(name="s", matches=[Match(routes=[Destination(destination_selector={"bad key": "v"})])])
    assert "label key" in (validate_service(bad_key) or "")
    long_value = NetworkServiceEndpoint(
        name="e",
        network_service_names=["s"],
        network_service_labels={"s": NetworkServiceLabels(labels={"k": "v" * 64})},
    )
    assert "at most 63" in (validate_endpoint(long_value) or "")
    too_many = NetworkServiceEndpoint(name="e", network_service_names=[f"s{i}" for i in range(MAX_SERVICES + 1)])
    assert "at most 32" in (validate_endpoint(too_many) or "")
    assert validate_endpoint(NetworkServiceEndpoint(name="e", network_service_names=["s"], url="u" * 3000)) is not None
    assert validate_endpoint(NetworkServiceEndpoint(name="", network_service_names=["s"])) is None  # name generated
