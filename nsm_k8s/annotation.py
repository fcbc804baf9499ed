"""The pod annotation, in upstream NSM's grammar. Pure.

    networkservicemesh.io: kernel://SERVICE[@DOMAIN][/IFNAME][?key=value&...][, ...]

Several entries are separated by commas. An entry without an interface name
gets `nsm-N`, the first free number. Labels go into the Request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from nsm_common.names import ifname_problem, labels_problem, name_problem

ANNOTATION = "networkservicemesh.io"
SCHEMES = ("kernel",)
_ENTRY_SPLIT = re.compile(r"\s*,\s*")


class AnnotationError(ValueError):
    """The annotation is malformed; the message names the entry and the problem."""


@dataclass(frozen=True)
class Requested:
    mechanism: str
    service: str
    ifname: str
    labels: dict[str, str] = field(default_factory=dict)


def parse(value: str) -> list[Requested]:
    """Upstream's annotation value (`kernel://SERVICE[/IFNAME][?k=v&...]`, comma-separated) as requests;
    AnnotationError names the bad entry."""
    if not value.strip():
        raise AnnotationError(f"{ANNOTATION}: the annotation is empty")
    entries = [e for e in _ENTRY_SPLIT.split(value.strip())]
    parsed: list[tuple[str, str, str, dict[str, str]]] = []
    for entry in entries:
        if not entry:
            raise AnnotationError(f"{ANNOTATION}: an empty entry (two commas in a row, or a trailing comma)")
        parsed.append(_entry(entry))
    taken = {ifname for _, _, ifname, _ in parsed if ifname}
    out: list[Requested] = []
    seen: set[str] = set()
    n = 1
    for scheme, service, ifname, labels in parsed:
        if not ifname:
            while f"nsm-{n}" in taken:
                n += 1
            ifname = f"nsm-{n}"
            taken.add(ifname)
        if ifname in seen:
            raise AnnotationError(f"{ANNOTATION}: interface name {ifname!r} is requested twice in one pod")
        seen.add(ifname)
        out.append(Requested(scheme, service, ifname, labels))
    return out


AWARENESS_GROUPS = "NSM_AWARENESS_GROUPS"


def parse_awareness_groups(value: str) -> list[list[Requested]]:
    """Upstream's awareness groups, `[URL,URL,...],[URL,...]` with each URL in the annotation's
    grammar (an interface name stays empty when not given: it then matches any). The services
    of one group may hand out overlapping addresses to one pod. AnnotationError names the problem."""
    text = "".join(value.split())
    if not text:
        return []
    if not (text.startswith("[") and text.endswith("]")):
        raise AnnotationError(f"{AWARENESS_GROUPS}: expected [URL,...],[URL,...], not {value!r}")
    groups: list[list[Requested]] = []
    for n, body in enumerate(text[1:-1].split("],["), 1):
        if "[" in body or "]" in body:
            raise AnnotationError(f"{AWARENESS_GROUPS}: group {n}: unbalanced brackets in {value!r}")
        items = body.split(",")
        if any(not item for item in items):
            raise AnnotationError(f"{AWARENESS_GROUPS}: group {n} has an empty entry")
        groups.append([Requested(*_entry(item)) for item in items])
    return groups


def _entry(entry: str) -> tuple[str, str, str, dict[str, str]]:
    where = f"{ANNOTATION} entry {entry!r}"
    if "://" not in entry:
        raise AnnotationError(f"{where}: expected kernel://SERVICE[/IFNAME][?labels]")
    try:
        parts = urlsplit(entry)
    except ValueError as exc:  # an unbalanced [ or ] where the service name goes
        raise AnnotationError(f"{where}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise AnnotationError(f"{where}: mechanism {parts.scheme!r} is not supported (use kernel://)")
    service = parts.netloc
    if not service:
        raise AnnotationError(f"{where}: the service name is empty")
    problem = name_problem("network service", service)
    if problem:
        raise AnnotationError(f"{where}: {problem}")
    path = parts.path.lstrip("/")
    if "/" in path:
        raise AnnotationError(f"{where}: an interface name cannot contain '/'")
    if path:
        problem = ifname_problem(path)
        if problem:
            raise AnnotationError(f"{where}: {problem}")
    if parts.fragment:
        raise AnnotationError(f"{where}: unexpected '#{parts.fragment}'")
    labels: dict[str, str] = {}
    if parts.query:
        for item in parts.query.split("&"):
            key, sep, _ = item.partition("=")
            if not sep or not key:
                raise AnnotationError(f"{where}: label {item!r} is not key=value")
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        labels = dict(pairs)
        if len(labels) != len(pairs):
            raise AnnotationError(f"{where}: a label is given twice")
        problem = labels_problem(where, labels)
        if problem:
            raise AnnotationError(problem)
    return parts.scheme, service, path, labels
