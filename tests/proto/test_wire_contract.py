"""Our descriptors against the wire contract table in shared/api-spec.md.

Package, message, field number, name, type and label, enum values, services and
methods: what must match upstream NSM v1 byte for byte on the wire.
"""

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from nsm_api import connection_pb2, connectioncontext_pb2, networkservice_pb2, registry_pb2

S, U32, I32, B, E, M = "string", "uint32", "int32", "bool", "enum", "message"
R = "repeated"
MAP = "map"

# (full message name) -> [(number, name, type, type name or None, repeated/map/None)]
MESSAGES: dict[str, list[tuple[int, str, str, str | None, str | None]]] = {
    "connectioncontext.IpNeighbor": [(1, "ip", S, None, None), (2, "hardware_address", S, None, None)],
    "connectioncontext.Route": [(1, "prefix", S, None, None), (2, "nextHop", S, None, None)],
    "connectioncontext.IpFamily": [(1, "family", E, "connectioncontext.IpFamily.Family", None)],
    "connectioncontext.ExtraPrefixRequest": [
        (1, "addr_family", M, "connectioncontext.IpFamily", None),
        (2, "prefix_len", U32, None, None),
        (3, "required_number", U32, None, None),
        (4, "requested_number", U32, None, None),
    ],
    "connectioncontext.PolicyRoute": [
        (1, "from", S, None, None),
        (2, "proto", S, None, None),
        (3, "dst_port", S, None, None),
        (4, "src_port", S, None, None),
        (5, "routes", M, "connectioncontext.Route", R),
    ],
    "connectioncontext.IPContext": [
        (1, "src_ip_addrs", S, None, R),
        (2, "dst_ip_addrs", S, None, R),
        (3, "src_ip_required", B, None, None),
        (4, "dst_ip_required", B, None, None),
        (5, "src_routes", M, "connectioncontext.Route", R),
        (6, "dst_routes", M, "connectioncontext.Route", R),
        (7, "excluded_prefixes", S, None, R),
        (8, "ip_neighbors", M, "connectioncontext.IpNeighbor", R),
        (9, "extra_prefix_request", M, "connectioncontext.ExtraPrefixRequest", R),
        (10, "extra_prefixes", S, None, R),
        (11, "policies", M, "connectioncontext.PolicyRoute", R),
    ],
    "connectioncontext.DNSConfig": [(1, "dns_server_ips", S, None, R), (2, "search_domains", S, None, R)],
    "connectioncontext.DNSContext": [(1, "configs", M, "connectioncontext.DNSConfig", R)],
    "connectioncontext.EthernetContext": [
        (1, "src_mac", S, None, None),
        (2, "dst_mac", S, None, None),
        (3, "vlan_tag", I32, None, None),
    ],
    "connectioncontext.ConnectionContext": [
        (1, "ip_context", M, "connectioncontext.IPContext", None),
        (2, "dns_context", M, "connectioncontext.DNSContext", None),
        (3, "ethernet_context", M, "connectioncontext.EthernetContext", None),
        (4, "extra_context", M, "string->string", MAP),
        (5, "MTU", U32, None, None),
    ],
    "connection.Mechanism": [
        (1, "cls", S, None, None),
        (2, "type", S, None, None),
        (3, "parameters", M, "string->string", MAP),
    ],
    "connection.PathSegment": [
        (1, "name", S, None, None),
        (2, "id", S, None, None),
        (3, "token", S, None, None),
        (4, "expires", M, "google.protobuf.Timestamp", None),
        (5, "metrics", M, "string->string", MAP),
    ],
    "connection.Path": [(1, "index", U32, None, None), (2, "path_segments", M, "connection.PathSegment", R)],
    "connection.Connection": [
        (1, "id", S, None, None),
        (2, "network_service", S, None, None),
        (3, "mechanism", M, "connection.Mechanism", None),
        (4, "context", M, "connectioncontext.ConnectionContext", None),
        (5, "labels", M, "string->string", MAP),
        (6, "path", M, "connection.Path", None),
        (7, "network_service_endpoint_name", S, None, None),
        (8, "payload", S, None, None),
        (9, "state", E, "connection.State", None),
    ],
    "connection.ConnectionEvent": [
        (1, "type", E, "connection.ConnectionEventType", None),
        (2, "connections", M, "string->connection.Connection", MAP),
    ],
    "connection.MonitorScopeSelector": [
        (1, "path_segments", M, "connection.PathSegment", R),
        (2, "network_services", S, None, R),
    ],
    "networkservice.NetworkServiceRequest": [
        (1, "connection", M, "connection.Connection", None),
        (2, "mechanism_preferences", M, "connection.Mechanism", R),
    ],
    "registry.NetworkService": [
        (1, "name", S, None, None),
        (2, "payload", S, None, None),
        (3, "matches", M, "registry.Match", R),
        (4, "path_ids", S, None, R),
    ],
    "registry.Match": [
        (1, "source_selector", M, "string->string", MAP),
        (2, "routes", M, "registry.Destination", R),
        (3, "fallthrough", B, None, None),
        (4, "metadata", M, "registry.Metadata", None),
    ],
    "registry.Metadata": [(1, "labels", M, "string->string", MAP)],
    "registry.Destination": [(1, "destination_selector", M, "string->string", MAP), (2, "weight", U32, None, None)],
    "registry.NetworkServiceLabels": [(1, "labels", M, "string->string", MAP)],
    "registry.NetworkServiceEndpoint": [
        (1, "name", S, None, None),
        (2, "network_service_names", S, None, R),
        (3, "network_service_labels", M, "string->registry.NetworkServiceLabels", MAP),
        (4, "url", S, None, None),
        (5, "expiration_time", M, "google.protobuf.Timestamp", None),
        (6, "initial_registration_time", M, "google.protobuf.Timestamp", None),
        (7, "path_ids", S, None, R),
    ],
    "registry.NetworkServiceQuery": [
        (1, "network_service", M, "registry.NetworkService", None),
        (2, "watch", B, None, None),
    ],
    "registry.NetworkServiceEndpointQuery": [
        (1, "network_service_endpoint", M, "registry.NetworkServiceEndpoint", None),
        (2, "watch", B, None, None),
    ],
    "registry.NetworkServiceResponse": [
        (1, "network_service", M, "registry.NetworkService", None),
        (2, "deleted", B, None, None),
    ],
    "registry.NetworkServiceEndpointResponse": [
        (1, "network_service_endpoint", M, "registry.NetworkServiceEndpoint", None),
        (2, "deleted", B, None, None),
    ],
}

ENUMS = {
    "connectioncontext.IpFamily.Family": {"IPV4": 0, "IPV6": 1},
    "connection.State": {"UP": 0, "DOWN": 1, "REFRESH_REQUESTED": 2, "RESELECT_REQUESTED": 3},
    "connection.ConnectionEventType": {"INITIAL_STATE_TRANSFER": 0, "UPDATE": 1, "DELETE": 2},
}

SERVICES = {
    "networkservice.NetworkService": {
        "Request": ("networkservice.NetworkServiceRequest", "connection.Connection", False),
        "Close": ("connection.Connection", "google.protobuf.Empty", False),
    },
    "connection.MonitorConnection": {
        "MonitorConnections": ("connection.MonitorScopeSelector", "connection.ConnectionEvent", True),
    },
    "registry.NetworkServiceRegistry": {
        "Register": ("registry.NetworkService", "registry.NetworkService", False),
        "Find": ("registry.NetworkServiceQuery", "registry.NetworkServiceResponse", True),
        "Unregister": ("registry.NetworkService", "google.protobuf.Empty", False),
    },
    "registry.NetworkServiceEndpointRegistry": {
        "Register": ("registry.NetworkServiceEndpoint", "registry.NetworkServiceEndpoint", False),
        "Find": ("registry.NetworkServiceEndpointQuery", "registry.NetworkServiceEndpointResponse", True),
        "Unregister": ("registry.NetworkServiceEndpoint", "google.protobuf.Empty", False),
    },
}

FILES = [connectioncontext_pb2, connection_pb2, networkservice_pb2, registry_pb2]
TYPE_NAMES = {
    FieldDescriptor.TYPE_STRING: S,
    FieldDescriptor.TYPE_UINT32: U32,
    FieldDescriptor.TYPE_INT32: I32,
    FieldDescriptor.TYPE_BOOL: B,
    FieldDescriptor.TYPE_ENUM: E,
    FieldDescriptor.TYPE_MESSAGE: M,
}


def _all_messages() -> dict[str, Descriptor]:
    out: dict[str, Descriptor] = {}

    def walk(d: Descriptor) -> None:
        out[d.full_name] = d
        for n in d.nested_types:
            walk(n)

    for f in FILES:
        for d in f.DESCRIPTOR.message_types_by_name.values():
            walk(d)
    return out


def _describe(field: FieldDescriptor) -> tuple[int, str, str, str | None, str | None]:
    kind = TYPE_NAMES[field.type]
    label = R if field.is_repeated else None
    type_name: str | None = None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        k, v = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        vname = v.message_type.full_name if v.message_type else TYPE_NAMES[v.type]
        return field.number, field.name, M, f"{TYPE_NAMES[k.type]}->{vname}", MAP
    if field.message_type is not None:
        type_name = field.message_type.full_name
    elif field.enum_type is not None:
        type_name = field.enum_type.full_name
    return field.number, field.name, kind, type_name, label


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_fields(name: str) -> None:
    messages = _all_messages()
    assert name in messages, f"message {name} is missing"
    got = sorted(_describe(f) for f in messages[name].fields)
    assert got == sorted(MESSAGES[name])


def test_no_extra_messages() -> None:
    ours = {n for n, d in _all_messages().items() if not d.GetOptions().map_entry}
    assert ours == set(MESSAGES)


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_enums(name: str) -> None:
    found = None
    for f in FILES:
        for e in f.DESCRIPTOR.enum_types_by_name.values():
            if e.full_name == name:
                found = e
    for d in _all_messages().values():
        for e in d.enum_types:
            if e.full_name == name:
                found = e
    assert found is not None, f"enum {name} is missing"
    assert {v.name: v.number for v in found.values} == ENUMS[name]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_services_and_methods(service: str) -> None:
    found = None
    for f in FILES:
        for s in f.DESCRIPTOR.services_by_name.values():
            if s.full_name == service:
                found = s
    assert found is not None, f"service {service} is missing"
    got = {m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming) for m in found.methods}
    assert got == SERVICES[service]
    for m in found.methods:
        assert not m.client_streaming


def test_unknown_fields_survive_a_round_trip() -> None:
    """A newer peer's extra field must come back unchanged."""
    from nsm_api.connection_pb2 import Connection

    extra = b"\xa2\x06\x05hello"  # field 100, length-delimited
    conn = Connection.FromString(Connection(id="x").SerializeToString() + extra)
    assert conn.SerializeToString().endswith(extra)
