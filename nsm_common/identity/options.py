"""The identity settings every component shares: where its SVID is, whether plaintext TCP
is allowed, and which SPIFFE IDs count as agents, registries and workloads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from nsm_common.identity.bundles import BundleError
from nsm_common.identity.spiffe_id import IdPattern, Roles, SpiffeIdError
from nsm_common.identity.svid import IdentityError
from nsm_common.identity.transport import Transport
from nsm_common.settings import Option


class IdentitySettings(BaseModel):
    """Mixed into each program's settings model."""

    identity: Annotated[
        Path | None, Option("NSM_IDENTITY_DIR", "folder holding tls.crt, tls.key and ca.crt", metavar="DIR")
    ] = None
    insecure: Annotated[bool, Option("NSM_INSECURE", "plaintext gRPC over TCP, no identities: for trying out only")] = (
        False
    )
    agent_ids: Annotated[str, Option("NSM_AGENT_IDS", "SPIFFE IDs that are agents", metavar="PATTERN")] = (
        Roles.agent.text
    )
    registry_id: Annotated[str, Option("NSM_REGISTRY_ID", "SPIFFE ID of the registry", metavar="PATTERN")] = (
        Roles.registry.text
    )
    workload_ids: Annotated[str, Option("NSM_WORKLOAD_IDS", "SPIFFE IDs that are workloads", metavar="PATTERN")] = (
        Roles.workload.text
    )
    trust_bundle: Annotated[
        list[str],
        Option(
            "NSM_TRUST_BUNDLES",
            "another trust domain's CAs, `TRUST_DOMAIN=FILE`: its agents and registries are let in",
            metavar="TD=FILE",
            repeat=True,
        ),
    ] = Field(default_factory=list)

    @field_validator("identity", mode="before")
    @classmethod
    def _identity(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("agent_ids", "registry_id", "workload_ids")
    @classmethod
    def _pattern(cls, value: str) -> str:
        IdPattern.parse(value)
        return value

    def transport(self, program: str, *, server: bool) -> Transport:
        """The component's transport; a bad identity exits naming the flag and what to fix."""
        try:
            return Transport.load(self.identity, insecure=self.insecure, server=server, agent=self.agent_ids,
                                  registry=self.registry_id, workload=self.workload_ids,
                                  trust_bundles=self.trust_bundle)  # fmt: skip
        except (IdentityError, SpiffeIdError, BundleError) as exc:  # each names its flag or variable
            raise SystemExit(f"{program}: {exc}") from exc
