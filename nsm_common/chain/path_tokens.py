"""Path tokens on a NetworkService hop: the caller's token into its segment, this hop's own
signed, the tokens of the hop we call sent and checked (rules in nsm_common/tokens.py).

A caller on a plaintext unix socket (a pod's own, or the node's) has no certificate to sign
with; the socket is its credential, so this hop vouches for it: it signs the caller's
segment itself. In the same way a hop that calls a next hop over a plaintext unix socket
(a local endpoint) signs what comes back from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from nsm_api.connection_pb2 import Connection, Path
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.caller import Caller
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.errors import NsmError
from nsm_common.identity.source import IdentitySource
from nsm_common.policy.documents import network_service_document
from nsm_common.policy.policies import Policies
from nsm_common.timeutil import ts_from, ts_seconds
from nsm_common.tokens import sign, to_metadata


def _take_presented(conn: Connection, caller: Caller | None) -> None:
    if caller is None or caller.local:
        return
    if caller.token_error:
        raise NsmError(grpc.StatusCode.INVALID_ARGUMENT, f"path token: {caller.token_error}")
    segments = conn.path.path_segments
    if caller.presented is not None and conn.path.index < len(segments):
        seg = segments[conn.path.index]
        seg.token = caller.presented.token
        seg.expires.CopyFrom(ts_from(caller.presented.expires))


class PresentedToken(Step):
    """Puts the token the caller sent in metadata, and its expiry, into the caller's segment
    (upstream's updatetoken). Before UpdatePath, which caps that expiry.

    Reads: `Caller`. Provides: the caller segment's `token` and `expires`."""

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        _take_presented(request.connection, call.get(Caller))
        return await nxt.request(request, call)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        _take_presented(conn, call.get(Caller))
        await nxt.close(conn, call)


def _same_prefix(sent: Connection, reply: Connection) -> bool:
    """The reply names this hop's index, and the segments up to it are the ones sent (name,
    id, token; the next hop may cap the expiry of ours)."""
    index = sent.path.index
    if reply.path.index != index or len(reply.path.path_segments) <= index:
        return False
    pairs = zip(sent.path.path_segments[: index + 1], reply.path.path_segments[: index + 1], strict=False)
    return all((a.name, a.id, a.token) == (b.name, b.id, b.token) for a, b in pairs)


def at_hop(conn: Connection, name: str) -> bool:
    """Whether the path has been moved to this hop (its segment at the index). A Close may
    name only the caller's part of the path: of a Request that never got its answer."""
    segments = conn.path.path_segments
    index = conn.path.index
    return index < len(segments) and segments[index].name == name


def _sign_segments(conn: Connection, identity: IdentitySource | None, caller: Caller | None, name: str) -> None:
    if identity is None or conn.path.index >= len(conn.path.path_segments):
        return
    svid = identity.current()
    me = str(svid.spiffe_id)
    segments = conn.path.path_segments
    index = conn.path.index
    local = caller is not None and caller.local
    # A local caller's segments (its own and any it put before it) are signed by this hop:
    # what a local caller sends is not to be taken for anybody else's signature downstream.
    callers = segments[: index + 1] if not at_hop(conn, name) else segments[:index]
    if local:
        for seg in callers:
            seg.token = sign(svid, me, ts_seconds(seg.expires)).token
    if not at_hop(conn, name):  # the caller's segment is at the index; this hop has none
        return
    own = segments[index]
    audience = str(caller.spiffe_id) if caller is not None and caller.spiffe_id is not None else me
    own.token = sign(svid, audience, ts_seconds(own.expires)).token


def as_at_hop(conn: Connection, name: str, identity: IdentitySource | None, audience: str) -> Path:
    """The path as the policies see it at this hop: as it is, or, for a Close that names only
    the caller's part, with this hop's segment after the caller's (signed for AUDIENCE).
    Only that case is a copy: the policies only read the path."""
    if at_hop(conn, name) or conn.path.index >= len(conn.path.path_segments):
        return conn.path
    path = Path()
    path.CopyFrom(conn.path)
    del path.path_segments[path.index + 1 :]  # what the caller put after its own is not ours
    own = path.path_segments.add(name=name, id=conn.id)
    own.expires.CopyFrom(path.path_segments[path.index].expires)
    if identity is not None:
        svid = identity.current()
        own.token = sign(svid, audience or str(svid.spiffe_id), ts_seconds(own.expires)).token
    path.index += 1
    return path


class SignSegment(Step):
    """Signs this hop's segment (sub = this hop, aud = the caller) and, for a caller on a
    plaintext unix socket, the caller's segment on its behalf. After UpdatePath.

    Reads: `Caller`. Provides: the tokens of this hop's and a local caller's segments."""

    def __init__(self, identity: IdentitySource | None, name: str) -> None:
        self.identity = identity
        self.name = name

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        if call.replay is None:
            _sign_segments(request.connection, self.identity, call.get(Caller), self.name)
        return await nxt.request(request, call)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        _sign_segments(conn, self.identity, call.get(Caller), self.name)
        await nxt.close(conn, call)


@dataclass
class OutgoingTokens:
    """What a hop does with tokens when it calls the next one: signs its own segment for that
    server (sent in metadata too), and checks the server's reply (the `client` policies)."""

    identity: IdentitySource | None
    policies: Policies | None = None

    def sign_for(self, conn: Connection, server_id: str) -> tuple[tuple[str, str | bytes], ...]:
        """Sign CONN's segment at its index for SERVER_ID (this hop itself for a local next
        hop); the metadata to send it in."""
        if self.identity is None or conn.path.index >= len(conn.path.path_segments):
            return ()
        svid = self.identity.current()
        own = conn.path.path_segments[conn.path.index]
        signed = sign(svid, server_id or str(svid.spiffe_id), ts_seconds(own.expires))
        own.token = signed.token
        return to_metadata(signed.token, signed.expires)

    def vouch(self, sent: Connection, reply: Connection) -> None:
        """A reply from a next hop on a plaintext unix socket: the path up to this hop as it
        was sent, the local hop's segment signed by this hop (it speaks for that local hop,
        and for nothing that hop adds after itself). Raises PERMISSION_DENIED for a reply
        whose path is not the one sent and one segment more."""
        if self.identity is None:
            return
        index = sent.path.index
        segments = reply.path.path_segments
        if len(segments) != index + 2 or not _same_prefix(sent, reply):
            raise NsmError(grpc.StatusCode.PERMISSION_DENIED, "the reply of the local endpoint changed the path: "
                           "it may add only its own segment after this hop's")  # fmt: skip
        svid = self.identity.current()
        # Ours as sent (sign_for named this hop the audience: the local hop has no ID of its own).
        for i, seg in enumerate(sent.path.path_segments[: index + 1]):
            segments[i].token = seg.token
        reply.path.index = index
        local = segments[index + 1]
        local.token = sign(svid, str(svid.spiffe_id), ts_seconds(local.expires)).token

    def check_reply(self, reply: Connection, server_id: str, sent: Connection | None = None) -> None:
        """Raises PERMISSION_DENIED when the reply's path fails the `client` policies, or (given
        what was SENT) does not keep the path up to this hop as it was sent."""
        if self.identity is None or self.policies is None:
            return
        if sent is not None and not _same_prefix(sent, reply):
            raise NsmError(grpc.StatusCode.PERMISSION_DENIED,
                           f"the reply of {server_id} changed the path up to this hop")  # fmt: skip
        # From this hop on: what is before it was checked on the way in (Authorize), here or
        # at the hops before; the tokens after it are the server's to answer for.
        right = Path(index=0, path_segments=reply.path.path_segments[reply.path.index :])
        doc = network_service_document(
            right, operation="networkservice.reply", certificate="", caller={},
            network_service=reply.network_service, labels=reply.labels,
            server_spiffe_id=server_id or None, left_side=False,
        )  # fmt: skip
        denial = self.policies.check("client", doc)
        if denial is not None:
            where = server_id or "the local endpoint"
            raise NsmError(grpc.StatusCode.PERMISSION_DENIED, f"the reply of {where}: {denial.message}")
