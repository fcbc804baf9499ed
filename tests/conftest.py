"""Shared fixtures: a test bed whose namespaces and processes are always removed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testbed.bed import Testbed, links
from testbed.mesh import Mesh, one_node

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


def make_mesh(bed: Testbed, agent_args: list[str] | None = None) -> Mesh:
    return one_node(bed, agent_args, registry_args=["--max-expiration", "30"])


@pytest.fixture
def mesh(bed: Testbed) -> Mesh:
    return make_mesh(bed)


def only_lo(netns: str) -> bool:
    return links(netns) == ["lo"]
