"""Every parser of outside input, fed anything: it answers, or raises its own error with a
message; never another exception, never a hang. (The same parsers under atheris, guided by
coverage: test_atheris.py.)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nsm_agent.netns.spec import parse_netns
from nsm_api.registry_pb2 import NetworkService, NetworkServiceEndpoint
from nsm_common.errors import NsmError
from nsm_common.identity.spiffe_id import IdPattern, SpiffeId, SpiffeIdError
from nsm_common.registry_path import PathError, read_path
from nsm_common.tokens import TokenError, claims, from_metadata, parse_expires, subject
from nsm_common.urls import UrlError, parse_address
from nsm_endpoint.ipam import PointToPointPool
from nsm_k8s.annotation import AnnotationError, parse
from nsm_registry.validation import validate_endpoint, validate_service
from tests.helpers.fuzz_strategies import TEXT, messages_of

URLISH = st.one_of(
    TEXT,
    st.builds(lambda s, r: f"{s}://{r}", st.sampled_from(["tcp", "unix", "file", "inode", "http", ""]), TEXT),
)


@given(URLISH)
def test_addresses(text: str) -> None:
    try:
        addr = parse_address(text)
    except UrlError as exc:
        assert str(exc)
    else:
        assert addr.scheme in ("tcp", "unix")


@given(st.dictionaries(st.sampled_from(["inodeURL", "netnsInode", "name", "x"]), URLISH, max_size=3))
def test_namespace_forms(params: dict[str, str]) -> None:
    try:
        parse_netns(params)
    except NsmError as exc:
        assert exc.message


@given(URLISH)
def test_annotations(text: str) -> None:
    try:
        assert parse(text)
    except AnnotationError as exc:
        assert str(exc)


@given(st.one_of(TEXT, st.builds(lambda a, b: f"{a}/{b}", TEXT, st.integers(-5, 200))))
def test_cidrs(text: str) -> None:
    try:
        PointToPointPool(text)
    except ValueError as exc:
        assert str(exc)


@given(URLISH)
def test_spiffe_ids_and_patterns(text: str) -> None:
    for parser in (SpiffeId.parse, IdPattern.parse):
        try:
            parser(text)
        except SpiffeIdError as exc:
            assert str(exc)


@given(
    st.lists(
        st.tuples(st.sampled_from(["nsm-client-token", "nsm-client-token-expires", "path", "other"]),
                  st.one_of(URLISH, st.binary(max_size=80))),
        max_size=4,
    )
)  # fmt: skip
def test_token_and_path_metadata(metadata: list[tuple[str, str | bytes]]) -> None:
    for parser, error in ((from_metadata, TokenError), (read_path, PathError)):
        try:
            parser(metadata)
        except error as exc:
            assert str(exc)


@given(TEXT)
def test_tokens_and_times(text: str) -> None:
    assert claims(text) is None or isinstance(claims(text), dict)
    assert isinstance(subject(text), str)
    try:
        parse_expires(text)
    except TokenError as exc:
        assert str(exc)


@given(messages_of(NetworkServiceEndpoint.DESCRIPTOR), messages_of(NetworkService.DESCRIPTOR))
def test_registry_records(endpoint: NetworkServiceEndpoint, service: NetworkService) -> None:
    for problem in (validate_endpoint(endpoint), validate_service(service)):
        assert problem is None or isinstance(problem, str)
