"""An agent of this version carries on connections journalled by the agent before it, and
refuses a journal it does not know without touching the connections it names.

The version-0 log is the one a running agent writes here without its first line (the
format header): tests/unit/test_journal_format.py shows, against a log written by that
earlier agent, that its entry lines are byte for byte what this version writes.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from nsm_client.runtime import kernel_request
from testbed.bed import Testbed, links, ping
from testbed.mesh import Mesh
from tests.helpers.mesh import agent_client, ifindex, make_mesh, only_lo


def connected(bed: Testbed) -> tuple[str, str, str, int, Mesh]:
    """A one-node mesh, an endpoint and a client connected; (pod, far address, conn id, ifindex, mesh)."""
    mesh = make_mesh(bed)
    bed.endpoint(bed.netns("ep"), "web-0", "web", "10.61.0.0/24", mesh.agent)
    pod = bed.netns("c1")
    conn = agent_client(mesh.agent).request(kernel_request(f"/var/run/netns/{pod}", "web", "nsm-1"))
    far = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    assert ping(pod, far)
    return pod, far, conn.id, ifindex(pod, "nsm-1"), mesh


def killed(bed: Testbed, mesh: Mesh) -> Path:
    """`kill -9` of the agent; its journal, as it left it."""
    os.kill(mesh.agent_proc.popen.pid, signal.SIGKILL)
    mesh.agent_proc.popen.wait(5)
    return bed.dir / "node1-state" / "connections.log"


def test_a_journal_of_the_earlier_format_is_carried_on(bed: Testbed) -> None:
    pod, far, conn_id, index, mesh = connected(bed)
    log = killed(bed, mesh)
    lines = log.read_text().splitlines()
    assert json.loads(lines[0])["version"] == 1
    log.write_text("".join(line + "\n" for line in lines[1:]))  # as the agent before wrote it
    new, _ = bed.agent(mesh.node, "node1", mesh.registry)
    bed.wait_for(new, "carried on after restart")
    assert "connections=1" in new.output()
    assert ifindex(pod, "nsm-1") == index and ping(pod, far)
    held = agent_client(mesh.agent).connections().values()
    assert [c.path.path_segments[0].id for c in held] == [conn_id]
    assert json.loads(log.read_text().splitlines()[0])["version"] == 1  # rewritten in the current format
    agent_client(mesh.agent).close_id(conn_id)
    assert only_lo(pod)


def test_a_journal_of_an_unknown_format_stops_the_agent_and_touches_nothing(bed: Testbed) -> None:
    pod, far, conn_id, index, mesh = connected(bed)
    log = killed(bed, mesh)
    lines = log.read_text().splitlines()
    lines[0] = json.dumps({"format": "nsm-connection-journal", "version": 7})
    log.write_text("".join(line + "\n" for line in lines))
    before = log.read_bytes()
    new, _ = bed.agent(mesh.node, "node1", mesh.registry, wait=False)
    assert new.popen.wait(20) != 0
    out = new.output()
    assert "version 7" in out and "Nothing was changed" in out and str(log) in out
    assert log.read_bytes() == before
    assert sorted(links(pod)) == ["lo", "nsm-1"] and ifindex(pod, "nsm-1") == index and ping(pod, far)
    assert "agent serving" not in out  # it never served
    # Put the journal back as it was and the connection is carried on after all.
    lines[0] = json.dumps({"format": "nsm-connection-journal", "version": 1})
    log.write_text("".join(line + "\n" for line in lines))
    again, _ = bed.agent(mesh.node, "node1", mesh.registry)
    bed.wait_for(again, "carried on after restart")
    assert ifindex(pod, "nsm-1") == index and ping(pod, far)
    agent_client(mesh.agent).close_id(conn_id)
    assert only_lo(pod)
