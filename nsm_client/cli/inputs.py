"""CLI input, validated by pydantic so that errors name the bad flag; namespaces as people name
them on a command line (`ip netns` name, path, or PID)."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field, field_validator

from nsm_common.names import ifname_problem
from nsm_endpoint import IpamPolicy, parse_pools


def netns_path(value: str) -> str:
    """`NAME` → /var/run/netns/NAME, `PID` → /proc/PID/ns/net, a path stays; must exist."""
    if not value:
        raise ValueError("network namespace is empty")
    if value.startswith("/"):
        path = value
    elif value.isdigit():
        path = f"/proc/{value}/ns/net"
    else:
        if "/" in value or value in (".", ".."):
            raise ValueError(f"{value!r} is not a namespace name")
        path = f"/var/run/netns/{value}"
    if not os.path.exists(path):
        raise ValueError(f"network namespace {value!r} does not exist ({path})")
    return path


def parse_labels(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        out[key] = value
    return out


class NetnsInput(BaseModel):
    netns: str

    @field_validator("netns")
    @classmethod
    def _netns(cls, value: str) -> str:
        return netns_path(value)


class ConnectInput(NetnsInput):
    service: str = Field(min_length=1)
    ifname: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("ifname")
    @classmethod
    def _ifname(cls, value: str) -> str:
        if value:
            problem = ifname_problem(value)
            if problem:
                raise ValueError(problem)
        return value


class EndpointInput(NetnsInput):
    name: str = Field(min_length=1)
    service: str = Field(min_length=1)
    cidrs: list[str] = Field(min_length=1)
    payload: str = "IP"
    labels: dict[str, str] = Field(default_factory=dict)
    ipam_policy: IpamPolicy = IpamPolicy.POLITE

    @field_validator("cidrs", mode="before")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return parse_pools(values)

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: str) -> str:
        if value not in ("IP", "ETHERNET"):
            raise ValueError("payload must be IP or ETHERNET")
        return value
