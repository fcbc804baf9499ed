"""The connection journal's log: what a restart reads back is what was written last."""

from __future__ import annotations

from pathlib import Path

from nsm_agent.state.journal import DONE, INTENT, Entry, JournalStore, read_log
from nsm_api.connection_pb2 import Connection
from nsm_api.networkservice_pb2 import NetworkServiceRequest


def entry(conn_id: str, state: str = INTENT, **notes: list[str]) -> Entry:
    request = NetworkServiceRequest(connection=Connection(id=conn_id, network_service="svc"))
    reply = Connection(id=conn_id, network_service="svc") if state == DONE else None
    return Entry(conn_id, state, request, reply, dict(notes))


def test_a_new_store_reads_back_the_latest_of_every_entry(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    store.write(entry("a"))
    store.write(entry("a", netns=["/var/run/netns/x"]))
    store.write(entry("a", DONE, netns=["/var/run/netns/x"]))
    store.write(entry("b"))
    store.delete("b")
    store.write(entry("c"))
    store.close()
    again = {e.conn_id: e for e in JournalStore(tmp_path).entries()}
    assert sorted(again) == ["a", "c"]
    assert again["a"].state == DONE and again["a"].notes == {"netns": ["/var/run/netns/x"]}
    assert again["a"].reply is not None and again["a"].reply.id == "a"
    assert again["c"].state == INTENT and again["c"].reply is None


def test_a_line_torn_by_a_crash_is_ignored_and_later_writes_survive(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    store.write(entry("a", DONE))
    store.close()
    with open(store.path, "a") as log:
        log.write('{"id": "b", "state": "int')  # the crash came mid-write
    second = JournalStore(tmp_path)
    assert [e.conn_id for e in second.entries()] == ["a"]
    second.write(entry("c"))
    second.close()
    assert sorted(e.conn_id for e in JournalStore(tmp_path).entries()) == ["a", "c"]


def test_the_log_is_compacted_as_it_grows(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for i in range(3000):
        store.write(entry(f"c{i}"))
        store.delete(f"c{i}")
    store.write(entry("kept", DONE))
    lines = store.path.read_text().splitlines()
    assert len(lines) < 1100  # 6,001 changes, one live entry
    store.close()
    assert [e.conn_id for e in JournalStore(tmp_path).entries()] == ["kept"]


def test_readers_get_copies(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    store.write(entry("a", netns=["/x"]))
    got = store.read("a")
    assert got is not None
    got.notes["netns"].append("/y")
    got.request.connection.id = "changed"
    again = store.read("a")
    assert again is not None and again.notes == {"netns": ["/x"]} and again.request.connection.id == "a"
    assert store.read("missing") is None


def test_the_write_that_compacts_the_log_is_kept(tmp_path: Path) -> None:
    """The append that crosses the compaction threshold rewrites the log from memory: the entry
    it wrote must be in memory first, or the rewritten log holds its state before (a connection
    done, read back after a restart as an interrupted intent, and undone)."""
    store = JournalStore(tmp_path)
    for i in range(1100):
        state = DONE if i % 2 else INTENT
        store.write(entry("c1", state, netns=[f"/run/netns/{i}"]))
        on_disk = read_log(tmp_path / "connections.log")["c1"]
        assert (on_disk.state, on_disk.notes["netns"]) == (state, [f"/run/netns/{i}"]), f"write {i}"
