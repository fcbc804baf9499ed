"""Helpers shared by the integration and conformance tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nsm_client.runtime import AgentClient
from nsm_common.urls import parse_address
from testbed.bed import Proc, Testbed, links, patience, run
from testbed.mesh import Mesh, one_node

HERE = Path(__file__).resolve().parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces and interfaces")


def kernel_has_wireguard(bed: Testbed) -> bool:
    """Whether this kernel makes WireGuard devices (asked in a namespace of BED's)."""
    probe = bed.netns("wgprobe")
    return run("ip", "-n", probe, "link", "add", "wgprobe", "type", "wireguard", check=False).returncode == 0


def wireguard_sockets() -> set[str]:
    try:
        return set(os.listdir("/var/run/wireguard"))
    except FileNotFoundError:
        return set()


def make_mesh(bed: Testbed, agent_args: list[str] | None = None) -> Mesh:
    return one_node(bed, agent_args, registry_args=["--max-expiration", "30"])


def only_lo(netns: str) -> bool:
    return links(netns) == ["lo"]


def raw_endpoint(
    bed: Testbed,
    pod: str,
    name: str,
    service: str,
    agent: str,
    mode: str = "good",
    prefix: str = "10.70.0",
    extra: list[str] | None = None,
) -> tuple[Proc, Path]:
    """Start tests/helpers/raw_endpoint.py; returns it and its journal of Requests and Closes."""
    journal = bed.dir / f"{name}.journal"
    journal.touch()
    proc = bed.start(
        f"raw-{name}",
        [
            sys.executable,
            str(HERE / "raw_endpoint.py"),
            "--mode",
            mode,
            "--name",
            name,
            "--service",
            service,
            "--netns",
            f"/var/run/netns/{pod}",
            "--listen",
            f"unix://{bed.dir}/{name}.sock",
            "--registry",
            agent,
            "--journal",
            str(journal),
            "--prefix",
            prefix,
            *(extra or []),
        ],
    )
    bed.wait_for(proc, "raw endpoint registered")
    return proc, journal


def agent_client(url: str, timeout: float = 15.0) -> AgentClient:
    return AgentClient(parse_address(url), timeout=patience(timeout))


def ifindex(netns: str, ifname: str) -> int:
    from testbed.bed import run

    out = run("ip", "-n", netns, "-o", "link", "show", ifname).stdout
    return int(out.split(":")[0])
