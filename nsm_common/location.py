"""Where a client or endpoint runs, as labels (upstream's clientinfo): `nodeName`, `podName`
and `clusterName` from the environment variables NODE_NAME, POD_NAME and CLUSTER_NAME (in
Kubernetes from the downward API). A NetworkService match such as `nodeName:
"{{.nodeName}}"` then selects an endpoint on the client's own node."""

from __future__ import annotations

import os
from collections.abc import Mapping

LOCATION_LABELS = {"NODE_NAME": "nodeName", "POD_NAME": "podName", "CLUSTER_NAME": "clusterName"}


def with_location(labels: Mapping[str, str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """LABELS with the location labels the environment names added; a label given already
    wins (as upstream's), and an unset or empty variable adds nothing."""
    env = os.environ if env is None else env
    out = dict(labels)
    for variable, label in LOCATION_LABELS.items():
        value = env.get(variable, "")
        if value and label not in out:
            out[label] = value
    return out
