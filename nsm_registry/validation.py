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

import re
from collections.abc import Mapping

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint

PAYLOADS = ("IP", "ETHERNET")
MAX_NAME = 253
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 63
MAX_LABELS = 64
MAX_SERVICES = 32
MAX_URL = 2048

_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


def name_problem(kind: str, name: str) -> str | None:
    if not name:
        return f"{kind} name is empty"
    local, _, domain = name.partition("@")
    for part, what in ((local, "name"), (domain, "domain")):
        if what == "domain" and "@" not in name:
            continue
        if len(part) > MAX_NAME:
            return f"{kind} {what} {part[:40]!r}... is {len(part)} characters; at most {MAX_NAME}"
        if not _SUBDOMAIN.match(part):
            return (
                f"{kind} {what} {part!r} is not a DNS subdomain "
                "(lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
            )
    return None


def labels_problem(where: str, labels: Mapping[str, str]) -> str | None:
    if len(labels) > MAX_LABELS:
        return f"{where}: {len(labels)} labels; at most {MAX_LABELS}"
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or not _LABEL_KEY.match(key):
            return f"{where}: label key {key!r} must be 1 to {MAX_LABEL_KEY} letters, digits, '-', '_', '.', '/'"
        if len(value) > MAX_LABEL_VALUE:
            return f"{where}: label {key!r} has a value of {len(value)} characters; at most {MAX_LABEL_VALUE}"
    return None


def validate_service(service: NetworkService) -> str | None:
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
