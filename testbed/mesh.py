"""One node with its registry and agent: the smallest mesh, for tests, demo parts and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from testbed.bed import Proc, Testbed


@dataclass
class Mesh:
    bed: Testbed
    node: str  # the node's namespace
    registry: str  # unix:// URL
    agent: str  # unix:// URL
    agent_proc: Proc


def one_node(bed: Testbed, agent_args: list[str] | None = None, registry_args: list[str] | None = None) -> Mesh:
    node = bed.netns("node")
    _, registry = bed.registry(node, extra=registry_args)
    proc, agent = bed.agent(node, "node1", registry, extra=agent_args)
    return Mesh(bed, node, registry, agent, proc)
