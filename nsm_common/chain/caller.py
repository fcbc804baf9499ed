"""Who made a call: what the gRPC glue learns from the connection and the metadata, for the
steps that sign and check path tokens."""

from __future__ import annotations

from dataclasses import dataclass

from nsm_common.grpcutil import Ctx
from nsm_common.identity.spiffe_id import SpiffeId
from nsm_common.identity.tls import peer_id
from nsm_common.tokens import Presented, TokenError, from_metadata


@dataclass(frozen=True)
class Caller:
    """The caller of one Request or Close.

    `spiffe_id` and `certificate` (PEM) are the TLS peer's, None and "" on a plaintext socket;
    `presented` is the token it sent for its segment; `token_error` says why metadata that
    was sent could not be read. `local`: a plaintext unix socket, where the socket itself is
    the caller's credential (the node's, or a pod's own)."""

    spiffe_id: SpiffeId | None = None
    certificate: str = ""
    presented: Presented | None = None
    token_error: str = ""
    local: bool = True

    @classmethod
    def of(cls, context: Ctx) -> Caller:
        """From a server call's context."""
        auth = context.auth_context()
        tls = auth.get("transport_security_type") == [b"ssl"]
        pem = b"".join(auth.get("x509_pem_cert", [])).decode(errors="replace") if tls else ""
        try:
            presented, error = from_metadata(context.invocation_metadata()), ""
        except TokenError as exc:
            presented, error = None, str(exc)
        return cls(peer_id(auth) if tls else None, pem, presented, error, local=not tls)
