"""The UpdatePath step: this hop's path segment, connection id and lifetime (rules in path.py)."""

from __future__ import annotations

from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain import path
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.timeutil import now


class UpdatePath(Step):
    """Moves the path to this hop (its segment, id and lifetime) and back on the reply.

    Reads and provides: the Request's path; nothing on the call.
    """

    def __init__(self, name: str, default_lifetime: float, max_lifetime: float) -> None:
        self.name = name
        self.default_lifetime = default_lifetime
        self.max_lifetime = max_lifetime

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        caller = path.enter(request.connection, self.name, now(), self.default_lifetime, self.max_lifetime)
        reply = await nxt.request(request, call)
        path.leave(reply, caller)
        return reply

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        own = path.find_own_id(conn, self.name)
        if own is not None:
            conn.id = own
            if conn.path.path_segments and conn.path.path_segments[conn.path.index].id != own:
                conn.path.index += 1
        await nxt.close(conn, call)
