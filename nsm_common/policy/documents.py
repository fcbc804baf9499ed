"""The input documents policies see, in upstream's shape so that a site's policies written
for upstream run unchanged. Pure.

A NetworkService call: the path as Go's encoding/json writes upstream's Path
(`index`, `path_segments` with `name`, `id`, `token`, `expires`, `metrics`; added: each
token's `claims`, decoded but not verified) and
`auth_info.certificate` (the TLS peer's, PEM). A registry call: `resource_id`,
`resource_name`, `resource_path_ids_map`, `path_segments`, `index`. Added here, beside
upstream's fields: `operation`, `caller` and what the call is about (`network_service`,
`labels`, ...), for site policies that say who may use what.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nsm_api.connection_pb2 import Mechanism, Path
from nsm_common.identity.spiffe_id import Roles, SpiffeId
from nsm_common.tokens import claims


def segments(path: Path, upto: int | None = None) -> list[dict[str, Any]]:
    """The path's segments (up to and including index UPTO) as upstream's JSON has them:
    empty fields left out."""
    out: list[dict[str, Any]] = []
    chosen = path.path_segments if upto is None else path.path_segments[: upto + 1]
    for seg in chosen:
        item: dict[str, Any] = {}
        if seg.name:
            item["name"] = seg.name
        if seg.id:
            item["id"] = seg.id
        if seg.token:
            item["token"] = seg.token
            found = claims(seg.token)
            if found is not None:  # decoded here once (the engine's decoding costs ten times more)
                item["claims"] = found
        if seg.HasField("expires"):
            item["expires"] = {"seconds": seg.expires.seconds, "nanos": seg.expires.nanos}
        if seg.metrics:
            item["metrics"] = dict(seg.metrics)
        out.append(item)
    return out


def caller_facts(spiffe_id: SpiffeId | None, roles: Roles | None) -> dict[str, Any]:
    """What a site policy may ask of a caller: its ID, trust domain, role and, for a workload
    ID, the placeholders of the workload pattern (namespace, service_account by default)."""
    if spiffe_id is None:
        return {}
    facts: dict[str, Any] = {"spiffe_id": str(spiffe_id), "trust_domain": spiffe_id.trust_domain}
    if roles is not None:
        role = roles.role_of(spiffe_id)
        if role:
            facts["role"] = role
        if role == "workload":
            facts.update(roles.workload.matches(spiffe_id, roles.trust_domain) or {})
    return facts


def network_service_document(
    path: Path,
    *,
    operation: str,
    certificate: str,
    caller: Mapping[str, Any],
    network_service: str,
    labels: Mapping[str, str],
    connection_owner: str | None = None,
    server_spiffe_id: str | None = None,
    left_side: bool = True,
    mechanisms: Sequence[Mechanism] = (),
) -> dict[str, Any]:
    """A NetworkService call's input: the left side of the path (up to this hop) on a server,
    the whole path on a client (LEFT_SIDE false)."""
    doc: dict[str, Any] = {
        "index": path.index,
        "path_segments": segments(path, path.index if left_side else None),
        "auth_info": {"certificate": certificate},
        "operation": operation,
        "caller": dict(caller),
        "network_service": network_service,
        "labels": dict(labels),
    }
    if mechanisms:  # what the caller offers, in its order (the first it can have is used)
        doc["mechanism_preferences"] = [{"cls": m.cls, "type": m.type} for m in mechanisms]
    if connection_owner is not None:
        doc["connection_owner"] = connection_owner
    if server_spiffe_id is not None:
        doc["server_spiffe_id"] = server_spiffe_id
    return doc


def registry_document(
    *,
    operation: str,
    resource_name: str,
    resource_id: str,
    owners: Sequence[str] | None,
    path_segments: list[dict[str, Any]],
    index: int,
    certificate: str,
    caller: Mapping[str, Any],
    network_service_names: Sequence[str] = (),
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """A registry call's input. OWNERS: the stored record's path_ids (None: no record)."""
    return {
        "resource_id": resource_id,
        "resource_name": resource_name,
        "resource_path_ids_map": {resource_name: list(owners)} if owners else {},
        "path_segments": path_segments,
        "index": index,
        "auth_info": {"certificate": certificate},
        "operation": operation,
        "caller": dict(caller),
        "network_service_names": list(network_service_names),
        "labels": {k: dict(v) for k, v in (labels or {}).items()},
    }
