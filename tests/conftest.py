"""Shared fixtures: a test bed whose namespaces and processes are always removed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testbed.bed import Testbed
from testbed.mesh import Mesh
from tests.helpers.mesh import make_mesh, wireguard_sockets


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


@pytest.fixture
def mesh(bed: Testbed) -> Mesh:
    return make_mesh(bed)
