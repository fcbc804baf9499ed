"""NodeExclusions and the node's excluded-prefixes file (in process: no root, no kernel)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import grpc
import pytest

from nsm_agent.decisions.excluded_prefixes import ExcludedPrefixesError, parse_excluded_prefixes
from nsm_agent.pipeline.node_exclusions import NodeExclusions
from nsm_agent.state import excluded_file
from nsm_agent.state.excluded_file import ExcludedPrefixesFile
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import Recorder, kernel_request

UPSTREAM = "prefixes:\n- 172.16.1.201/32\n- 172.16.1.202/32\n"


def test_upstreams_file_and_its_bad_lines() -> None:
    assert [str(p) for p in parse_excluded_prefixes(UPSTREAM, "f")] == ["172.16.1.201/32", "172.16.1.202/32"]
    assert parse_excluded_prefixes("", "f") == () and parse_excluded_prefixes("prefixes:\n", "f") == ()
    for text, message in [
        ("prefixes:\n- 10.96.0.0/12\n- 10.300.0.0/16\n", "f line 3: '10.300.0.0/16' is not a CIDR"),
        ("prefix:\n- 10.96.0.0/12\n", "f line 1: unknown key 'prefix'"),
        ("prefixes: 10.96.0.0/12\n", "f line 1: 'prefixes' must be a list"),
        ("prefixes:\n- [10.0.0.0/8]\n", "f line 2: a prefix must be a CIDR"),
        ("prefixes: [\n", "f line 2: not YAML"),
        ("- 10.0.0.0/8\n", "f line 1: expected 'prefixes:'"),
    ]:
        with pytest.raises(ExcludedPrefixesError) as caught:
            parse_excluded_prefixes(text, "f")
        assert message in str(caught.value)


def answering(src: str, dst: str) -> Recorder:
    def answer(request: NetworkServiceRequest, call: Call) -> Connection:
        reply = Connection()
        reply.CopyFrom(request.connection)
        reply.network_service_endpoint_name = "nse-1"
        reply.context.ip_context.src_ip_addrs.append(src)
        reply.context.ip_context.dst_ip_addrs.append(dst)
        return reply

    return Recorder(answer)


async def test_the_node_prefixes_reach_the_endpoint_once_each() -> None:
    prefixes = parse_excluded_prefixes(UPSTREAM, "f")
    end = answering("172.16.1.203/32", "172.16.1.200/32")
    chain = Chain([NodeExclusions(lambda: prefixes), end])
    req = kernel_request()
    req.connection.context.ip_context.excluded_prefixes.extend(["10.0.0.0/8", "172.16.1.201/32"])
    await chain.request(req)
    assert list(end.requests[0].connection.context.ip_context.excluded_prefixes) == [
        "10.0.0.0/8", "172.16.1.201/32", "172.16.1.202/32",
    ]  # fmt: skip


async def test_a_reply_inside_them_is_refused_naming_address_and_prefix() -> None:
    prefixes = parse_excluded_prefixes(UPSTREAM, "f")
    chain = Chain([NodeExclusions(lambda: prefixes), answering("172.16.1.202/32", "172.16.1.200/32")])
    with pytest.raises(NsmError) as caught:
        await chain.request(kernel_request())
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "nse-1 handed out 172.16.1.202/32, inside the node's excluded prefix 172.16.1.202/32" in caught.value.message


async def test_without_prefixes_the_request_is_untouched() -> None:
    end = Recorder()
    await Chain([NodeExclusions(tuple), end]).request(kernel_request())
    assert not end.requests[0].connection.context.ip_context.excluded_prefixes


async def test_the_file_is_followed_and_a_bad_change_keeps_the_last_good_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(excluded_file, "RECHECK", 0.02)
    # As the kubelet projects a ConfigMap: the file is a symlink into a folder swapped whole.
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "excluded_prefixes_input.yaml").write_text(UPSTREAM)
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/excluded_prefixes_input.yaml", tmp_path / "excluded_prefixes_input.yaml")
    source = ExcludedPrefixesFile(str(tmp_path / "excluded_prefixes_input.yaml"))
    assert [str(p) for p in source.prefixes] == ["172.16.1.201/32", "172.16.1.202/32"]
    heard: list[list[str]] = []
    task = asyncio.create_task(source.follow(lambda ps: heard.append([str(p) for p in ps])))

    def swap(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "excluded_prefixes_input.yaml").write_text(text)
        os.symlink(name, tmp_path / "..tmp")
        os.replace(tmp_path / "..tmp", tmp_path / "..data")

    try:
        swap("v2", "prefixes:\n- 10.96.0.0/12\n")
        await _until(lambda: heard == [["10.96.0.0/12"]])
        swap("v3", "prefixes:\n- 10.96.0.0/12\n- nonsense\n")
        await asyncio.sleep(0.1)
        assert [str(p) for p in source.prefixes] == ["10.96.0.0/12"] and len(heard) == 1
        swap("v4", "prefixes: []\n")
        await _until(lambda: len(heard) == 2)
        assert heard[-1] == [] and source.prefixes == ()
    finally:
        task.cancel()


def test_a_missing_file_holds_none_and_a_bad_one_stops_the_start(tmp_path: Path) -> None:
    assert ExcludedPrefixesFile(str(tmp_path / "not-yet.yaml")).prefixes == ()
    (tmp_path / "bad.yaml").write_text("prefixes:\n- 10.0.0.0/8\n- 10.0.0.0/33\n")
    with pytest.raises(ExcludedPrefixesError, match=re.escape("line 3: '10.0.0.0/33'")):
        ExcludedPrefixesFile(str(tmp_path / "bad.yaml"))


async def _until(check, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
