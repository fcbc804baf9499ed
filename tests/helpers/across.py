"""A connection kept across domains, for the heal tests of the interdomain beds (1:1 NAT and
NAT mode alike): two endpoints of svc in cluster2, one per node, and a keeper on cluster1's
first node holding svc@cluster2."""

from __future__ import annotations

from dataclasses import dataclass

from testbed.bed import Proc, Testbed, ping
from testbed.clusters import DomainNode, Federation
from testbed.keeper import keep, peer, wait_event


@dataclass
class KeptAcross:
    keeper: Proc
    pod: str
    first: dict[str, object]  # the keeper's "connected" event
    serving: str  # the endpoint it connected to, `epN@cluster2`
    serving_node: DomainNode
    endpoints: dict[str, Proc]  # by `epN@cluster2`


def keep_across(bed: Testbed, fed: Federation) -> KeptAcross:
    """Connected and answering pings; the serving endpoint is one of the two started."""
    here = fed.domain("cluster1").nodes[0]
    far = fed.domain("cluster2").nodes[:2]
    procs = {
        f"ep{i}@cluster2": bed.endpoint(fed.pod(node, "ep"), f"ep{i}", "svc", f"10.9{i}.0.0/24", node.agent)[0]
        for i, node in enumerate(far, start=1)
    }
    pod = fed.pod(here, "c1")
    keeper = keep(bed, here.agent, pod, "svc@cluster2")
    first = wait_event(keeper, "connected")
    serving = str(first["endpoint"])
    assert serving in procs and ping(pod, peer(first), count=2)
    node = far[0] if serving == "ep1@cluster2" else far[1]
    return KeptAcross(keeper, pod, first, serving, node, procs)
