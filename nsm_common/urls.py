"""Listen and dial addresses: `unix:///PATH` and `tcp://HOST:PORT`."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

# Where a node's agent listens for its pods, and where they look for it (upstream's path).
DEFAULT_SOCKET = "unix:///var/lib/networkservicemesh/nsm.io.sock"
# Ports a tcp:// address without one means (upstream's).
AGENT_PORT = 5001
REGISTRY_PORT = 5002


def host_port(host: str, port: int) -> str:
    """`HOST:PORT`, an IPv6 host in brackets (`[::1]:5001`), as gRPC, `wg` and URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UrlError(ValueError):
    """An address that is neither `unix:///PATH` nor `tcp://HOST:PORT`."""


@dataclass(frozen=True)
class Address:
    scheme: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def grpc_target(self) -> str:
        """The string grpcio takes to dial or bind this address."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return host_port(self.host, self.port)

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"tcp://{host_port(self.host, self.port)}"


def parse_address(url: str, default_port: int | None = None) -> Address:
    """Parse `unix:///PATH` or `tcp://HOST[:PORT]`; raise UrlError naming what is wrong."""
    if not url:
        raise UrlError("empty address; expected unix:///PATH or tcp://HOST:PORT")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced [ or ] in the host
        raise UrlError(f"{url!r}: {exc}") from None
    if parts.scheme == "unix":
        path = parts.path
        if parts.netloc or not path.startswith("/"):
            raise UrlError(f"{url!r}: a unix address needs an absolute path (unix:///PATH)")
        return Address("unix", path=path)
    if parts.scheme == "tcp":
        host = parts.hostname or ""
        if not host:
            raise UrlError(f"{url!r}: a tcp address needs a host (tcp://HOST:PORT)")
        try:
            port = parts.port
        except ValueError as exc:
            raise UrlError(f"{url!r}: bad port") from exc
        if port is None:
            if default_port is None:
                raise UrlError(f"{url!r}: a tcp address needs a port (tcp://HOST:PORT)")
            port = default_port
        return Address("tcp", host=host, port=port)
    raise UrlError(f"{url!r}: unknown scheme {parts.scheme!r}; expected unix:// or tcp://")


def split_list(value: str | list[str] | None) -> list[str]:
    """A comma list from the environment, or a repeated flag, as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    out: list[str] = []
    for v in value:
        out.extend(split_list(v))
    return out
