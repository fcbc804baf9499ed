"""The endpoint runtime: serves a network service from a namespace (point-to-point IPAM, a KERNEL
answer), registers it and keeps the registration alive. `nsmctl endpoint` runs it."""

from nsm_endpoint.ipam import IpamPolicy, parse_pools
from nsm_endpoint.policy_routes import PolicyRoutesError, load_policy_routes
from nsm_endpoint.runtime import EndpointConfig, EndpointRuntime

__all__ = ["EndpointConfig", "EndpointRuntime", "IpamPolicy", "PolicyRoutesError", "load_policy_routes", "parse_pools"]
