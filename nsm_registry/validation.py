"""Checks on registration input; each returns a message a person understands, or None."""

from __future__ import annotations

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint

PAYLOADS = ("IP", "ETHERNET")


def validate_service(service: NetworkService) -> str | None:
    if not service.name:
        return "network service name is empty"
    if service.payload and service.payload not in PAYLOADS:
        return f"network service {service.name!r}: payload {service.payload!r} is not one of IP, ETHERNET"
    return None


def validate_endpoint(endpoint: NetworkServiceEndpoint) -> str | None:
    who = f"network service endpoint {endpoint.name!r}" if endpoint.name else "network service endpoint"
    for service in endpoint.network_service_names:
        if not service:
            return f"{who}: network_service_names holds an empty name"
    for service in endpoint.network_service_labels:
        if service not in endpoint.network_service_names:
            return f"{who}: labels given for service {service!r}, which is not in network_service_names"
    return None
