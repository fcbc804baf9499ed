"""Who registers: the path a registration came through (upstream's `path` metadata and
path tokens), the identities it holds (kept in the record's `path_ids`, the first is the
name's owner), and the `registry` policies, checked on the record as stored.

A plaintext caller came through the registry's own unix socket (the operator's) or
`--insecure` (no identities, so no owners): it is not checked, as before identities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from nsm_common.chain.caller import Caller
from nsm_common.grpcutil import Ctx
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.transport import Transport
from nsm_common.policy.documents import caller_facts, registry_document
from nsm_common.policy.policies import Policies
from nsm_common.registry_path import TOKEN_LIFETIME, PathError, RegistryPath, enter, read_path
from nsm_common.timeutil import now
from nsm_common.tokens import TokenError, from_metadata, sign

RELAYS = ("agent", "registry")  # who may pass on a registration made by somebody else


class Refused(Exception):
    """A registration or unregistration the registry will not make; a status and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Admission:
    """A caller let in so far: the identities its call came through (None: a plaintext
    caller; the record keeps what it had) and the check of the stored record."""

    path_ids: list[str] | None
    document: dict[str, Any] | None
    policies: Policies | None
    what: str
    path_json: str = ""

    def check(self, stored: Any) -> None:
        """Raises Refused when the policies say no for the record as stored (None: none)."""
        if self.document is None or self.policies is None:
            return
        owners = list(stored.path_ids) if stored is not None and stored.path_ids else None
        doc = dict(self.document, resource_path_ids_map={self.document["resource_name"]: owners} if owners else {})
        denial = self.policies.check("registry", doc)
        if denial is None:
            return
        hint = f" (the name is {owners[0]}'s)" if owners and denial.policy.startswith("registry/") else ""
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"{self.what}: {denial.message}{hint}")


class Registrants:
    """Admits registry calls: reads their path and token, signs this hop's segment. Without
    policies (a registry served in-process for tests) nothing is checked."""

    def __init__(self, transport: Transport, policies: Policies | None = None) -> None:
        self.transport = transport
        self.policies = policies

    def admit(
        self,
        context: Ctx,
        caller: SpiffeId | None,
        operation: str,
        name: str,
        names: Sequence[str] = (),
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Admission:
        """Raises Refused (INVALID_ARGUMENT) for path metadata that cannot be read."""
        what = f"{operation} of {name!r}"
        if caller is None or self.transport.identity is None or self.policies is None:
            return Admission(None, None, None, what)
        metadata = context.invocation_metadata()
        try:
            presented = from_metadata(metadata)
            path = read_path(metadata) or RegistryPath()
        except (TokenError, PathError) as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {exc}") from None
        relayed = bool(path.tokens) and path.index > 0
        roles = self.transport.roles
        if relayed and (roles is None or roles.role_of(caller) not in RELAYS):
            # Only agents and registries pass others' registrations on (each checks the hop
            # before it); anybody else registers in its own name.
            why = f"{caller} may register only in its own name (its path holds others' segments)"
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"{what}: {why}")
        own = sign(self.transport.identity.current(), str(caller), now() + TOKEN_LIFETIME)
        index = enter(path, presented.token if presented is not None else "", own.token)
        ids = path.ids(index - 1)
        if roles is not None and roles.role_of(caller) == "registry" and len(ids) > 1:
            # Another domain's registry passing a registration on does not serve its URL: the
            # hop before it does (the record's last ID is whom its dialers check).
            ids = ids[:-1]
        registrant = ids[0] if ids and ids[0] else str(caller)
        doc = registry_document(
            operation=operation, resource_name=name, resource_id=registrant, owners=None,
            path_segments=path.segments(index), index=index, certificate=Caller.of(context).certificate,
            caller=caller_facts(caller, self.transport.roles), network_service_names=names, labels=labels,
        )  # fmt: skip
        what = f"{what} by {registrant}"
        if presented is None:
            what += " (the caller sent no nsm-client-token)"
        return Admission([i or str(caller) for i in ids], doc, self.policies, what, path.to_json())
