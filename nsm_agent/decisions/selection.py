"""Which endpoints may serve a Request: the spec's Match rules, then round robin."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from nsm_api.registry_pb2 import Match, NetworkService, NetworkServiceEndpoint

_TEMPLATE = re.compile(r"\{\{\s*\.([A-Za-z0-9_.\-/]+)\s*\}\}")


def fill_template(value: str, labels: Mapping[str, str]) -> str | None:
    """Replace `{{.key}}` with the Request's label; None when a key is missing (matches nothing)."""
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        key = m.group(1)
        if key not in labels:
            missing = True
            return ""
        return labels[key]

    out = _TEMPLATE.sub(sub, value)
    return None if missing else out


def _selector_applies(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _endpoint_labels(endpoint: NetworkServiceEndpoint, service: str) -> Mapping[str, str]:
    if service in endpoint.network_service_labels:
        return endpoint.network_service_labels[service].labels
    return {}


def _match_candidates(
    match: Match, service: str, endpoints: Sequence[NetworkServiceEndpoint], labels: Mapping[str, str]
) -> list[NetworkServiceEndpoint]:
    if not match.routes:
        # A Match with only metadata selects every endpoint of the service.
        return list(endpoints)
    selectors: list[dict[str, str]] = []
    for route in match.routes:
        filled: dict[str, str] = {}
        ok = True
        for key, value in route.destination_selector.items():
            v = fill_template(value, labels)
            if v is None:
                ok = False
                break
            filled[key] = v
        if ok:
            selectors.append(filled)
    return [ep for ep in endpoints if any(_selector_applies(sel, _endpoint_labels(ep, service)) for sel in selectors)]


def candidates(
    service: NetworkService,
    endpoints: Sequence[NetworkServiceEndpoint],
    labels: Mapping[str, str],
) -> list[NetworkServiceEndpoint]:
    """Endpoints allowed to serve a Request with `labels` for `service`, in registry order.

    `endpoints` must already be the live endpoints registered for the service.
    """
    serving = [ep for ep in endpoints if service.name in ep.network_service_names]
    if not service.matches:
        return serving
    for match in service.matches:
        if not _selector_applies(match.source_selector, labels):
            continue
        found = _match_candidates(match, service.name, serving, labels)
        if found or not match.fallthrough:
            return found
    return []


class RoundRobin:
    """Rotates the candidate order per service so that load spreads over endpoints."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def order(self, service: str, found: Sequence[NetworkServiceEndpoint]) -> list[NetworkServiceEndpoint]:
        if not found:
            return []
        ranked = sorted(found, key=lambda ep: ep.name)
        start = self._next.get(service, 0) % len(ranked)
        self._next[service] = start + 1
        return ranked[start:] + ranked[:start]
