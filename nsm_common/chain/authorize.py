"""The Authorize step: the server policies (path tokens, who owns a connection, the site's)
for every Request and Close; a denial is PERMISSION_DENIED naming the policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.caller import Caller
from nsm_common.chain.chain import Call, Next, Step
from nsm_common.chain.path_tokens import as_at_hop
from nsm_common.errors import NsmError
from nsm_common.identity.source import IdentitySource
from nsm_common.identity.spiffe_id import Roles, SpiffeId, SpiffeIdError
from nsm_common.policy.documents import caller_facts, network_service_document
from nsm_common.policy.policies import Policies
from nsm_common.tokens import subject

LOCAL_OWNER = "local"  # a connection a local client made here: no TLS caller's identity is it


def owner_of(held: Connection) -> str:
    """Who made a connection: the signer of the caller's token in the reply this hop holds
    (which is at this hop's index); LOCAL_OWNER when this hop was the first (a local client,
    on its own socket); "" when the caller's token names nobody."""
    segments = held.path.path_segments
    index = held.path.index
    if index == 0:
        return LOCAL_OWNER
    return subject(segments[index - 1].token) if index <= len(segments) else ""


def first_certificate(pem: bytes) -> str:
    """The leaf of a PEM chain: the certificate a token is checked against."""
    text = pem.decode()
    end = "-----END CERTIFICATE-----"
    return text[: text.index(end) + len(end)] + "\n" if end in text else text


def _facts(text: str, roles: Roles | None) -> dict[str, object]:
    try:
        return caller_facts(SpiffeId.parse(text), roles) if text else {}
    except SpiffeIdError:
        return {}


class Authorize(Step):
    """Checks the `server` policies and the site's on the path so far (its left side), and,
    for Begin, who may refresh or close a connection (`may_touch`).

    Reads: `Caller`, `call.replay` (a restart carrying its own connection on is not checked).
    After SignSegment, before Begin. Provides: nothing; a denial stops the call with
    PERMISSION_DENIED."""

    def __init__(
        self,
        policies: Policies,
        identity: IdentitySource | None,
        roles: Callable[[], Roles | None],
        name: str,
    ) -> None:
        self.policies = policies
        self.identity = identity
        self.roles = roles
        self.name = name

    def _check(
        self,
        conn: Connection,
        caller: Caller | None,
        operation: str,
        service: str,
        mechanisms: Sequence[Mechanism] = (),
    ) -> None:
        local = caller is None or caller.local
        point = "local" if local else "server"
        if not self.policies.asks(point):
            return
        roles = self.roles()
        if caller is None or caller.local:
            # A local caller's segment is signed by this hop (SignSegment): checked with our own.
            svid = self.identity.current() if self.identity is not None else None
            facts: dict[str, object] = {"local": True}
            if svid is not None:
                facts["spiffe_id"] = str(svid.spiffe_id)
            certificate = first_certificate(svid.cert_pem) if svid is not None else ""
        else:
            facts = caller_facts(caller.spiffe_id, roles)
            certificate = caller.certificate
        audience = str(caller.spiffe_id) if caller is not None and caller.spiffe_id is not None else ""
        path = as_at_hop(conn, self.name, self.identity, audience)
        doc = network_service_document(
            path, operation=operation, certificate=certificate,
            caller=facts, network_service=service, labels=conn.labels, mechanisms=mechanisms,
        )  # fmt: skip
        # Who asked first: the path's first signer, as relayed by an agent (agents check the
        # hop before them); any other caller is itself the client.
        segments = path.path_segments
        relayed = not local and facts.get("role") == "agent" and segments
        doc["client"] = _facts(subject(segments[0].token), roles) if relayed else dict(facts)
        denial = self.policies.check(point, doc)
        if denial is None:
            return
        who = "a local caller" if local else facts.get("spiffe_id") or "a caller of no SPIFFE ID"
        hint = ""
        if caller is not None and not caller.local and caller.presented is None:
            hint = " (the caller sent no nsm-client-token)"
        raise NsmError(grpc.StatusCode.PERMISSION_DENIED,
                       f"{operation} of service {service!r} by {who}: {denial.message}{hint}")  # fmt: skip

    def may_touch(self, held: Connection, call: Call, operation: str) -> None:
        """Begin asks this before a refresh or Close of a connection it holds (under the id's
        lock): over TLS only the identity that made it may (policy `owner`); on a local socket
        the socket confines its caller already (a pod's serves only that pod's connections)."""
        caller = call.get(Caller)
        if caller is None or caller.local or not self.policies.asks("owner"):
            return
        doc = {"connection_owner": owner_of(held) or "unknown", "caller": caller_facts(caller.spiffe_id, self.roles()),
               "operation": operation}  # fmt: skip
        denial = self.policies.check("owner", doc)
        if denial is not None:
            who = f"{operation} of connection {held.id!r} by {caller.spiffe_id}"
            raise NsmError(grpc.StatusCode.PERMISSION_DENIED, f"{who}: {denial.message}")

    async def request(self, request: NetworkServiceRequest, call: Call, nxt: Next) -> Connection:
        if call.replay is None:
            conn = request.connection
            self._check(conn, call.get(Caller), "networkservice.request", conn.network_service,
                        request.mechanism_preferences)  # fmt: skip
        return await nxt.request(request, call)

    async def close(self, conn: Connection, call: Call, nxt: Next) -> None:
        self._check(conn, call.get(Caller), "networkservice.close", conn.network_service)
        await nxt.close(conn, call)
