"""Shared fixtures: a test bed whose namespaces and processes are always removed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from testbed.bed import Testbed, links

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces and interfaces")


@pytest.fixture
def bed() -> Iterator[Testbed]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and interfaces")
    testbed = Testbed()
    sockets_before = wireguard_sockets()
    try:
        yield testbed
    finally:
        testbed.cleanup()
        leftover = [n for n in os.listdir("/var/run/netns") if n.startswith(testbed.prefix)]
        assert not leftover, f"namespaces left behind: {leftover}"
        stale = wireguard_sockets() - sockets_before
        assert not stale, f"wireguard-go sockets left behind: {sorted(stale)}"


def wireguard_sockets() -> set[str]:
    try:
        return set(os.listdir("/var/run/wireguard"))
    except FileNotFoundError:
        return set()


@dataclass
class Mesh:
    bed: Testbed
    node: str
    registry: str  # unix:// URL
    agent: str  # unix:// URL


def make_mesh(bed: Testbed, agent_args: list[str] | None = None) -> Mesh:
    node = bed.netns("node")
    _, registry = bed.registry(node, extra=["--max-expiration", "30"])
    _, agent = bed.agent(node, "node1", registry, extra=agent_args)
    return Mesh(bed, node, registry, agent)


@pytest.fixture
def mesh(bed: Testbed) -> Mesh:
    return make_mesh(bed)


def only_lo(netns: str) -> bool:
    return links(netns) == ["lo"]
