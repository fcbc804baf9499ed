"""Names across domains: `NAME@DOMAIN`, as upstream's interdomain helpers read them.

A service or endpoint name that carries `@` belongs to another domain's registry: what
precedes the first `@` is its name there, what follows is the domain. Upstream strips the
suffix before a name crosses to that domain's registry and puts it back on every answer,
so the far registry and a floating one hold plain names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.names import MAX_NAME

SEPARATOR = "@"
# A domain is a DNS name (its registry is found as `registry.nsm-system.DOMAIN`): labels of
# letters, digits and inner hyphens, at most 63 each and 253 in all.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DomainNameError(ValueError):
    """A name or domain that cannot be used across domains; the message says why."""


def validate_domain(domain: str) -> str:
    """DOMAIN in lower case, or DomainNameError naming what is wrong with it. Stricter than
    the API's check of a whole `NAME@DOMAIN` (`names.name_problem`, a DNS subdomain): this
    is the name DNS will be asked, label by label."""
    name = domain.lower().rstrip(".")
    if not name:
        raise DomainNameError("a domain cannot be empty")
    if len(name) > MAX_NAME:
        raise DomainNameError(f"domain {domain!r} is longer than {MAX_NAME} characters")
    for label in name.split("."):
        if not _LABEL.match(label):
            raise DomainNameError(
                f"domain {domain!r}: label {label!r} is not a DNS label (letters, digits and inner hyphens, at most 63)"
            )
    return name


@dataclass(frozen=True)
class Remote:
    """A name of another domain: `name` as that domain's registry knows it."""

    name: str
    domain: str

    def __str__(self) -> str:
        return join(self.name, self.domain)


def is_remote(name: str) -> bool:
    return SEPARATOR in name


def split(name: str) -> Remote | None:
    """NAME@DOMAIN as a Remote (the domain validated), or None for a name of this domain."""
    if SEPARATOR not in name:
        return None
    target, _, domain = name.partition(SEPARATOR)
    if not target:
        raise DomainNameError(f"{name!r}: nothing before {SEPARATOR!r}")
    return Remote(target, validate_domain(domain))


def join(name: str, domain: str) -> str:
    return f"{name}{SEPARATOR}{domain}"


def domain_of(names: Iterable[str]) -> str | None:
    """The one domain the `@` names among NAMES belong to (None: all are this domain's);
    DomainNameError when they name two, which no single registry could answer."""
    found = {remote.domain for remote in (split(n) for n in names if n) if remote is not None}
    if len(found) > 1:
        raise DomainNameError(f"names of {len(found)} domains in one call ({', '.join(sorted(found))}): one at a time")
    return found.pop() if found else None


def local_name(name: str, domain: str) -> str:
    """NAME as DOMAIN's registry knows it: `x@DOMAIN` is `x`; other names stay as they are."""
    remote = split(name) if is_remote(name) else None
    return remote.name if remote is not None and remote.domain == domain else name


def _suffixed(name: str, domain: str) -> str:
    return name if not name or is_remote(name) else join(name, domain)


def service_to(service: NetworkService, domain: str) -> NetworkService:
    """A copy of SERVICE with DOMAIN's suffix off its name, to send to DOMAIN's registry."""
    out = NetworkService()
    out.CopyFrom(service)
    out.name = local_name(service.name, domain)
    return out


def service_from(service: NetworkService, domain: str) -> NetworkService:
    """A copy of SERVICE, as DOMAIN's registry answered it, with the suffix back on."""
    out = NetworkService()
    out.CopyFrom(service)
    out.name = _suffixed(service.name, domain)
    return out


def _endpoint_names(endpoint: NetworkServiceEndpoint, rename: Callable[[str], str]) -> NetworkServiceEndpoint:
    out = NetworkServiceEndpoint()
    out.CopyFrom(endpoint)
    out.name = rename(endpoint.name)
    out.network_service_names[:] = [rename(n) for n in endpoint.network_service_names]
    out.ClearField("network_service_labels")
    for key, labels in endpoint.network_service_labels.items():
        out.network_service_labels[rename(key)].CopyFrom(labels)
    return out


def endpoint_to(endpoint: NetworkServiceEndpoint, domain: str) -> NetworkServiceEndpoint:
    """A copy of ENDPOINT with DOMAIN's suffix off its name, its service names and the keys of
    its labels (upstream's proxy-dns does the same), to send to DOMAIN's registry."""
    return _endpoint_names(endpoint, lambda n: local_name(n, domain))


def endpoint_from(endpoint: NetworkServiceEndpoint, domain: str) -> NetworkServiceEndpoint:
    """A copy of ENDPOINT, as DOMAIN's registry answered it, with the suffix back on its names."""
    return _endpoint_names(endpoint, lambda n: _suffixed(n, domain))
