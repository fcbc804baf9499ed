"""Interface names and how a KERNEL mechanism names a namespace."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_agent.decisions.names import chosen_ifname
from nsm_agent.netns.spec import NetnsSpec, parse_netns
from nsm_common.errors import NsmError
from nsm_common.names import ifname_problem


@pytest.mark.parametrize("name", ["nsm-1", "eth0", "a" * 15, "ü" * 7])
def test_good_interface_names(name: str) -> None:
    assert ifname_problem(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("a" * 16, "at most 15"),
        ("ü" * 8, "16 bytes"),
        ("a/b", "'/'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("..", "'..'"),
        ("x..y", "'..'"),
        ("a:b", "':'"),
    ],
)
def test_bad_interface_names_say_why(name: str, words: str) -> None:
    problem = ifname_problem(name)
    assert problem is not None and words in problem


@given(st.text(min_size=1, max_size=40))
def test_chosen_names_are_always_valid(conn_id: str) -> None:
    assert ifname_problem(chosen_ifname(conn_id)) is None
    assert chosen_ifname(conn_id) == chosen_ifname(conn_id)


def test_netns_forms() -> None:
    assert parse_netns({"inodeURL": "file:///var/run/netns/pod"}) == NetnsSpec(path="/var/run/netns/pod")
    assert parse_netns({"inodeURL": "file:///proc/42/ns/net", "netnsInode": "7"}) == NetnsSpec(
        path="/proc/42/ns/net", ino=7
    )
    assert parse_netns({"inodeURL": "inode://4/4026532000"}) == NetnsSpec(ino=4026532000, dev=4)
    assert parse_netns({"netnsInode": "4026532000"}) == NetnsSpec(ino=4026532000)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, "names no network namespace"),
        ({"inodeURL": "file:///proc/self/ns/net"}, "/proc/self"),
        ({"inodeURL": "file:///proc/thread-self/ns/net"}, "/proc/self"),
        ({"inodeURL": "file:///etc/passwd"}, "expected file:///proc/PID/ns/net"),
        ({"inodeURL": "file:///var/run/netns/../x"}, "expected"),
        ({"inodeURL": "inode://a/b"}, "decimal"),
        ({"inodeURL": "http://x"}, "unknown scheme"),
        ({"netnsInode": "12x"}, "decimal"),
        ({"inodeURL": "inode://4/5", "netnsInode": "6"}, "different"),
    ],
)
def test_bad_netns_forms(params: dict[str, str], words: str) -> None:
    with pytest.raises(NsmError) as info:
        parse_netns(params)
    assert words in info.value.message
