"""`nsm-agent`'s settings from flags and the environment, validated by pydantic.

Each setting is stated once, in `AgentSettings`: its flag, environment name,
meaning and default (nsm_common/settings.py makes the parser and the README's
table from it). tests/golden/cli.json holds every flag, environment name and
default, so that none changes by accident.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from nsm_agent.decisions.tunnel import MAX_PORT, VXLAN, VXLAN_PORT, WIREGUARD, WIREGUARD_PORT
from nsm_common import settings
from nsm_common.chain.path import DEFAULT_LIFETIME
from nsm_common.identity.options import IdentitySettings
from nsm_common.names import MAX_NAME
from nsm_common.policy.options import PolicySettings
from nsm_common.settings import Option
from nsm_common.urls import DEFAULT_SOCKET, REGISTRY_PORT, Address, parse_address

REMOTE_MECHANISMS = (WIREGUARD, VXLAN)
RELAY_PORT = 51800  # offered in this order unless told otherwise
STATE_DIR = "/var/lib/nsm"
POD_SOCKETS = "/var/lib/networkservicemesh/pods"


class AgentSettings(PolicySettings, IdentitySettings):
    """Every setting of `nsm-agent`, with its flag, environment name and default (stated only here)."""

    name: Annotated[str, Option("NSM_NAME", "node name", default_text="the host name")] = Field(
        default_factory=socket.gethostname, min_length=1, max_length=MAX_NAME
    )
    registry: Annotated[Address, Option("NSM_REGISTRY_URL", "registry address", metavar="URL")] = parse_address(
        f"tcp://127.0.0.1:{REGISTRY_PORT}"
    )
    listen: Annotated[
        list[Address], Option("NSM_LISTEN_ON", "`unix:///PATH` or `tcp://HOST:PORT`", metavar="URL", repeat=True)
    ] = Field(default_factory=lambda: [parse_address(DEFAULT_SOCKET)], min_length=1)
    tls_socket: Annotated[
        str, Option("NSM_TLS_SOCKET", "a unix socket with mutual TLS, for clients with an SVID", metavar="PATH")
    ] = ""
    claim_socket: Annotated[
        str, Option("NSM_CLAIM_SOCKET", "a unix socket where pods claim sockets of their own", metavar="PATH")
    ] = ""
    state_dir: Annotated[Path, Option("NSM_STATE_DIR", "state folder", metavar="DIR")] = Path(STATE_DIR)
    pod_sockets: Annotated[Path, Option("NSM_POD_SOCKETS", "folder of the sockets per pod", metavar="DIR")] = Path(
        POD_SOCKETS
    )
    tunnel_ip: Annotated[
        str,
        Option(
            "NSM_TUNNEL_IP",
            "this node's underlay address",
            metavar="ADDR",
            default_text="that of the default-route interface",
        ),
    ] = ""
    public_url: Annotated[
        str,
        Option(
            "NSM_PUBLIC_URL",
            "where other domains reach this agent, `tcp://HOST:PORT` (a NAT's): its endpoints' URL",
            metavar="URL",
            default_text="the node URL: other domains reach the node",
        ),
    ] = ""
    public_ip: Annotated[
        str,
        Option(
            "NSM_PUBLIC_IP",
            "where other domains reach this node's tunnels (a NAT's address)",
            metavar="ADDR",
            default_text="the tunnel address",
        ),
    ] = ""
    remote_mechanisms: Annotated[
        list[str], Option("NSM_REMOTE_MECHANISMS", "offered and accepted, in order", metavar="LIST", comma=True)
    ] = Field(default_factory=lambda: list(REMOTE_MECHANISMS))
    wireguard_port: Annotated[
        int, Option("NSM_WIREGUARD_PORT", "UDP port of the node's WireGuard device", metavar="N")
    ] = Field(default=WIREGUARD_PORT, ge=1, le=MAX_PORT)
    wireguard_go: Annotated[
        str, Option("NSM_WIREGUARD_GO", "userspace WireGuard where the kernel has no module", metavar="PATH")
    ] = "wireguard-go"
    relay: Annotated[
        bool,
        Option(
            "NSM_RELAY",
            "serve a reflector and relay for nodes behind NAT, at the public (else tunnel) address; "
            "registered for the domain's agents to find",
        ),
    ] = False
    relay_port: Annotated[int, Option("NSM_RELAY_PORT", "UDP port of the reflector and relay", metavar="N")] = Field(
        default=RELAY_PORT, ge=1, le=MAX_PORT
    )
    vxlan_port: Annotated[int, Option("NSM_VXLAN_PORT", "UDP port of VXLAN tunnels", metavar="N")] = Field(
        default=VXLAN_PORT, ge=1, le=MAX_PORT
    )
    request_timeout: Annotated[
        float, Option("NSM_REQUEST_TIMEOUT", "seconds an endpoint has to answer", metavar="S")
    ] = Field(default=5.0, gt=0)
    max_lifetime: Annotated[
        float, Option("NSM_MAX_TOKEN_LIFETIME", "longest lifetime accepted from a caller, seconds", metavar="S")
    ] = Field(default=DEFAULT_LIFETIME, gt=0)
    default_lifetime: Annotated[
        float, Option("NSM_TOKEN_LIFETIME", "lifetime this hop stamps on its own segment, seconds", metavar="S")
    ] = Field(default=DEFAULT_LIFETIME, gt=0)
    excluded_prefixes: Annotated[
        str,
        Option(
            "NSM_EXCLUDED_PREFIXES_FILE",
            "upstream's excluded-prefixes YAML (`prefixes:`), followed; no endpoint hands out an address in them",
            metavar="FILE",
        ),
    ] = ""
    log_level: Annotated[str, Option("NSM_LOG_LEVEL", "debug, info, warning or error")] = "info"

    @field_validator("registry", mode="before")
    @classmethod
    def _registry(cls, value: object) -> object:
        return parse_address(value, default_port=REGISTRY_PORT) if isinstance(value, str) else value

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> object:
        if isinstance(value, list):
            return [parse_address(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value and parse_address(value).scheme != "tcp":
            raise ValueError(f"{value!r}: other domains reach an agent over tcp://HOST:PORT")
        return value

    @field_validator("public_ip")
    @classmethod
    def _public_ip(cls, value: str) -> str:
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @property
    def registered_url(self) -> str:
        """The URL this agent registers its endpoints at: where other domains reach it, when it
        is told (its own domain's agents dial it there too: a cloud's 1:1 NAT answers from
        inside as well), else its node URL."""
        return self.public_url or self.node_url

    @property
    def node_url(self) -> str:
        """The URL other agents of this domain reach this one at: its first TCP listen address."""
        for addr in self.listen:
            if addr.scheme == "tcp":
                host = self.tunnel_ip if addr.host in ("0.0.0.0", "::") and self.tunnel_ip else addr.host
                return str(Address("tcp", host=host, port=addr.port))
        return ""

    @field_validator("remote_mechanisms")
    @classmethod
    def _mechanisms(cls, value: list[str]) -> list[str]:
        for mech in value:
            if mech not in REMOTE_MECHANISMS:
                raise ValueError(f"unknown remote mechanism {mech!r}; expected some of {', '.join(REMOTE_MECHANISMS)}")
        return value


def build_parser() -> argparse.ArgumentParser:
    """`nsm-agent`'s flags, their defaults taken from the environment as it is now."""
    return settings.build_parser(AgentSettings, "nsm-agent", "Network Service Mesh node agent")


def parse_settings(argv: list[str] | None = None) -> AgentSettings:
    """The agent's settings from `argv` and the environment; a bad value exits naming its flag."""
    return settings.parse(AgentSettings, build_parser(), argv)
