"""Client calls to the node agent, as a pod would make them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence

import grpc

from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_api.connection_pb2 import (
    INITIAL_STATE_TRANSFER,
    Connection,
    Mechanism,
    MonitorScopeSelector,
    Path,
    PathSegment,
)
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_client.exclusions import Asked, excluded_for, next_ifname, overlap, pod_connections
from nsm_common.chain.path import DEFAULT_LIFETIME
from nsm_common.chain.path_tokens import OutgoingTokens
from nsm_common.errors import NsmError
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.transport import LOCAL_ONLY, Transport
from nsm_common.location import with_location
from nsm_common.policy.policies import Policies
from nsm_common.timeutil import now, ts_from
from nsm_common.urls import Address
from nsm_k8s import Requested


def kernel_request(
    netns_path: str,
    service: str,
    ifname: str = "",
    labels: Mapping[str, str] | None = None,
    client_name: str = "nsmctl",
    lifetime: float = DEFAULT_LIFETIME,
    conn_id: str | None = None,
) -> NetworkServiceRequest:
    """A Request for a KERNEL interface in the namespace at `netns_path`; its labels carry
    the location labels (nodeName, podName, clusterName) the environment gives."""
    cid = conn_id or str(uuid.uuid4())
    params = {"inodeURL": f"file://{netns_path}", "netnsInode": str(os.stat(netns_path).st_ino)}
    if ifname:
        params["name"] = ifname
    segment = PathSegment(name=client_name, id=cid, expires=ts_from(now() + lifetime))
    return NetworkServiceRequest(
        connection=Connection(
            id=cid,
            network_service=service,
            labels=with_location(labels or {}),
            path=Path(index=0, path_segments=[segment]),
        ),
        mechanism_preferences=[Mechanism(cls="LOCAL", type="KERNEL", parameters=params)],
    )


class PodScope:
    """One pod's connections at its agent, for what a new Request of the pod excludes (see
    exclusions.py): the pod is its network namespace's inode, GROUPS its awareness groups."""

    def __init__(self, netns_inode: int, groups: Sequence[Sequence[Requested]] = ()) -> None:
        self.netns_inode = str(netns_inode)
        self.groups = [list(g) for g in groups]
        self.serial = asyncio.Lock()  # the keepers of one pod ask one at a time

    def name_interface(self, request: NetworkServiceRequest, connections: Iterable[Connection]) -> str:
        """Gives REQUEST, when it names no interface, the pod's first free `nsm-N`."""
        params = request.mechanism_preferences[0].parameters
        if not params.get("name"):
            params["name"] = next_ifname(pod_connections(connections, self.netns_inode, request.connection.id))
        return params["name"]

    def prepare(self, request: NetworkServiceRequest, connections: Iterable[Connection]) -> list[str]:
        """Sets REQUEST's excluded prefixes to those of the pod's other CONNECTIONS (what an
        earlier reply carried is dropped: the agent adds the node's own again); returns them."""
        mech = request.mechanism_preferences[0] if request.mechanism_preferences else Mechanism()
        conn = request.connection
        asked = Asked(conn.network_service, mech.parameters.get("name", ""), dict(conn.labels))
        others = pod_connections(connections, self.netns_inode, conn.id)
        excluded = excluded_for(asked, others, self.groups)
        ip = conn.context.ip_context
        del ip.excluded_prefixes[:]
        ip.excluded_prefixes.extend(excluded)
        return excluded


class AgentClient:
    """A blocking client of the node agent (for the CLI and tests)."""

    def __init__(
        self,
        agent: Address,
        timeout: float = 15.0,
        transport: Transport = LOCAL_ONLY,
        server_id: SpiffeId | None = None,
    ) -> None:
        self.channel = transport.sync_channel(agent, server_id)
        self.timeout = timeout
        # Over TLS this client signs its segment for the agent and checks the agent's reply.
        tls = agent.scheme == "tcp" and transport.identity is not None and server_id is not None
        self.server_id = str(server_id) if tls else ""
        self.tokens = OutgoingTokens(transport.identity if tls else None, Policies() if tls else None)
        self.ns = networkservice_pb2_grpc.NetworkServiceStub(self.channel)
        self.monitor = connection_pb2_grpc.MonitorConnectionStub(self.channel)

    def close_channel(self) -> None:
        self.channel.close()

    def request(self, request: NetworkServiceRequest, pod: PodScope | None = None) -> Connection:
        """The connection REQUEST asks for. With POD, it first excludes the prefixes of the pod's
        other connections, and a reply inside them is closed again (FAILED_PRECONDITION)."""
        excluded: list[str] = []
        if pod is not None:
            connections = self.connections().values()
            pod.name_interface(request, connections)
            excluded = pod.prepare(request, connections)
        metadata = self.tokens.sign_for(request.connection, self.server_id)
        reply: Connection = self.ns.Request(request, timeout=self.timeout, metadata=metadata)
        try:
            self.tokens.check_reply(reply, self.server_id, request.connection)
            problem = overlap(reply, excluded)
            if problem:
                raise NsmError(grpc.StatusCode.FAILED_PRECONDITION, problem)
        except NsmError:
            self.close(reply)
            raise
        return reply

    def connections(self, selector: MonitorScopeSelector | None = None) -> dict[str, Connection]:
        """The agent's connections now (the Monitor stream's initial state)."""
        stream = self.monitor.MonitorConnections(selector or MonitorScopeSelector(), timeout=self.timeout)
        try:
            for event in stream:
                if event.type == INITIAL_STATE_TRANSFER:
                    return dict(event.connections)
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]
        return {}

    def find(self, conn_id: str) -> Connection | None:
        """A connection by any of its path segment ids, at the client's position."""
        found = self.connections(MonitorScopeSelector(path_segments=[PathSegment(id=conn_id)]))
        for conn in found.values():
            out = Connection()
            out.CopyFrom(conn)
            out.path.index = 0
            out.id = out.path.path_segments[0].id
            return out
        return None

    def close(self, conn: Connection) -> None:
        down = Connection()
        down.CopyFrom(conn)
        metadata = self.tokens.sign_for(down, self.server_id)
        self.ns.Close(down, timeout=self.timeout, metadata=metadata)

    def close_id(self, conn_id: str) -> bool:
        """Close by id; False when the agent knows no such connection."""
        conn = self.find(conn_id)
        if conn is None:
            return False
        self.close(conn)
        return True


__all__ = ["AgentClient", "PodScope", "kernel_request"]
