"""Which journalled connections a restart finds whole in the kernel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Each namespace path the journal names: the aliases of the links up there, or
# None when the namespace is gone (the pod's sandbox went, the node rebooted).
Present = Mapping[str, "set[str] | None"]


def intact(namespaces: Sequence[str], alias: str, present: Present) -> bool:
    """Every namespace the connection's wire reaches is there and holds an up link
    carrying its alias. With no namespace noted nothing can be checked: not intact."""
    if not namespaces:
        return False
    for path in namespaces:
        found = present.get(path)
        if found is None or alias not in found:
            return False
    return True
