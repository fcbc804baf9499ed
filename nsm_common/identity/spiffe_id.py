"""SPIFFE IDs (spiffe://TRUST-DOMAIN/PATH), which role an ID plays, and the DNS name a
server's certificate carries for it.

Why a DNS name at all: grpcio's clients verify a server's certificate by host name
and ignore URI SANs, so a server certificate with only its SPIFFE ID fails the
check even with `grpc.ssl_target_name_override` set to the ID. A server carries a
DNS SAN derived from its ID, and a client overrides the target name with it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_LENGTH = 2048


class SpiffeIdError(ValueError):
    """A SPIFFE ID that the SPIFFE standard does not allow, with what is wrong."""


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse and check against the SPIFFE ID standard; the error says what is wrong."""
        if len(text) > MAX_LENGTH:
            raise SpiffeIdError(f"{text[:40]}…: a SPIFFE ID is at most {MAX_LENGTH} characters")
        scheme, sep, rest = text.partition("://")
        if not sep or scheme != "spiffe":
            raise SpiffeIdError(f"{text!r}: a SPIFFE ID starts with spiffe:// (lower case)")
        if any(c in rest for c in "?#"):
            raise SpiffeIdError(f"{text!r}: a SPIFFE ID has no query or fragment")
        domain, slash, path = rest.partition("/")
        if not domain:
            raise SpiffeIdError(f"{text!r}: the trust domain is missing")
        if not _TRUST_DOMAIN.fullmatch(domain):
            raise SpiffeIdError(
                f"{text!r}: trust domain {domain!r} may hold only lower-case letters, digits, '.', '-' and '_'"
                " (no port, no user)"
            )
        if not slash:
            return cls(domain, "")
        for segment in path.split("/"):
            if not segment:
                raise SpiffeIdError(f"{text!r}: the path has an empty segment (a '//' or a trailing '/')")
            if segment in (".", ".."):
                raise SpiffeIdError(f"{text!r}: the path may not hold '.' or '..' segments")
            if not _SEGMENT.fullmatch(segment):
                raise SpiffeIdError(
                    f"{text!r}: path segment {segment!r} may hold only letters, digits, '.', '-' and '_'"
                )
        return cls(domain, "/" + path)

    @classmethod
    def of_trust_domain(cls, trust_domain: str) -> SpiffeId:
        """spiffe://TRUST-DOMAIN, checked: what a trust domain's CA carries."""
        return cls.parse(f"spiffe://{trust_domain}")

    @property
    def segments(self) -> list[str]:
        return self.path.split("/")[1:] if self.path else []

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    def dns_name(self) -> str:
        """The DNS name a server with this ID carries: the path's segments in reverse,
        then the trust domain (spiffe://example.org/node/n1 → n1.node.example.org).
        Letters are lowered and '_' and '.' in a segment become '-'."""
        labels = [re.sub(r"[._]", "-", s.lower()) for s in reversed(self.segments)]
        labels += [re.sub(r"_", "-", label) for label in self.trust_domain.split(".")]
        bad = [label for label in labels if not _LABEL.fullmatch(label)]
        name = ".".join(labels)
        if bad or len(name) > 253:
            raise SpiffeIdError(
                f"{self}: no DNS name can be made from it ({name!r}: {', '.join(bad) or 'too long'});"
                " give the server's DNS name explicitly"
            )
        return name


# What a pattern's placeholders may stand for: exactly one path segment.
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class IdPattern:
    """A SPIFFE ID with placeholders, each standing for one path segment:
    `spiffe://{trust_domain}/node/{name}`. `{trust_domain}` is the local trust domain."""

    text: str

    @classmethod
    def parse(cls, text: str) -> IdPattern:
        """A pattern checked: with each placeholder filled in it must be a valid SPIFFE ID,
        and a placeholder stands for a whole path segment, never part of one."""
        bare = _PLACEHOLDER.sub("", text)
        if "{" in bare or "}" in bare:
            raise SpiffeIdError(f"{text!r}: a placeholder is a lower-case name in braces, e.g. {{name}}")
        filled = text.replace("{trust_domain}", "example.org")
        for segment in filled.split("://", 1)[-1].split("/")[1:]:
            if _PLACEHOLDER.search(segment) and not _PLACEHOLDER.fullmatch(segment):
                raise SpiffeIdError(f"{text!r}: a placeholder must be a whole path segment, not part of {segment!r}")
        SpiffeId.parse(_PLACEHOLDER.sub("x", filled))
        return cls(text)

    def matches(self, spiffe_id: SpiffeId, trust_domain: str) -> dict[str, str] | None:
        """The placeholders' values when SPIFFE_ID fits the pattern in TRUST_DOMAIN, else None."""
        regex, names = _compiled(self.text, trust_domain)
        found = regex.fullmatch(str(spiffe_id))
        return dict(zip(names, found.groups(), strict=True)) if found else None


@functools.lru_cache(maxsize=64)
def _compiled(text: str, trust_domain: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A pattern as a regular expression, once per pattern and trust domain (roles are
    looked up per call)."""
    parts = _PLACEHOLDER.split(text.replace("{trust_domain}", trust_domain))
    regex = "".join(r"([A-Za-z0-9._-]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts))
    return re.compile(regex), tuple(parts[1::2])


@dataclass(frozen=True)
class Roles:
    """Which SPIFFE IDs count as agents, registries and workloads. The defaults are
    this project's; SPIRE sites often give agents a namespace/service-account ID."""

    trust_domain: str
    agent: IdPattern = IdPattern("spiffe://{trust_domain}/node/{name}")
    registry: IdPattern = IdPattern("spiffe://{trust_domain}/registry")
    workload: IdPattern = IdPattern("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
    # Trust domains federated with this one (--trust-bundle): their agents and registries
    # have those roles here too; their workloads speak through them, never straight.
    federated: frozenset[str] = frozenset()

    def role_of(self, spiffe_id: SpiffeId) -> str | None:
        """'agent', 'registry' or 'workload' (the first pattern that fits), or None:
        an ID of an unfederated trust domain, or of none of the three, has no role."""
        td = spiffe_id.trust_domain
        chosen: tuple[tuple[str, IdPattern], ...]
        if td == self.trust_domain:
            chosen = (("agent", self.agent), ("registry", self.registry), ("workload", self.workload))
        elif td in self.federated:
            chosen = (("agent", self.agent), ("registry", self.registry))
        else:
            return None
        for role, pattern in chosen:
            if pattern.matches(spiffe_id, td) is not None:
                return role
        return None
