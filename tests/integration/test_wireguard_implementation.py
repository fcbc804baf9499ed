"""Which WireGuard the agent uses: the kernel module when the kernel has one, else
wireguard-go, and it says so in its log."""

from __future__ import annotations

import subprocess

import pytest

from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, run
from testbed.cluster import Cluster
from tests.helpers.mesh import agent_client


def kernel_has_wireguard(bed: Testbed) -> bool:
    probe = bed.netns("wgprobe")
    return run("ip", "-n", probe, "link", "add", "wgprobe", "type", "wireguard", check=False).returncode == 0


def connect_over_wireguard(bed: Testbed) -> Cluster:
    cluster = Cluster.build(bed, nodes=2, agent_args=["--remote-mechanisms", "WIREGUARD"])
    n1, n2 = cluster.nodes
    bed.endpoint(cluster.pod(n2, "ep"), "ep1", "svc", "10.85.0.0/24", n2.agent)
    pod = cluster.pod(n1, "c1")
    agent_client(n1.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    return cluster


def agent_logs(bed: Testbed) -> str:
    return "".join(p.output() for p in bed.procs if p.name.startswith("agent-"))


def test_wireguard_go_where_the_kernel_has_no_module(bed: Testbed) -> None:
    if kernel_has_wireguard(bed):
        pytest.skip("this kernel has the WireGuard module; the kernel path test covers it")
    cluster = connect_over_wireguard(bed)
    assert agent_logs(bed).count("implementation=wireguard-go") == 2
    out = subprocess.run(["pgrep", "-f", "wireguard-go -f nsmwg"], capture_output=True, text=True).stdout.split()
    assert len(out) >= 2
    assert len(cluster.nodes) == 2


def test_kernel_module_when_present(bed: Testbed) -> None:
    if not kernel_has_wireguard(bed):
        pytest.skip("this kernel has no WireGuard module (covered where it has one: the Vagrant VMs)")
    connect_over_wireguard(bed)
    logs = agent_logs(bed)
    assert logs.count("implementation=kernel module") == 2 and "wireguard-go" not in logs


SLOW_SOCKET = """#!/bin/sh
# wireguard-go as a loaded machine may run it: the device shows up well before the
# control socket. A TUN device of that name first, then the real one with its socket.
name="$2"
ip tuntap add dev "$name" mode tun
sleep 0.5
ip link del "$name"
exec wireguard-go "$@"
"""


def test_the_agent_waits_for_wireguard_gos_control_socket(bed: Testbed) -> None:
    if kernel_has_wireguard(bed):
        pytest.skip("this kernel has the WireGuard module: wireguard-go is not started")
    slow = bed.dir / "slow-wireguard-go"
    slow.write_text(SLOW_SOCKET)
    slow.chmod(0o755)
    cluster = Cluster.build(bed, nodes=1, agent_args=["--remote-mechanisms", "WIREGUARD"])
    n2 = cluster.add_node(2, ["--remote-mechanisms", "WIREGUARD", "--wireguard-go", str(slow)])
    n1 = cluster.nodes[0]
    bed.endpoint(cluster.pod(n2, "ep"), "ep1", "svc", "10.86.0.0/24", n2.agent)
    pod = cluster.pod(n1, "c1")
    conn = agent_client(n1.agent).request(kernel_request(f"/var/run/netns/{pod}", "svc", "nsm-1"))
    assert conn.path.path_segments[1].metrics["tunnel"] == "WIREGUARD"
    assert "Protocol not supported" not in agent_logs(bed)
