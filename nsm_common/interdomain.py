"""Names across domains: `NAME@DOMAIN`, as upstream's interdomain helpers read them.

A service or endpoint name that carries `@` belongs to another domain's registry: what
precedes the first `@` is its name there, what follows is the domain. Upstream strips the
suffix before a name crosses to that domain's registry and puts it back on every answer,
so the far registry and a floating one hold plain names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
