"""Which WireGuard the agent uses: the kernel module when the kernel has one, else
wireguard-go, and it says so in its log."""

from __future__ import annotations

import subprocess

import pytest

from nsm_client.runtime import kernel_request
from testbed.bed import Testbed
from testbed.cluster import Cluster
from tests.helpers.mesh import agent_client, kernel_has_wireguard


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
    # The console renderer quotes a value with a space in it.
    assert logs.count("implementation='kernel module'") == 2 and "wireguard-go" not in logs


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


SLOW_START = """#!/bin/sh
# wireguard-go on a busy machine: it takes its time before it even starts.
touch "$0.started"
sleep 3
touch "$0.up"
exec wireguard-go "$@"
"""


def test_a_slow_wireguard_start_holds_up_no_other_request(bed: Testbed) -> None:
    """The netlink thread never waits on wireguard-go or `wg`: while node 1's WireGuard device
    is still coming up for one Request, a local Request on that node completes."""
    if kernel_has_wireguard(bed):
        pytest.skip("this kernel has the WireGuard module: wireguard-go is not started")
    import threading

    slow = bed.dir / "slow-start-wireguard-go"
    slow.write_text(SLOW_START)
    slow.chmod(0o755)
    cluster = Cluster.build(bed, nodes=0)
    n1 = cluster.add_node(1, ["--remote-mechanisms", "WIREGUARD", "--wireguard-go", str(slow)])
    n2 = cluster.add_node(2, ["--remote-mechanisms", "WIREGUARD"])
    bed.endpoint(cluster.pod(n1, "ep"), "ep-local", "local", "10.87.0.0/24", n1.agent)
    bed.endpoint(cluster.pod(n2, "ep"), "ep-remote", "remote", "10.88.0.0/24", n2.agent)
    far, near = cluster.pod(n1, "c1"), cluster.pod(n1, "c2")
    result: list[object] = []

    def remote() -> None:
        try:
            result.append(
                agent_client(n1.agent, 30).request(kernel_request(f"/var/run/netns/{far}", "remote", "nsm-1"))
            )
        except Exception as exc:
            result.append(exc)

    asker = threading.Thread(target=remote)
    asker.start()
    started = bed.dir / "slow-start-wireguard-go.started"
    for _ in range(200):
        if started.exists():
            break
        asker.join(0.05)
    assert started.exists() and asker.is_alive()
    local = agent_client(n1.agent).request(kernel_request(f"/var/run/netns/{near}", "local", "nsm-1"))
    assert local.network_service_endpoint_name == "ep-local"
    up = bed.dir / "slow-start-wireguard-go.up"
    assert not up.exists(), "the local Request waited for wireguard-go to come up"
    asker.join(30)
    assert len(result) == 1 and not isinstance(result[0], Exception), result
