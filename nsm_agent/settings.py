"""`nsm-agent`'s settings from flags and the environment, validated by pydantic.

The names are the README's agent table; tests/golden/cli.json holds every flag,
environment name and default, so that none changes by accident.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from nsm_agent.decisions.tunnel import MAX_PORT, VXLAN, VXLAN_PORT, WIREGUARD, WIREGUARD_PORT
from nsm_common.chain.path import DEFAULT_LIFETIME
from nsm_common.names import MAX_NAME
from nsm_common.urls import DEFAULT_SOCKET, REGISTRY_PORT, Address, parse_address, split_list

REMOTE_MECHANISMS = (WIREGUARD, VXLAN)  # offered in this order unless told otherwise
STATE_DIR = "/var/lib/nsm"


class AgentSettings(BaseModel):
    name: str = Field(min_length=1, max_length=MAX_NAME)
    registry: Address
    listen: list[Address] = Field(min_length=1)
    state_dir: Path = Path(STATE_DIR)
    tunnel_ip: str = ""
    remote_mechanisms: list[str] = Field(default_factory=lambda: list(REMOTE_MECHANISMS))
    vxlan_port: int = Field(default=VXLAN_PORT, ge=1, le=MAX_PORT)
    wireguard_port: int = Field(default=WIREGUARD_PORT, ge=1, le=MAX_PORT)
    wireguard_go: str = "wireguard-go"
    request_timeout: float = Field(default=5.0, gt=0)
    default_lifetime: float = Field(default=DEFAULT_LIFETIME, gt=0)
    max_lifetime: float = Field(default=DEFAULT_LIFETIME, gt=0)
    log_level: str = "info"

    @property
    def public_url(self) -> str:
        """The URL other agents reach this one at: its first TCP listen address."""
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


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    """`nsm-agent`'s flags, their defaults taken from the environment as it is now."""
    p = argparse.ArgumentParser(prog="nsm-agent", description="Network Service Mesh node agent")
    p.add_argument("--name", default=_env("NSM_NAME", socket.gethostname()), help="node name (env NSM_NAME)")
    p.add_argument(
        "--registry",
        default=_env("NSM_REGISTRY_URL", f"tcp://127.0.0.1:{REGISTRY_PORT}"),
        help="registry address (env NSM_REGISTRY_URL)",
    )
    p.add_argument(
        "--listen",
        action="append",
        help=f"unix:///PATH or tcp://HOST:PORT, repeatable (env NSM_LISTEN_ON; default {DEFAULT_SOCKET})",
    )
    p.add_argument("--state-dir", default=_env("NSM_STATE_DIR", STATE_DIR), help="state folder (env NSM_STATE_DIR)")
    p.add_argument(
        "--tunnel-ip", default=_env("NSM_TUNNEL_IP"), help="this node's underlay address (env NSM_TUNNEL_IP)"
    )
    p.add_argument(
        "--remote-mechanisms",
        default=_env("NSM_REMOTE_MECHANISMS", ",".join(REMOTE_MECHANISMS)),
        help="env NSM_REMOTE_MECHANISMS",
    )
    p.add_argument(
        "--wireguard-port",
        type=int,
        default=int(_env("NSM_WIREGUARD_PORT", str(WIREGUARD_PORT))),
        help="UDP port of this node's WireGuard device (env NSM_WIREGUARD_PORT)",
    )
    p.add_argument(
        "--wireguard-go",
        default=_env("NSM_WIREGUARD_GO", "wireguard-go"),
        help="userspace WireGuard, used where the kernel has no module (env NSM_WIREGUARD_GO)",
    )
    p.add_argument(
        "--vxlan-port",
        type=int,
        default=int(_env("NSM_VXLAN_PORT", str(VXLAN_PORT))),
        help="UDP port of the VXLAN tunnels (env NSM_VXLAN_PORT)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=float(_env("NSM_REQUEST_TIMEOUT", "5")),
        help="seconds an endpoint has to answer (env NSM_REQUEST_TIMEOUT)",
    )
    p.add_argument(
        "--max-lifetime",
        type=float,
        default=float(_env("NSM_MAX_TOKEN_LIFETIME", str(DEFAULT_LIFETIME))),
        help="longest connection lifetime accepted from a caller, seconds (env NSM_MAX_TOKEN_LIFETIME)",
    )
    p.add_argument(
        "--default-lifetime",
        type=float,
        default=float(_env("NSM_TOKEN_LIFETIME", str(DEFAULT_LIFETIME))),
        help="lifetime this hop gives its own segment, seconds (env NSM_TOKEN_LIFETIME)",
    )
    p.add_argument("--log-level", default=_env("NSM_LOG_LEVEL", "info"), help="env NSM_LOG_LEVEL")
    return p


def parse_settings(argv: list[str] | None = None) -> AgentSettings:
    """The agent's settings from `argv` and the environment; a bad value exits naming its flag."""
    p = build_parser()
    args = p.parse_args(argv)
    urls = split_list(args.listen) or split_list(_env("NSM_LISTEN_ON")) or [DEFAULT_SOCKET]
    try:
        return AgentSettings(
            name=args.name,
            registry=parse_address(args.registry, default_port=REGISTRY_PORT),
            listen=[parse_address(u) for u in urls],
            state_dir=Path(args.state_dir),
            tunnel_ip=args.tunnel_ip,
            remote_mechanisms=split_list(args.remote_mechanisms),
            vxlan_port=args.vxlan_port,
            wireguard_port=args.wireguard_port,
            wireguard_go=args.wireguard_go,
            request_timeout=args.request_timeout,
            default_lifetime=args.default_lifetime,
            max_lifetime=args.max_lifetime,
            log_level=args.log_level,
        )
    except (ValueError, ValidationError) as exc:
        p.error(str(exc))
        raise
