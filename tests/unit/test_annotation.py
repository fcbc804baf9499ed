"""The pod annotation grammar, with property-based round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_k8s.annotation import AnnotationError, Requested, parse


def test_upstream_examples() -> None:
    assert parse("kernel://my-networkservice-1/nsm-1?app=foo&version=v1") == [
        Requested("kernel", "my-networkservice-1", "nsm-1", {"app": "foo", "version": "v1"})
    ]
    assert parse("kernel://a, kernel://b/nsm-1 ,kernel://c@cluster-2.example") == [
        Requested("kernel", "a", "nsm-2", {}),
        Requested("kernel", "b", "nsm-1", {}),
        Requested("kernel", "c@cluster-2.example", "nsm-3", {}),
    ]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "empty"),
        ("web", "expected kernel://"),
        ("memif://web", "not supported"),
        ("kernel:///nsm-1", "service name is empty"),
        ("kernel://Web", "DNS subdomain"),
        ("kernel://web/" + "x" * 16, "at most 15"),
        ("kernel://web/a/b", "'/'"),
        ("kernel://web?novalue", "not key=value"),
        ("kernel://web?=v", "not key=value"),
        ("kernel://web?a=1&a=2", "twice"),
        ("kernel://web?bad key=v", "label key"),
        ("kernel://a/nsm-1,kernel://b/nsm-1", "requested twice"),
        ("kernel://a,,kernel://b", "empty entry"),
        ("kernel://a,", "empty entry"),
    ],
)
def test_malformed(value: str, words: str) -> None:
    with pytest.raises(AnnotationError) as info:
        parse(value)
    assert words in str(info.value)


names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
ifnames = st.from_regex(r"[a-z][a-z0-9-]{0,13}", fullmatch=True)
labels = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True), st.from_regex(r"[a-z0-9]{0,10}", fullmatch=True), max_size=4
)


@given(st.lists(st.tuples(names, ifnames, labels), min_size=1, max_size=4, unique_by=lambda t: t[1]))
def test_round_trip(entries: list[tuple[str, str, dict[str, str]]]) -> None:
    text = ", ".join(
        f"kernel://{svc}/{ifn}" + ("?" + "&".join(f"{k}={v}" for k, v in lab.items()) if lab else "")
        for svc, ifn, lab in entries
    )
    assert parse(text) == [Requested("kernel", svc, ifn, lab) for svc, ifn, lab in entries]


@given(st.text(max_size=60))
def test_never_crashes(text: str) -> None:
    try:
        result = parse(text)
    except AnnotationError:
        return
    assert len({r.ifname for r in result}) == len(result)
