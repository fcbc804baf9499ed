"""Registry settings from flags and the environment, validated by pydantic."""

from __future__ import annotations

import argparse
import os

from pydantic import BaseModel, Field, field_validator

from nsm_common.urls import REGISTRY_PORT, Address, parse_address, split_list


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


class RegistrySettings(BaseModel):
    listen: list[Address] = Field(min_length=1)
    store: str = "memory"
    max_expiration: float = Field(default=60.0, gt=0)
    log_level: str = "info"

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value != "memory":
            parse_etcd_url(value)  # raises with a message naming the problem
        return value


def build_parser() -> argparse.ArgumentParser:
    """`nsm-registry`'s flags, their defaults taken from the environment as it is now."""
    parser = argparse.ArgumentParser(prog="nsm-registry", description="Network Service Mesh registry")
    parser.add_argument(
        "--listen", action="append", help="tcp://HOST:PORT or unix:///PATH (repeatable; env NSM_LISTEN_ON)"
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("NSM_STORE", "memory"),
        help="memory, or etcd://HOST:PORT[,HOST:PORT...] (env NSM_STORE)",
    )
    parser.add_argument(
        "--max-expiration",
        type=float,
        default=float(os.environ.get("NSM_MAX_EXPIRATION", "60")),
        help="longest endpoint registration lifetime in seconds (env NSM_MAX_EXPIRATION)",
    )
    parser.add_argument("--log-level", default=os.environ.get("NSM_LOG_LEVEL", "info"), help="env NSM_LOG_LEVEL")
    return parser


def parse_settings(argv: list[str] | None = None) -> RegistrySettings:
    """The registry's settings from `argv` and the environment; a bad value exits naming its flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    urls = split_list(args.listen) or split_list(os.environ.get("NSM_LISTEN_ON")) or [f"tcp://0.0.0.0:{REGISTRY_PORT}"]
    try:
        listen = [parse_address(u, default_port=REGISTRY_PORT) for u in urls]
        return RegistrySettings(
            listen=listen, store=args.store, max_expiration=args.max_expiration, log_level=args.log_level
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
