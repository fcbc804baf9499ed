"""An endpoint's policy routes from upstream's file (`NSM_PBR_CONFIG_PATH`, by default
/etc/policy-based-routing/config.yaml): a YAML list of

    - from: 172.16.1.101/32      # the source (a CIDR); absent: any
      proto: 6                   # IP protocol number
      dstport: 6666              # a port or LOW-HIGH (also dst_port, dstPort)
      srcport: 1000-2000         # (also src_port, srcPort)
      routes:
        - prefix: 172.16.1.100/32
          nexthop: 172.16.1.100  # absent: on the link (also nextHop)

Each entry is checked here, so a bad file stops the endpoint at start naming the entry."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

from nsm_api.connectioncontext_pb2 import PolicyRoute, Route

MAX_POLICIES = 64
_ALIASES = {"dst_port": "dstport", "dstPort": "dstport", "src_port": "srcport", "srcPort": "srcport"}


class PolicyRoutesError(ValueError):
    """The file is unreadable or an entry is malformed; the message names it."""


def _port(where: str, value: object) -> str:
    text = str(value).strip()
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise PolicyRoutesError(f"{where}: {value!r} is not a port or LOW-HIGH") from None
    if not (1 <= lo <= hi <= 65535):
        raise PolicyRoutesError(f"{where}: {value!r} is not within 1-65535 (LOW <= HIGH)")
    return text


def _cidr(where: str, value: object) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise PolicyRoutesError(f"{where}: {value!r} is not a CIDR") from None


def _route(where: str, item: object) -> Route:
    if not isinstance(item, dict):
        raise PolicyRoutesError(f"{where}: expected prefix (and nexthop)")
    unknown = set(item) - {"prefix", "nexthop", "nextHop"}
    if unknown:
        raise PolicyRoutesError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "prefix" not in item:
        raise PolicyRoutesError(f"{where}: prefix is missing")
    route = Route(prefix=_cidr(f"{where}.prefix", item["prefix"]))
    hop = item.get("nexthop", item.get("nextHop"))
    if hop is not None:
        try:
            route.nextHop = str(ipaddress.ip_address(str(hop)))
        except ValueError:
            raise PolicyRoutesError(f"{where}.nexthop: {hop!r} is not an address") from None
    return route


def _policy(where: str, entry: object) -> PolicyRoute:
    if not isinstance(entry, dict):
        raise PolicyRoutesError(f"{where}: expected a mapping of from, proto, dstport, srcport, routes")
    entry = {_ALIASES.get(str(k), str(k)): v for k, v in entry.items()}
    unknown = set(entry) - {"from", "proto", "dstport", "srcport", "routes"}
    if unknown:
        raise PolicyRoutesError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    policy = PolicyRoute()
    if entry.get("from") is not None:
        setattr(policy, "from", _cidr(f"{where}.from", entry["from"]))
    if entry.get("proto") is not None:
        proto = str(entry["proto"])
        if not proto.isdigit() or int(proto) > 255:
            raise PolicyRoutesError(f"{where}.proto: {entry['proto']!r} is not an IP protocol number (0-255)")
        policy.proto = proto
    if entry.get("dstport") is not None:
        policy.dst_port = _port(f"{where}.dstport", entry["dstport"])
    if entry.get("srcport") is not None:
        policy.src_port = _port(f"{where}.srcport", entry["srcport"])
    routes: Any = entry.get("routes") or []
    if not isinstance(routes, list):
        raise PolicyRoutesError(f"{where}.routes: expected a list")
    policy.routes.extend(_route(f"{where}.routes[{i}]", r) for i, r in enumerate(routes))
    return policy


def parse_policy_routes(text: str, source: str = "policy routes") -> list[PolicyRoute]:
    """The policies in TEXT (upstream's YAML); PolicyRoutesError naming SOURCE and the entry."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyRoutesError(f"{source}: not YAML: {exc}") from None
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise PolicyRoutesError(f"{source}: expected a list of policies")
    if len(doc) > MAX_POLICIES:
        raise PolicyRoutesError(f"{source}: {len(doc)} policies; at most {MAX_POLICIES}")
    return [_policy(f"{source}: policy {i + 1}", entry) for i, entry in enumerate(doc)]


def load_policy_routes(path: str, required: bool = True) -> list[PolicyRoute]:
    """The file's policies. Only where the path is upstream's default (not REQUIRED) may the
    file be missing, and then there are none."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        if required:
            raise PolicyRoutesError(f"{path}: no such file") from None
        return []
    except OSError as exc:
        raise PolicyRoutesError(f"{path}: {exc.strerror}") from None
    return parse_policy_routes(text, path)
