"""How a component speaks gRPC: mutual TLS over TCP with its identity, plaintext only when
told `--insecure`; unix sockets stay local and plaintext (who may use them is the
socket's business).

Clients name the SPIFFE ID the server must have (grpcio checks the DNS name derived
from it); servers learn the caller's SPIFFE ID from the call and check its role.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from nsm_common.grpcutil import CHANNEL_OPTIONS, Ctx, replace_unix_socket
from nsm_common.identity.bundles import TrustBundles
from nsm_common.identity.folder import IdentityFolder
from nsm_common.identity.source import IdentitySource
from nsm_common.identity.spiffe_id import IdPattern, Roles, SpiffeId, SpiffeIdError
from nsm_common.identity.svid import IdentityError
from nsm_common.identity.tls import channel_credentials, channel_options, peer_id, server_credentials
from nsm_common.identity.workload_api import ENV as WORKLOAD_API
from nsm_common.identity.workload_api import WorkloadApiIdentity
from nsm_common.urls import Address

log = structlog.get_logger("nsm")


PLURAL = {"agent": "agents", "registry": "registries", "workload": "workloads"}


def _needs_identity(what: str) -> str:
    return f"{what} needs an identity: --identity DIR (env NSM_IDENTITY_DIR), or --insecure for plaintext"


class TransportError(ValueError):
    """A TCP address with neither an identity nor `--insecure`, or a server ID that cannot be known."""


@dataclass(eq=False)  # one per component, compared by identity (a default in other dataclasses)
class Transport:
    """This component's identity (None: none given) and what it makes of others'."""

    identity: IdentitySource | None = None
    insecure: bool = False
    agent: IdPattern = Roles.agent
    registry: IdPattern = Roles.registry
    workload: IdPattern = Roles.workload
    bundles: TrustBundles = field(default_factory=TrustBundles)  # federated trust domains' CAs
    _roles: Roles | None = field(default=None, repr=False)
    _merged: tuple[tuple[tuple[str, bytes], ...], TrustBundles] | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        identity_dir: Path | None,
        *,
        insecure: bool,
        server: bool,
        agent: str = Roles.agent.text,
        registry: str = Roles.registry.text,
        workload: str = Roles.workload.text,
        trust_bundles: Sequence[str] = (),
    ) -> Transport:
        """From a component's settings: the SPIFFE Workload API where SPIFFE_ENDPOINT_SOCKET is
        set, else the folder; raises IdentityError (a bad identity) or SpiffeIdError (a bad
        pattern), each naming what to fix."""
        source: IdentitySource | None = None
        socket = os.environ.get(WORKLOAD_API)
        if socket:
            if identity_dir is not None:
                log.warning(f"{WORKLOAD_API} is set: identities come from the Workload API, not --identity",
                            ignored=str(identity_dir))  # fmt: skip
            source = WorkloadApiIdentity(socket, server=server)  # its errors name the variable
        elif identity_dir is not None:
            try:
                source = IdentityFolder(identity_dir, server=server)
            except IdentityError as exc:
                raise IdentityError(f"--identity {identity_dir} (env NSM_IDENTITY_DIR): {exc}") from None
        own = source.current().spiffe_id.trust_domain if source is not None else None
        if trust_bundles and source is None:
            raise IdentityError("--trust-bundle needs an identity of this component's own (--identity DIR)")
        bundles = TrustBundles.load(trust_bundles, own)
        return cls(source, insecure, IdPattern.parse(agent), IdPattern.parse(registry), IdPattern.parse(workload),
                   bundles)  # fmt: skip

    @property
    def roles(self) -> Roles | None:
        """The roles in this component's own trust domain; None without an identity."""
        if self.identity is None:
            return None
        federated = self.trust().domains
        if self._roles is None or self._roles.federated != federated:
            own = self.identity.current().spiffe_id.trust_domain
            self._roles = Roles(own, self.agent, self.registry, self.workload, federated)
        return self._roles

    def trust(self) -> TrustBundles:
        """The federated trust domains' CAs: `--trust-bundle`'s, and the Workload API's federated
        bundles (as it sends them, rotations too)."""
        given = self.identity.current().federated_pems if self.identity is not None else ()
        if not given:
            return self.bundles
        if self._merged is None or self._merged[0] != given:  # made again only when they change
            self._merged = (given, TrustBundles({**dict(given), **self.bundles.pems}))
        return self._merged[1]

    def warn_if_insecure(self, program: str, addresses: list[Address]) -> None:
        """The one warning an operator gets for plaintext TCP (`--insecure`)."""
        tcp = [str(a) for a in addresses if a.scheme == "tcp"]
        if self.insecure and self.identity is None:
            log.warning(f"{program} speaks plaintext gRPC over TCP (--insecure): anyone on the network "
                        "can call it and read its traffic", tcp=tcp)  # fmt: skip

    def check_listen(self, addresses: list[Address]) -> None:
        """Raises TransportError for a TCP address this component may not listen on: no identity,
        and no `--insecure` (before anything starts)."""
        for addr in addresses:
            if addr.scheme == "tcp" and self.identity is None and not self.insecure:
                raise TransportError(_needs_identity(f"listening on {addr}"))

    # ------------------------------------------------------------------ servers
    def bind_tls_socket(self, server: grpc.aio.Server, path: str) -> None:
        """A unix socket with mutual TLS, for local clients that present an SVID (upstream's);
        a stale socket file from a dead process is replaced."""
        if self.identity is None:
            raise TransportError(f"a TLS socket ({path}) needs an identity: --identity DIR (env NSM_IDENTITY_DIR)")
        replace_unix_socket(path)
        if server.add_secure_port(f"unix://{path}", server_credentials(self.identity, self.bundles.roots)) == 0:
            raise OSError(f"cannot listen on unix://{path}")

    def bind(self, server: grpc.aio.Server, addr: Address) -> int:
        """Listen on ADDR: a unix socket as it is, TCP with mutual TLS, or plaintext when insecure."""
        if addr.scheme != "tcp":
            return server.add_insecure_port(addr.grpc_target)
        if self.identity is not None:
            return server.add_secure_port(addr.grpc_target, server_credentials(self.identity, self.bundles.roots))
        self.check_listen([addr])
        return server.add_insecure_port(addr.grpc_target)

    async def authorize(
        self, context: Ctx, allowed: tuple[str, ...], what: str, on_unix: tuple[str, ...] | None = None
    ) -> SpiffeId | None:
        """Aborts with PERMISSION_DENIED unless a TLS caller has one of the ALLOWED roles (ON_UNIX
        instead, where given, for a caller on a TLS unix socket: on this node); a plaintext call
        (a unix socket, or `--insecure`) is let through. Returns the caller's ID."""
        auth = context.auth_context()
        if auth.get("transport_security_type") != [b"ssl"]:
            return None
        caller = peer_id(auth)
        roles = self.roles
        assert roles is not None  # TLS is served only with an identity
        local = on_unix is not None and context.peer().startswith("unix:")
        why = refusal(caller, roles, on_unix if local and on_unix is not None else allowed, what)
        trust = self.trust()
        if why is None and caller is not None and trust.pems:
            # Several trust domains' CAs are trusted at once: which one vouched is checked here.
            cert = next(iter(auth.get("x509_pem_cert") or ()), b"")
            assert self.identity is not None
            problem = trust.problem(caller, cert, self.identity.current().own_bundle)
            why = f"{what}: {problem}" if problem else None
        if why is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        return caller

    # ------------------------------------------------------------------ clients
    def registry_id(self) -> SpiffeId | None:
        """The registry's SPIFFE ID (its pattern has no placeholders); None without an identity."""
        roles = self.roles
        if roles is None:
            return None
        text = roles.registry.text.replace("{trust_domain}", roles.trust_domain)
        try:
            return SpiffeId.parse(text)
        except SpiffeIdError as exc:
            raise TransportError(f"the registry's ID pattern {roles.registry.text!r} must be one ID to dial "
                                 f"the registry: {exc}") from exc  # fmt: skip

    def registry_ids(self) -> list[SpiffeId]:
        """The registry's ID in this trust domain, then in each federated one (another domain's
        registry proves one of them); empty without an identity."""
        own = self.registry_id()
        if own is None:
            return []
        text = self.registry.text
        return [own, *(SpiffeId.parse(text.replace("{trust_domain}", td)) for td in sorted(self.trust().domains))]

    def fingerprint(self) -> str:
        """Changes when this component's identity does: channels are made again for it."""
        return self.identity.current().fingerprint if self.identity is not None else ""

    def credentials(
        self, addr: Address, server_id: SpiffeId | None
    ) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
        """What a channel to ADDR is made with (None: plaintext); raises TransportError."""
        if addr.scheme != "tcp":
            return None, list(CHANNEL_OPTIONS)
        if self.identity is None:
            if self.insecure:
                return None, list(CHANNEL_OPTIONS)
            raise TransportError(_needs_identity(f"calling {addr}"))
        if server_id is None:
            raise TransportError(f"calling {addr} over mutual TLS needs the SPIFFE ID the server must have")
        svid = self.identity.current()
        return channel_credentials(svid, self.bundles.roots), [*CHANNEL_OPTIONS, *channel_options(server_id)]

    def aio_channel(self, addr: Address, server_id: SpiffeId | None = None) -> grpc.aio.Channel:
        """A channel to ADDR; over TCP the server must prove SERVER_ID (raises TransportError)."""
        creds, options = self.credentials(addr, server_id)
        if creds is None:
            return grpc.aio.insecure_channel(addr.grpc_target, options=options)
        return grpc.aio.secure_channel(addr.grpc_target, creds, options=options)

    def sync_channel(self, addr: Address, server_id: SpiffeId | None = None) -> grpc.Channel:
        """As `aio_channel`, for blocking callers (nsmctl, the tests)."""
        creds, options = self.credentials(addr, server_id)
        if creds is None:
            return grpc.insecure_channel(addr.grpc_target, options=options)
        return grpc.secure_channel(addr.grpc_target, creds, options=options)


def refusal(caller: SpiffeId | None, roles: Roles, allowed: tuple[str, ...], what: str) -> str | None:
    """Why CALLER may not do WHAT (a message naming the ID and the rule), or None when one of
    the ALLOWED roles is its own."""
    if caller is None:
        return f"{what}: the caller's certificate has no single SPIFFE ID"
    role = roles.role_of(caller)
    if role in allowed:
        return None
    if caller.trust_domain != roles.trust_domain:
        why = f"is of trust domain {caller.trust_domain}, not {roles.trust_domain}"
    else:
        why = f"is a {role}" if role else "is of no role"
    names = [PLURAL.get(r, r) for r in allowed]
    may = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    return f"{what}: {caller} {why}; only {may} may"


# Unix sockets only: a TCP address raises TransportError, never plaintext by accident.
LOCAL_ONLY = Transport()


@dataclass(frozen=True)
class Access:
    """Who may call a service: over TLS, callers of the ALLOWED roles (of ON_UNIX instead, where
    given, on a TLS unix socket); plaintext callers came through a local socket or `--insecure`."""

    transport: Transport = LOCAL_ONLY
    allowed: tuple[str, ...] = ("agent",)
    on_unix: tuple[str, ...] | None = None

    async def check(self, context: Ctx, what: str) -> SpiffeId | None:
        """Aborts with PERMISSION_DENIED for a caller who may not; the TLS caller's ID."""
        return await self.transport.authorize(context, self.allowed, what, self.on_unix)


# Agents only over TLS, anyone on a plaintext (local) socket: a hop's default.
AGENTS = Access()
