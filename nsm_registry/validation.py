"""Checks on registration input; each returns a message a person understands, or None.

Limits (README "Registry limits"):
- names (services, endpoints): a Kubernetes DNS subdomain — at most 253
  characters of lower-case letters, digits, '-' and '.', starting and ending with
  a letter or digit — optionally followed by `@DOMAIN`, a DNS subdomain too;
- label keys: 1 to 63 characters of letters, digits, '-', '_', '.', '/';
  label values: at most 63 characters; at most 64 labels per selector or service;
- at most 32 services per endpoint; URLs at most 2,048 characters.
"""

from __future__ import annotations

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.names import labels_problem, name_problem

PAYLOADS = ("IP", "ETHERNET")
MAX_SERVICES = 32
MAX_URL = 2048


def validate_service(service: NetworkService) -> str | None:
    """Raise INVALID_ARGUMENT naming the first limit the service breaks."""
    problem = name_problem("network service", service.name)
    if problem:
        return problem
    if service.payload and service.payload not in PAYLOADS:
        return f"network service {service.name!r}: payload {service.payload!r} is not one of IP, ETHERNET"
    for i, match in enumerate(service.matches):
        problem = labels_problem(f"network service {service.name!r} match {i} source_selector", match.source_selector)
        if problem:
            return problem
        for j, route in enumerate(match.routes):
            where = f"network service {service.name!r} match {i} route {j} destination_selector"
            problem = labels_problem(where, route.destination_selector)
            if problem:
                return problem
    return None


def validate_endpoint(endpoint: NetworkServiceEndpoint) -> str | None:
    """Raise INVALID_ARGUMENT naming the first limit the endpoint record breaks."""
    who = f"network service endpoint {endpoint.name!r}" if endpoint.name else "network service endpoint"
    if endpoint.name:
        problem = name_problem("network service endpoint", endpoint.name)
        if problem:
            return problem
    if len(endpoint.network_service_names) > MAX_SERVICES:
        return f"{who}: {len(endpoint.network_service_names)} services; at most {MAX_SERVICES}"
    for service in endpoint.network_service_names:
        if not service:
            return f"{who}: network_service_names holds an empty name"
        problem = name_problem("network service", service)
        if problem:
            return f"{who}: {problem}"
    for service, labels in endpoint.network_service_labels.items():
        if service not in endpoint.network_service_names:
            return f"{who}: labels given for service {service!r}, which is not in network_service_names"
        problem = labels_problem(f"{who} service {service!r}", labels.labels)
        if problem:
            return problem
    if len(endpoint.url) > MAX_URL:
        return f"{who}: url is {len(endpoint.url)} characters; at most {MAX_URL}"
    return None
