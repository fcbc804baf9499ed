"""`nsm-registry`'s settings from flags and the environment, each stated once in its model."""

from __future__ import annotations

import argparse
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from nsm_common import settings
from nsm_common.identity.options import IdentitySettings
from nsm_common.interdomain import validate_domain
from nsm_common.policy.options import PolicySettings
from nsm_common.settings import Option
from nsm_common.urls import REGISTRY_PORT, Address, parse_address
from nsm_registry.domain_registries import parse_domain_registries


def parse_etcd_url(url: str) -> list[tuple[str, int]]:
    """`etcd://HOST:PORT[,HOST:PORT...]` → [(host, port), ...]."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in url.removeprefix("etcd://").split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{url!r}: {part!r} is not HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return out


class RegistrySettings(PolicySettings, IdentitySettings):
    """Every setting of `nsm-registry`, with its flag, environment name and default (stated only here)."""

    listen: Annotated[
        list[Address], Option("NSM_LISTEN_ON", "`tcp://HOST:PORT` or `unix:///PATH`", metavar="URL", repeat=True)
    ] = Field(default_factory=lambda: [parse_address(f"tcp://0.0.0.0:{REGISTRY_PORT}")], min_length=1)
    store: Annotated[str, Option("NSM_STORE", "`memory`, or `etcd://HOST:PORT[,HOST:PORT...]`")] = "memory"
    max_expiration: Annotated[
        float,
        Option("NSM_MAX_EXPIRATION", "longest an endpoint registration lives unrenewed, seconds", metavar="SECONDS"),
    ] = Field(default=60.0, gt=0)
    domain: Annotated[
        str,
        Option(
            "NSM_DOMAIN",
            "this registry's domain, unique in the federation: `SERVICE@DOMAIN` is served here",
            metavar="NAME",
            default_text="none: no interdomain work",
        ),
    ] = ""
    domain_registry: Annotated[
        list[str],
        Option(
            "NSM_DOMAIN_REGISTRIES",
            "another domain's registry, `DOMAIN=URL` (else DNS: `registry.nsm-system.DOMAIN`)",
            metavar="DOMAIN=URL",
            repeat=True,
        ),
    ] = Field(default_factory=list)
    floating: Annotated[
        bool, Option("NSM_FLOATING", "hold only records other domains register into (`name@THIS`), with public URLs")
    ] = False
    log_level: Annotated[str, Option("NSM_LOG_LEVEL", "debug, info, warning or error")] = "info"

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> object:
        if isinstance(value, list):
            return [parse_address(v, default_port=REGISTRY_PORT) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return validate_domain(value) if value else value

    @model_validator(mode="after")
    def _domains(self) -> RegistrySettings:
        parse_domain_registries(self.domain_registry, self.domain)  # raises naming the bad entry
        if self.floating and not self.domain:
            raise ValueError("--floating needs --domain: the domain clients name the floating registry's records by")
        if self.floating and self.domain_registry:
            raise ValueError("--floating passes nothing on: it takes no --domain-registry")
        return self

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value != "memory":
            parse_etcd_url(value)  # raises with a message naming the problem
        return value


def build_parser() -> argparse.ArgumentParser:
    """`nsm-registry`'s flags, their defaults taken from the environment as it is now."""
    return settings.build_parser(RegistrySettings, "nsm-registry", "Network Service Mesh registry")


def parse_settings(argv: list[str] | None = None) -> RegistrySettings:
    """The registry's settings from `argv` and the environment; a bad value exits naming its flag."""
    return settings.parse(RegistrySettings, build_parser(), argv)
