"""Find queries against stored records (the spec's matching rules). Pure."""

from __future__ import annotations

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint


def service_matches(query: NetworkService, stored: NetworkService) -> bool:
    """An empty query field matches anything; otherwise fields must be equal."""
    if query.name and query.name != stored.name:
        return False
    if query.payload and query.payload != stored.payload:
        return False
    return not (len(query.matches) and list(query.matches) != list(stored.matches))


def endpoint_matches(query: NetworkServiceEndpoint, stored: NetworkServiceEndpoint) -> bool:
    """Every non-empty field of the query holds for the stored record (services a subset, labels a subset)."""
    if query.name and query.name != stored.name:
        return False
    if not set(query.network_service_names) <= set(stored.network_service_names):
        return False
    for service, wanted in query.network_service_labels.items():
        have = stored.network_service_labels[service].labels if service in stored.network_service_labels else {}
        for key, value in wanted.labels.items():
            if have.get(key) != value:
                return False
    if query.url and query.url not in stored.url:
        return False
    asked = query.expiration_time.seconds if query.HasField("expiration_time") else 0
    return not (asked and asked != stored.expiration_time.seconds)
