"""What a caller on a pod's socket may do. Pure decisions."""

from __future__ import annotations

from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest


def client_inode(conn: Connection) -> int | None:
    """The inode of the client namespace of a connection this agent holds (its reply's
    KERNEL mechanism), or None for one that is not a pod's on this node."""
    if conn.mechanism.type != "KERNEL":
        return None
    text = conn.mechanism.parameters.get("netnsInode", "")
    return int(text) if text.isdigit() else None


def request_refusal(pod: str, pod_ino: int, request: NetworkServiceRequest, named_ino: int | None,
                    held: Connection | None) -> str | None:  # fmt: skip
    """Why POD (namespace inode POD_INO) may not make REQUEST, or None. NAMED_INO: the inode
    of the namespace the request's KERNEL mechanism names; HELD: the connection of the
    request's id this agent holds already."""
    if any(m.cls == "REMOTE" for m in request.mechanism_preferences):
        return f"the socket of {pod} takes KERNEL requests only (REMOTE ones are for other agents)"
    if named_ino is None:
        return f"the socket of {pod} takes KERNEL requests only: name {pod}'s network namespace"
    if named_ino != pod_ino:
        return f"the socket of {pod} serves network namespace inode {pod_ino}, not inode {named_ino}"
    return connection_refusal(pod, pod_ino, held)


def connection_refusal(pod: str, pod_ino: int, held: Connection | None) -> str | None:
    """Why POD may not refresh, update or close HELD (a connection this agent holds), or None."""
    if held is not None and client_inode(held) != pod_ino:
        return f"connection {held.path.path_segments[0].id if held.path.path_segments else held.id} is not {pod}'s"
    return None
