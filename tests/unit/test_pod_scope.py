"""What a caller on a pod's socket may do (pure decisions)."""

from __future__ import annotations

from nsm_agent.pods.scope import client_inode, connection_refusal, request_refusal
from nsm_api.connection_pb2 import Connection, Mechanism, Path, PathSegment
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.monitor import ConnectionEvents

POD = "pod-a"


def held(ino: int, client_id: str = "c1") -> Connection:
    return Connection(
        id="agent-seg",
        path=Path(
            index=1, path_segments=[PathSegment(name="nsmctl", id=client_id), PathSegment(name="n1", id="agent-seg")]
        ),
        mechanism=Mechanism(cls="LOCAL", type="KERNEL", parameters={"netnsInode": str(ino)}),
    )


def kernel(ino: int) -> NetworkServiceRequest:
    req = NetworkServiceRequest(connection=Connection(id="c1"))
    req.mechanism_preferences.append(Mechanism(cls="LOCAL", type="KERNEL", parameters={"netnsInode": str(ino)}))
    return req


def test_a_pod_names_its_own_namespace_only() -> None:
    assert request_refusal(POD, 10, kernel(10), 10, None) is None
    assert request_refusal(POD, 10, kernel(11), 11, None) == (
        "the socket of pod-a serves network namespace inode 10, not inode 11"
    )
    assert "KERNEL requests only" in str(request_refusal(POD, 10, NetworkServiceRequest(), None, None))
    remote = kernel(10)
    remote.mechanism_preferences.append(Mechanism(cls="REMOTE", type="VXLAN"))
    assert "REMOTE ones are for other agents" in str(request_refusal(POD, 10, remote, 10, None))


def test_a_pod_touches_its_own_connections_only() -> None:
    assert connection_refusal(POD, 10, held(10)) is None and connection_refusal(POD, 10, None) is None
    assert connection_refusal(POD, 10, held(11)) == "connection c1 is not pod-a's"
    # A refresh of another pod's id, naming its own namespace: that would move the connection.
    assert request_refusal(POD, 10, kernel(10), 10, held(11)) == "connection c1 is not pod-a's"
    assert client_inode(Connection(mechanism=Mechanism(type="VXLAN"))) is None


def test_a_connection_is_found_by_any_of_its_segments_ids() -> None:
    events = ConnectionEvents()
    conn = held(10)
    events.update(conn)
    assert events.find("c1") == conn and events.find("agent-seg") == conn and events.find("nope") is None
    events.delete(conn)
    assert events.find("c1") is None
