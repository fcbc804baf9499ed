"""The node's excluded prefixes: upstream's file (`prefixes:` and a list of CIDRs, as its
ConfigMap `excluded-prefixes-config` holds under key `excluded_prefixes_input.yaml`), and
which addresses they rule out. Pure.

They are the cluster's own ranges (pods, services, nodes): an endpoint must never hand a pod
an address inside them, or the pod's traffic to its own cluster would go into the mesh.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import yaml

from nsm_api.connectioncontext_pb2 import IPContext
from nsm_common.prefixes import address_inside

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_PREFIXES = 1024


class ExcludedPrefixesError(ValueError):
    """The file is not upstream's shape, or an entry is no CIDR; the message names its line."""


def parse_excluded_prefixes(text: str, source: str) -> tuple[IPNetwork, ...]:
    """The prefixes in TEXT; ExcludedPrefixesError naming SOURCE and the bad line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ExcludedPrefixesError(f"{source}{where}: not YAML ({getattr(exc, 'problem', exc)})") from None
    if root is None:
        return ()
    if not isinstance(root, yaml.MappingNode):
        raise ExcludedPrefixesError(f"{source} line {root.start_mark.line + 1}: expected 'prefixes:' and a list")
    found: yaml.Node | None = None
    for key, value in root.value:
        if not (isinstance(key, yaml.ScalarNode) and key.value == "prefixes"):
            raise ExcludedPrefixesError(f"{source} line {key.start_mark.line + 1}: unknown key {key.value!r}")
        found = value
    if found is None or (isinstance(found, yaml.ScalarNode) and found.value in ("", "~", "null")):
        return ()
    if not isinstance(found, yaml.SequenceNode):
        raise ExcludedPrefixesError(f"{source} line {found.start_mark.line + 1}: 'prefixes' must be a list")
    if len(found.value) > MAX_PREFIXES:
        raise ExcludedPrefixesError(f"{source}: {len(found.value)} prefixes; at most {MAX_PREFIXES}")
    out: list[IPNetwork] = []
    for item in found.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.ScalarNode):
            raise ExcludedPrefixesError(f"{source} line {line}: a prefix must be a CIDR such as 10.96.0.0/12")
        try:
            net = ipaddress.ip_network(item.value.strip(), strict=False)
        except ValueError:
            raise ExcludedPrefixesError(
                f"{source} line {line}: {item.value!r} is not a CIDR such as 10.96.0.0/12 or fd00:96::/108"
            ) from None
        if net not in out:
            out.append(net)
    return tuple(out)


def excluded_address(ip: IPContext, prefixes: Sequence[IPNetwork]) -> tuple[str, IPNetwork] | None:
    """The first address of the connection's context inside the node's PREFIXES; or None."""
    return address_inside(ip, prefixes)


def merged(asked: Iterable[str], prefixes: Sequence[IPNetwork]) -> list[str]:
    """The Request's excluded prefixes with the node's added, each once, in order."""
    return list(dict.fromkeys([*asked, *(str(p) for p in prefixes)]))
