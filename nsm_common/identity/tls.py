"""gRPC credentials from identities, and the caller's identity from a call.

Servers take a new certificate for new connections (grpcio asks the fetcher at each
handshake); clients make new channels when their identity changes; connections
already made stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from nsm_common.identity.source import IdentitySource
from nsm_common.identity.spiffe_id import SpiffeId, SpiffeIdError
from nsm_common.identity.svid import Svid


def server_credentials(identity: IdentitySource, extra_roots: bytes = b"") -> grpc.ServerCredentials:
    """Mutual TLS: the client must present a certificate of the bundle's CAs (or of
    EXTRA_ROOTS: federated trust domains')."""
    served = identity.current().fingerprint

    def config(svid: Svid) -> Any:
        roots = svid.bundle_pem + extra_roots if extra_roots else svid.bundle_pem
        return grpc.ssl_server_certificate_configuration([(svid.key_pem, svid.cert_pem)], roots)

    def fetch() -> Any:
        nonlocal served
        svid = identity.current()
        if svid.fingerprint == served:
            return None  # grpcio keeps the configuration it has
        served = svid.fingerprint
        return config(svid)

    return grpc.dynamic_ssl_server_credentials(config(identity.current()), fetch,
                                               require_client_authentication=True)  # fmt: skip


def channel_credentials(svid: Svid, extra_roots: bytes = b"") -> grpc.ChannelCredentials:
    roots = svid.bundle_pem + extra_roots if extra_roots else svid.bundle_pem
    return grpc.ssl_channel_credentials(roots, svid.key_pem, svid.cert_pem)


def channel_options(server_id: SpiffeId) -> list[tuple[str, str]]:
    """The server is checked by the DNS name derived from the SPIFFE ID it should have."""
    return [("grpc.ssl_target_name_override", server_id.dns_name())]


def peer_id(auth_context: Mapping[str, Iterable[bytes]]) -> SpiffeId | None:
    """The SPIFFE ID of the TLS peer (its certificate's one spiffe:// URI SAN), or None:
    no TLS, or no single valid SPIFFE ID."""
    found = [s for s in auth_context.get("x509_subject_alternative_name", []) if s.startswith(b"spiffe://")]
    if len(found) != 1:
        return None
    try:
        return SpiffeId.parse(found[0].decode())
    except (SpiffeIdError, UnicodeDecodeError):
        return None
