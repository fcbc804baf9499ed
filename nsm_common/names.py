"""Names, labels and interface names every component checks the same way (limits in the README)."""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_NAME = 253
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 63
MAX_LABELS = 64
IFNAMSIZ = 15  # bytes of an interface name, without the terminating NUL

_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


def name_problem(kind: str, name: str) -> str | None:
    """Why `name` is no valid service or endpoint name (`NAME[@DOMAIN]`), or None."""
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
    """Why `labels` break the limits (count, key syntax, value length), or None."""
    if len(labels) > MAX_LABELS:
        return f"{where}: {len(labels)} labels; at most {MAX_LABELS}"
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or not _LABEL_KEY.match(key):
            return f"{where}: label key {key!r} must be 1 to {MAX_LABEL_KEY} letters, digits, '-', '_', '.', '/'"
        if len(value) > MAX_LABEL_VALUE:
            return f"{where}: label {key!r} has a value of {len(value)} characters; at most {MAX_LABEL_VALUE}"
    return None


def ifname_problem(name: str) -> str | None:
    """Why the kernel (or we) would refuse `name` as an interface name, or None."""
    raw = name.encode()
    if not raw:
        return "interface name is empty"
    if len(raw) > IFNAMSIZ:
        return f"interface name {name!r} is {len(raw)} bytes long; the kernel allows at most {IFNAMSIZ}"
    if name in (".", "..") or ".." in name:
        return f"interface name {name!r} must not contain '..'"
    if "/" in name:
        return f"interface name {name!r} must not contain '/'"
    if any(c.isspace() for c in name) or ":" in name:
        return f"interface name {name!r} must not contain whitespace or ':'"
    if not name.isprintable():
        return f"interface name {name!r} must not contain control characters"
    return None
