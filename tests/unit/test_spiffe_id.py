"""SPIFFE IDs: the standard's rules, the DNS name a server carries, roles by pattern."""

from __future__ import annotations

import pytest

from nsm_common.identity.spiffe_id import IdPattern, Roles, SpiffeId, SpiffeIdError


def test_a_valid_id_parses_and_prints_back() -> None:
    sid = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
    assert (sid.trust_domain, sid.path, sid.segments) == (
        "example.org",
        "/ns/default/sa/web",
        ["ns", "default", "sa", "web"],
    )
    assert str(sid) == "spiffe://example.org/ns/default/sa/web"
    assert SpiffeId.parse("spiffe://example.org").path == ""


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("http://example.org/x", "starts with spiffe://"),
        ("SPIFFE://example.org/x", "starts with spiffe://"),
        ("spiffe:///x", "trust domain is missing"),
        ("spiffe://Example.org/x", "lower-case"),
        ("spiffe://example.org:8443/x", "no port"),
        ("spiffe://user@example.org/x", "no port, no user"),
        ("spiffe://example.org/x?y=1", "no query"),
        ("spiffe://example.org/a//b", "empty segment"),
        ("spiffe://example.org/a/", "empty segment"),
        ("spiffe://example.org/a/../b", "'..'"),
        ("spiffe://example.org/a b", "segment 'a b'"),
        ("spiffe://example.org/" + "a" * 2100, "at most 2048"),
    ],
)
def test_an_invalid_id_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(SpiffeIdError, match=says.replace("?", r"\?").replace(".", r"\.")):
        SpiffeId.parse(text)


def test_dns_name_reverses_the_path_before_the_trust_domain() -> None:
    assert SpiffeId.parse("spiffe://example.org/node/node1").dns_name() == "node1.node.example.org"
    assert SpiffeId.parse("spiffe://example.org/registry").dns_name() == "registry.example.org"
    assert SpiffeId.parse("spiffe://cluster.local/ns/nsm_system/sa/Agent.v1").dns_name() == (
        "agent-v1.sa.nsm-system.ns.cluster.local"
    )


def test_dns_name_refuses_what_no_dns_label_can_hold() -> None:
    with pytest.raises(SpiffeIdError, match="give the server's DNS name explicitly"):
        SpiffeId.parse("spiffe://example.org/" + "a" * 70).dns_name()
    with pytest.raises(SpiffeIdError, match="-x"):
        SpiffeId.parse("spiffe://example.org/-x").dns_name()


def test_patterns_bind_one_segment_per_placeholder() -> None:
    pattern = IdPattern("spiffe://{trust_domain}/node/{name}")
    assert pattern.matches(SpiffeId.parse("spiffe://example.org/node/n1"), "example.org") == {"name": "n1"}
    assert pattern.matches(SpiffeId.parse("spiffe://example.org/node/n1/x"), "example.org") is None
    assert pattern.matches(SpiffeId.parse("spiffe://other.org/node/n1"), "example.org") is None
    # Regex characters in a pattern are literal.
    assert IdPattern("spiffe://{trust_domain}/a.b").matches(SpiffeId.parse("spiffe://t/aXb"), "t") is None


def test_roles_by_default_patterns_and_by_a_sites_own() -> None:
    roles = Roles("example.org")
    assert roles.role_of(SpiffeId.parse("spiffe://example.org/node/n1")) == "agent"
    assert roles.role_of(SpiffeId.parse("spiffe://example.org/registry")) == "registry"
    assert roles.role_of(SpiffeId.parse("spiffe://example.org/ns/default/sa/web")) == "workload"
    assert roles.role_of(SpiffeId.parse("spiffe://example.org/something/else")) is None
    assert roles.role_of(SpiffeId.parse("spiffe://other.org/node/n1")) is None
    spire = Roles("example.org", agent=IdPattern("spiffe://{trust_domain}/ns/nsm-system/sa/nsm-agent"))
    assert spire.role_of(SpiffeId.parse("spiffe://example.org/ns/nsm-system/sa/nsm-agent")) == "agent"
    assert spire.role_of(SpiffeId.parse("spiffe://example.org/ns/default/sa/web")) == "workload"
    assert spire.role_of(SpiffeId.parse("spiffe://example.org/node/n1")) is None


def test_a_sites_pattern_is_checked_before_use() -> None:
    assert IdPattern.parse("spiffe://{trust_domain}/ns/nsm-system/sa/{name}").text.endswith("{name}")
    assert IdPattern.parse("spiffe://cluster.local/agent/{name}").matches(
        SpiffeId.parse("spiffe://cluster.local/agent/n1"), "cluster.local"
    ) == {"name": "n1"}
    for bad, says in (
        ("http://{trust_domain}/x", "starts with spiffe://"),
        ("spiffe://{trust_domain}/node-{name}", "whole path segment"),
        ("spiffe://{trust_domain}/{Name}", "lower-case name in braces"),
        ("spiffe://{trust_domain}//{name}", "empty segment"),
    ):
        with pytest.raises(SpiffeIdError, match=says):
            IdPattern.parse(bad)
