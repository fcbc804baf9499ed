"""The journal's format version: today's logs carry on, unknown ones are refused untouched.

`tests/fixtures/connections-v0.log` was written by the agent before the journal had a
version (two connections through a real one-node mesh, a third closed again, then
`kill -9`; an interrupted Request and one closed again written by that agent's store).
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from nsm_agent.state.journal import DONE, FORMAT, INTENT, VERSION, JournalFormatError, JournalStore, read_log
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "connections-v0.log"


def legacy_entries(text: str) -> dict[str, dict[str, object]]:
    """The fixture read by hand, as the version-0 reader read it: last line of each id wins."""
    out: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        data = json.loads(line)
        if data.get("deleted"):
            out.pop(data["id"], None)
        else:
            out[data["id"]] = data
    return out


def state_dir_with(tmp_path: Path, source: Path) -> Path:
    shutil.copy(source, tmp_path / "connections.log")
    return tmp_path


def test_a_version_0_journal_is_read_whole(tmp_path: Path) -> None:
    expected = legacy_entries(FIXTURE.read_text())
    assert sorted(str(e["state"]) for e in expected.values()) == [DONE, DONE, INTENT]  # the fixture is what it says
    store = JournalStore(state_dir_with(tmp_path, FIXTURE))
    got = {e.conn_id: e for e in store.entries()}
    assert sorted(got) == sorted(expected)
    for conn_id, data in expected.items():
        entry = got[conn_id]
        assert entry.state == data["state"]
        assert entry.request == NetworkServiceRequest.FromString(base64.b64decode(str(data["request"])))
        reply = base64.b64decode(str(data["reply"] or ""))
        assert entry.reply == (Connection.FromString(reply) if reply else None)
        assert entry.notes == data["notes"]
    done = [e for e in got.values() if e.state == DONE]
    for entry in done:  # real replies of the agent: a KERNEL interface with addresses
        assert entry.reply is not None and entry.reply.mechanism.type == "KERNEL"
        assert entry.reply.context.ip_context.src_ip_addrs
    intent = got["interrupted-1"]
    assert intent.notes["downstream"] == ["unix:///tmp/gone.sock"]


def test_a_version_0_journal_is_rewritten_as_the_current_version_line_for_line(tmp_path: Path) -> None:
    JournalStore(state_dir_with(tmp_path, FIXTURE)).close()
    lines = (tmp_path / "connections.log").read_text().splitlines()
    assert json.loads(lines[0]) == {"format": FORMAT, "version": VERSION}
    live = legacy_entries(FIXTURE.read_text())
    old_lines = {json.loads(line)["id"]: line for line in FIXTURE.read_text().splitlines() if '"deleted"' not in line}
    # Entry lines did not change between the versions: the same bytes for the same entry.
    assert sorted(lines[1:]) == sorted(old_lines[i] for i in live)
    again = read_log(tmp_path / "connections.log")
    assert sorted(again) == sorted(live)


@pytest.mark.parametrize(
    "header",
    [
        {"format": FORMAT, "version": 99},
        {"format": FORMAT, "version": "1"},
        {"format": "someone-elses-log", "version": 1},
    ],
)
def test_an_unknown_format_is_refused_and_left_as_it_was(tmp_path: Path, header: dict[str, object]) -> None:
    log = tmp_path / "connections.log"
    log.write_text(json.dumps(header) + "\n" + FIXTURE.read_text())
    before = log.read_bytes()
    with pytest.raises(JournalFormatError) as info:
        JournalStore(tmp_path)
    message = str(info.value)
    assert str(log) in message and repr(header["version"]) in message and "Nothing was changed" in message
    assert log.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["connections.log"]  # no tmp file either
    with pytest.raises(JournalFormatError):
        read_log(log)
