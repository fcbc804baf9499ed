"""Journal: written down before the steps below act, done after, gone on failure and Close."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nsm_agent.pipeline.journal import Journal, Journalled, journalled, note
from nsm_agent.state.journal import DONE, INTENT, JournalStore
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.chain import Call, Chain
from nsm_common.errors import NsmError
from tests.helpers.steps import FailOn, Recorder, kernel_request


async def test_an_intent_before_the_steps_below_act_and_done_after(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    seen: list[str] = []

    def answer(request: NetworkServiceRequest, call: Call) -> Connection:
        entry = store.read("c1")
        seen.append(entry.state if entry else "none")
        return request.connection

    end = Recorder(answer)
    chain = Chain([Journal(store), end])
    await chain.request(kernel_request("c1"))
    assert seen == [INTENT]
    entry = store.read("c1")
    assert entry is not None and entry.state == DONE and entry.reply is not None
    assert not journalled(end.calls[0])
    await chain.request(kernel_request("c1"))  # a refresh: the journal held it as done
    assert journalled(end.calls[1])
    await chain.close(Connection(id="c1"))
    assert store.read("c1") is None


async def test_a_failed_new_connection_leaves_no_entry_and_a_refresh_keeps_its_entry(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    fail = FailOn(1, NsmError(grpc.StatusCode.UNAVAILABLE, "down"))
    chain = Chain([Journal(store), fail, Recorder()])
    with pytest.raises(NsmError):
        await chain.request(kernel_request("c1"))
    assert store.entries() == []
    await chain.request(kernel_request("c1"))
    fail.seen, fail.n = 0, 1
    with pytest.raises(NsmError):
        await chain.request(kernel_request("c1"))  # a failed refresh: the connection stays
    entry = store.read("c1")
    assert entry is not None and entry.state == DONE


async def test_notes_are_written_before_a_step_acts(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)

    def answer(request: NetworkServiceRequest, call: Call) -> Connection:
        return request.connection

    class Noting(Recorder):
        async def request(self, request, call: Call, nxt):  # type: ignore[no-untyped-def]
            note(call, "netns", "/var/run/netns/a", "/var/run/netns/b")
            note(call, "netns", "/var/run/netns/a")
            entry = store.read("c1")
            # Each once, the latest last (a reselect back to an endpoint: where it went last).
            assert entry is not None and entry.notes == {"netns": ["/var/run/netns/b", "/var/run/netns/a"]}
            assert call.get(Journalled) is not None
            return await super().request(request, call, nxt)

    await Chain([Journal(store), Noting(answer)]).request(kernel_request("c1"))
    note(Call(), "netns", "x")  # without a journal in the chain, notes go nowhere
