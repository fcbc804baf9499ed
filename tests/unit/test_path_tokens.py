"""Path tokens in-process (no root): the token and its wire, the steps that place and sign
them, the policies that check them, the owner of a connection, the registry's path."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import grpc
import jwt
import pytest

from nsm_api.connection_pb2 import Connection, MonitorScopeSelector, PathSegment
from nsm_api.connection_pb2 import Path as ConnPath
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.authorize import Authorize, owner_of
from nsm_common.chain.begin import Begin
from nsm_common.chain.caller import Caller
from nsm_common.chain.chain import Call, Chain
from nsm_common.chain.monitor import ConnectionEvents, holds
from nsm_common.chain.path_tokens import OutgoingTokens, PresentedToken, SignSegment
from nsm_common.chain.update_path import UpdatePath
from nsm_common.errors import NsmError
from nsm_common.identity import issue
from nsm_common.identity.folder import IdentityFolder
from nsm_common.identity.spiffe_id import Roles, SpiffeId
from nsm_common.identity.svid import Svid
from nsm_common.policy.policies import Policies
from nsm_common.registry_path import PathError, RegistryPath, enter, read_path
from nsm_common.timeutil import ts_from
from nsm_common.tokens import (
    EXPIRES_KEY,
    MIN_LIFETIME,
    TOKEN_KEY,
    Presented,
    TokenError,
    claims,
    format_expires,
    from_metadata,
    parse_expires,
    sign,
    subject,
    to_metadata,
    verify,
)

TD = "example.org"
CLIENT = f"spiffe://{TD}/node/client"
SERVER = f"spiffe://{TD}/node/server"
OTHER = f"spiffe://{TD}/node/other"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    issue.init_ca(tmp_path / "ca", TD)
    for name, sid in (("client", CLIENT), ("server", SERVER), ("other", OTHER)):
        issue.issue(tmp_path / "ca", sid, tmp_path / name)
    return tmp_path


def expired(svid: Svid, audience: str) -> str:
    """A token past its exp (sign() never makes one: it signs at least MIN_LIFETIME ahead)."""
    claims = {"sub": str(svid.spiffe_id), "aud": [audience], "exp": int(time.time()) - 5}
    return jwt.encode(claims, svid.key_pem, algorithm="ES256")


def ident(pki: Path, who: str) -> IdentityFolder:
    return IdentityFolder(pki / who, server=False)


def test_expires_is_written_and_read_as_gos_rfc3339nano() -> None:
    assert format_expires(1767225600.5) == "2026-01-01T00:00:00.5Z"
    assert format_expires(1767225600.0) == "2026-01-01T00:00:00Z"
    assert format_expires(1767225600.25) == "2026-01-01T00:00:00.25Z"  # trailing zeros dropped, as Go does
    assert parse_expires("2026-01-01T00:00:00.123456789Z") == pytest.approx(1767225600.123456789)
    assert parse_expires("2026-01-01T01:00:00+01:00") == 1767225600.0
    for bad in ("yesterday", "2026-13-01T00:00:00Z", "2026-01-01 00:00:00", "2026-01-01T00:00:00.1234567891Z"):
        with pytest.raises(TokenError, match=EXPIRES_KEY):
            parse_expires(bad)


def test_metadata_carries_exactly_one_token_and_expiry() -> None:
    assert from_metadata([("other", "x")]) is None
    assert from_metadata(to_metadata("t", 1767225600.0)) == Presented("t", 1767225600.0)
    with pytest.raises(TokenError, match="exactly one"):
        from_metadata([(TOKEN_KEY, "a"), (TOKEN_KEY, "b"), (EXPIRES_KEY, "2026-01-01T00:00:00Z")])
    with pytest.raises(TokenError, match="exactly one"):
        from_metadata([(TOKEN_KEY, "a")])
    with pytest.raises(TokenError, match="at most"):
        from_metadata([(TOKEN_KEY, "a" * 9000), (EXPIRES_KEY, "2026-01-01T00:00:00Z")])


def test_a_token_names_its_signer_and_audience_and_verifies_only_with_its_key(pki: Path) -> None:
    svid = ident(pki, "client").current()
    signed = sign(svid, SERVER, time.time() + 60)
    found = claims(signed.token)
    assert found is not None and found["sub"] == CLIENT and found["aud"] == [SERVER]
    assert jwt.get_unverified_header(signed.token)["alg"] == "ES256"
    assert verify(signed.token, svid.cert_pem)["sub"] == CLIENT
    with pytest.raises(TokenError, match="not signed by that certificate"):
        verify(signed.token, ident(pki, "other").current().cert_pem)
    # Never past the SVID's own end; never less than the call it goes with needs.
    assert sign(svid, SERVER, time.time() + 10**9).expires == int(svid.not_after.timestamp())
    assert sign(svid, SERVER, time.time() - 100).expires >= int(time.time() + MIN_LIFETIME) - 1
    assert subject("not a token") == "" and claims("") is None


def request_at(index: int, segments: list[PathSegment]) -> NetworkServiceRequest:
    conn = Connection(id=segments[index].id, network_service="svc", path=ConnPath(index=index, path_segments=segments))
    return NetworkServiceRequest(connection=conn)


def tls_caller(pki: Path, who: str, spiffe_id: str, token: str = "", expires: float = 0.0) -> Caller:
    pem = (pki / who / "tls.crt").read_text()
    presented = Presented(token, expires) if token else None
    return Caller(SpiffeId.parse(spiffe_id), pem, presented, local=False)


def server_chain(pki: Path, begin: Begin | None = None) -> tuple[Chain, Begin]:
    identity = ident(pki, "server")
    begin = begin or Begin()
    roles = Roles(TD)
    authorize = Authorize(Policies(), identity, lambda: roles, "server")
    begin.may_touch = authorize.may_touch
    steps = [PresentedToken(), UpdatePath("server", 600, 600), SignSegment(identity, "server"), authorize, begin]
    return Chain(steps), begin


def with_caller(caller: Caller) -> Call:
    call = Call()
    call.put(caller)
    return call


async def test_the_server_places_the_callers_token_signs_its_own_and_checks_the_chain(pki: Path) -> None:
    chain, _ = server_chain(pki)
    client = ident(pki, "client").current()
    exp = time.time() + 300
    token = sign(client, SERVER, exp).token
    req = request_at(0, [PathSegment(name="client", id="c-1")])
    reply = await chain.request(req, with_caller(tls_caller(pki, "client", CLIENT, token, exp)))
    segs = reply.path.path_segments
    assert segs[0].token == token and abs(segs[0].expires.seconds - int(exp)) <= 1  # upstream: expiry from metadata
    assert subject(segs[1].token) == SERVER and claims(segs[1].token)["aud"] == [CLIENT]  # type: ignore[index]
    assert verify(segs[1].token, ident(pki, "server").current().cert_pem)


@pytest.mark.parametrize(
    ("kind", "policy"),
    [
        ("none", "common/tokens_valid.rego"),
        ("unchained", "common/tokens_chained.rego"),
        ("expired", "common/tokens_expired.rego"),
        ("other-signer", "server/prev_token_signed.rego"),
    ],
)
async def test_a_bad_token_is_denied_by_the_policy_that_catches_it(pki: Path, kind: str, policy: str) -> None:
    chain, _ = server_chain(pki)
    exp = time.time() + 300
    signer = ident(pki, "other" if kind == "other-signer" else "client").current()
    token = {
        "none": "",
        "unchained": sign(signer, OTHER, exp).token,
        "expired": expired(signer, SERVER),
        "other-signer": sign(signer, SERVER, exp).token,
    }[kind]
    req = request_at(0, [PathSegment(name="client", id="c-1")])
    with pytest.raises(NsmError) as info:
        await chain.request(req, with_caller(tls_caller(pki, "client", CLIENT, token, exp)))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert f"policy {policy} denies this" in info.value.message
    assert f"by {CLIENT}" in info.value.message


async def test_only_the_identity_that_made_a_connection_refreshes_or_closes_it(pki: Path) -> None:
    chain, begin = server_chain(pki)
    exp = time.time() + 300

    def as_(who: str, spiffe_id: str) -> Call:
        return with_caller(tls_caller(pki, who, spiffe_id, sign(ident(pki, who).current(), SERVER, exp).token, exp))

    reply = await chain.request(request_at(0, [PathSegment(name="client", id="c-1")]), as_("client", CLIENT))
    held = begin.held(reply.path.path_segments[1].id)
    assert held is not None and owner_of(held) == CLIENT

    def again() -> Connection:  # each call gets its own copy, as over gRPC
        out = Connection()
        out.CopyFrom(reply)
        return out

    with pytest.raises(NsmError) as info:  # another agent names the same connection
        await chain.request(NetworkServiceRequest(connection=again()), as_("other", OTHER))
    assert "server/caller_owns_connection.rego" in info.value.message
    with pytest.raises(NsmError):
        await chain.close(again(), as_("other", OTHER))
    assert begin.held(reply.path.path_segments[1].id) is not None  # still there
    await chain.request(NetworkServiceRequest(connection=again()), as_("client", CLIENT))  # the owner refreshes
    await chain.close(again(), as_("client", CLIENT))
    assert begin.held(reply.path.path_segments[1].id) is None


async def test_a_local_caller_is_vouched_for_by_this_hop(pki: Path) -> None:
    chain, _ = server_chain(pki)
    req = request_at(0, [PathSegment(name="pod", id="p-1", expires=ts_from(time.time() + 60))])
    reply = await chain.request(req, with_caller(Caller()))  # a plaintext unix socket
    first, own = reply.path.path_segments
    assert subject(first.token) == SERVER and claims(first.token)["aud"] == [SERVER]  # type: ignore[index]
    assert subject(own.token) == SERVER


def test_outgoing_tokens_sign_for_the_server_and_check_its_reply(pki: Path) -> None:
    tokens = OutgoingTokens(ident(pki, "client"), Policies())
    conn = Connection(
        path=ConnPath(index=0, path_segments=[PathSegment(name="c", id="1", expires=ts_from(time.time() + 60))])
    )
    metadata = tokens.sign_for(conn, SERVER)
    presented = from_metadata(metadata)
    assert presented is not None and presented.token == conn.path.path_segments[0].token
    server = ident(pki, "server").current()
    reply = Connection()
    reply.CopyFrom(conn)
    reply.path.path_segments.add(name="s", id="2", token=sign(server, CLIENT, time.time() + 60).token)
    tokens.check_reply(reply, SERVER)
    with pytest.raises(NsmError, match=r"client/next_token_from_server\.rego"):
        tokens.check_reply(reply, OTHER)  # not the server we dialled
    reply.path.path_segments[1].token = expired(server, CLIENT)
    with pytest.raises(NsmError, match=r"common/tokens_expired\.rego"):
        tokens.check_reply(reply, SERVER)
    assert OutgoingTokens(None).sign_for(conn, SERVER) == ()  # no identity, no token


def test_the_registry_path_is_upstreams_json() -> None:
    assert read_path([("x", "1")]) is None
    path = read_path([("path", '{"Index": 1, "PathSegments": [{"token": "a"}, {"token": "b"}]}')])  # Go's names
    assert path == RegistryPath(1, ["a", "b"])
    assert enter(path, "B", "C") == 2 and path.tokens == ["a", "B", "C"]
    fresh = RegistryPath()
    assert enter(fresh, "peer", "own") == 1 and fresh.tokens == ["peer", "own"]
    for bad, why in (("{", "not JSON"), ("[]", "not a JSON object"), ('{"index": -1}', "whole number"),
                     ('{"index": 3, "path_segments": [{"token": "a"}]}', "past its 1 segments"),
                     ('{"path_segments": [' + ",".join(["{}"] * 40) + "]}", "at most 32")):  # fmt: skip
        with pytest.raises(PathError, match=why):
            read_path([("path", bad)])


async def test_over_tls_a_monitor_shows_only_connections_whose_path_holds_the_caller(pki: Path) -> None:
    events = ConnectionEvents()
    mine = sign(ident(pki, "client").current(), SERVER, time.time() + 60).token
    theirs = sign(ident(pki, "other").current(), SERVER, time.time() + 60).token
    for cid, token in (("a", mine), ("b", theirs)):
        events.update(Connection(id=cid, path=ConnPath(index=0, path_segments=[PathSegment(id=cid, token=token)])))
    stream = events.stream(MonitorScopeSelector(), functools.partial(holds, identity=CLIENT))
    first = await anext(stream)
    assert list(first.connections) == ["a"]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_local_clients_connection_is_nobody_elses_over_tls(pki: Path) -> None:
    chain, begin = server_chain(pki)
    req = request_at(0, [PathSegment(name="pod", id="p-9", expires=ts_from(time.time() + 60))])
    reply = await chain.request(req, with_caller(Caller()))  # a pod on its own socket
    held = begin.held(reply.path.path_segments[1].id)
    assert held is not None and owner_of(held) == SERVER  # the segment this hop signed for it
    bare = NetworkServiceRequest(connection=Connection(network_service="svc"))  # no path at all
    first = await chain.request(bare, with_caller(Caller()))
    held_bare = begin.held(first.id)
    assert held_bare is not None and owner_of(held_bare) == "local"
    exp = time.time() + 300
    other = tls_caller(pki, "other", OTHER, sign(ident(pki, "other").current(), SERVER, exp).token, exp)
    gone = Connection()
    gone.CopyFrom(reply)
    with pytest.raises(NsmError, match=r"server/caller_owns_connection\.rego"):
        await chain.close(gone, with_caller(other))
    assert begin.held(reply.path.path_segments[1].id) is not None


async def test_a_token_in_somebody_elses_name_is_refused(pki: Path) -> None:
    """Signed by the caller's own key, but naming another identity as its subject."""
    chain, _ = server_chain(pki)
    client = ident(pki, "client").current()
    forged = jwt.encode(
        {"sub": OTHER, "aud": [SERVER], "exp": int(time.time()) + 60}, client.key_pem, algorithm="ES256"
    )
    req = request_at(0, [PathSegment(name="client", id="c-f")])
    with pytest.raises(NsmError, match=r"server/prev_token_is_callers\.rego"):
        await chain.request(req, with_caller(tls_caller(pki, "client", CLIENT, forged, time.time() + 60)))


async def test_a_local_callers_own_segments_are_all_signed_here(pki: Path) -> None:
    """A pod that puts made-up segments before its own gets them signed by this hop: they
    speak for nobody else downstream."""
    chain, _ = server_chain(pki)
    made_up = sign(ident(pki, "other").current(), CLIENT, time.time() + 60).token
    segs = [PathSegment(name="fake", id="f-1", token=made_up, expires=ts_from(time.time() + 60)),
            PathSegment(name="pod", id="p-2", expires=ts_from(time.time() + 60))]  # fmt: skip
    reply = await chain.request(request_at(1, segs), with_caller(Caller()))
    assert [subject(s.token) for s in reply.path.path_segments] == [SERVER, SERVER, SERVER]


def test_a_reply_that_changes_the_path_before_this_hop_is_refused(pki: Path) -> None:
    tokens = OutgoingTokens(ident(pki, "client"), Policies())
    first = PathSegment(name="c", id="1", expires=ts_from(time.time() + 60))
    sent = Connection(path=ConnPath(index=0, path_segments=[first]))
    tokens.sign_for(sent, SERVER)
    reply = Connection()
    reply.CopyFrom(sent)
    reply.path.path_segments.add(
        name="s", id="2", token=sign(ident(pki, "server").current(), CLIENT, time.time() + 60).token
    )
    tokens.check_reply(reply, SERVER, sent)
    reply.path.path_segments[0].id = "changed"
    with pytest.raises(NsmError, match="changed the path up to this hop"):
        tokens.check_reply(reply, SERVER, sent)
    local = Connection()
    local.CopyFrom(sent)
    local.path.path_segments.add(name="ep", id="3")
    local.path.path_segments.add(name="extra", id="4")  # a local endpoint adding hops after itself
    with pytest.raises(NsmError, match="may add only its own segment"):
        tokens.vouch(sent, local)


def test_a_token_nested_too_deep_is_no_token() -> None:
    import base64

    deep = base64.urlsafe_b64encode(b"[" * 50_000 + b"]" * 50_000).decode().rstrip("=")
    assert claims(f"eyJhbGciOiJFUzI1NiJ9.{deep}.x") is None
    assert claims("eyJhbGciOiJFUzI1NiJ9.eyJleHAiOk5hTn0.x") is None  # {"exp":NaN}
