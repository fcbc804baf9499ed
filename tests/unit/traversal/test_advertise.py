"""Relays in the registry (no root): the record a relay keeps there and what agents read from
it; the finder answers from the watched copy, and asks the registry only while there is none."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from nsm_agent.decisions.traversal import RelayRef
from nsm_agent.traversal.advertise import RELAY_SERVICE, RelayFinder, registered_by_agent, relay_record, relays_of
from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceLabels
from nsm_common.identity.spiffe_id import Roles

KEY = base64.b64encode(bytes(range(32))).decode()


def test_a_relay_record_reads_back_and_bad_ones_are_skipped() -> None:
    a = relay_record("node-b", "tcp://203.0.113.19:5001", RelayRef(("203.0.113.19", 51800), KEY))
    b = relay_record("node-a", "tcp://[2001:db8::9]:5001", RelayRef(("2001:db8::9", 51800), KEY))
    assert a.name == "node-b-relay" and list(a.network_service_names) == [RELAY_SERVICE]
    assert a.expiration_time.seconds > 0
    bad = NetworkServiceEndpoint(
        name="x-relay", network_service_names=[RELAY_SERVICE],
        network_service_labels={RELAY_SERVICE: NetworkServiceLabels(labels={"address": "nowhere", "key": KEY})},
    )  # fmt: skip
    unlabelled = NetworkServiceEndpoint(name="y-relay", network_service_names=[RELAY_SERVICE])
    # Sorted by name: every agent of a domain offers the same first relay.
    assert relays_of([a, bad, b, unlabelled]) == [
        RelayRef(("2001:db8::9", 51800), KEY),
        RelayRef(("203.0.113.19", 51800), KEY),
    ]


@dataclass
class Cache:
    endpoints_ready: bool
    held: list[NetworkServiceEndpoint]

    def find_endpoints(self, query: NetworkServiceEndpoint) -> list[NetworkServiceEndpoint]:
        return [e for e in self.held if set(query.network_service_names) <= set(e.network_service_names)]


@dataclass
class Registry:
    cache: Cache | None
    asked: list[NetworkServiceEndpoint] = field(default_factory=list)
    records: list[NetworkServiceEndpoint] = field(default_factory=list)

    async def find_endpoints(
        self, query: NetworkServiceEndpoint, attempts: int | None = None
    ) -> list[NetworkServiceEndpoint]:
        self.asked.append(query)
        return self.records


async def test_the_finder_reads_the_watched_copy_and_asks_only_without_one() -> None:
    relay = relay_record("pub", "tcp://203.0.113.19:5001", RelayRef(("203.0.113.19", 51800), KEY))
    watched = Registry(Cache(True, [relay]))
    finder = RelayFinder(watched)  # type: ignore[arg-type]
    assert await finder() == relays_of([relay]) and watched.asked == []
    now = [0.0]
    unwatched = Registry(Cache(False, []), records=[relay])
    finder = RelayFinder(unwatched, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await finder() == relays_of([relay]) and len(unwatched.asked) == 1
    now[0] = RelayFinder.ASK_EVERY - 1
    assert await finder() == relays_of([relay]) and len(unwatched.asked) == 1  # kept, not asked again
    now[0] = RelayFinder.ASK_EVERY + 1
    await finder()
    assert len(unwatched.asked) == 2


def test_only_an_agent_s_relay_record_is_trusted() -> None:
    """With identities, a relay record counts only if an agent registered it: a workload's
    would choose the mapping every node offers, and where every tunnel goes."""
    roles = Roles("example.org")
    trusted = registered_by_agent(lambda: roles)

    def owned(name: str, owner: str | None) -> NetworkServiceEndpoint:
        record = relay_record(name, "tcp://203.0.113.19:5001", RelayRef(("203.0.113.19", 51800), KEY))
        if owner is not None:
            record.path_ids.append(owner)
        return record

    agent = owned("node-1", "spiffe://example.org/node/node-1")
    workload = owned("0-pod", "spiffe://example.org/ns/default/sa/web")  # sorts first: would be offered
    other_domain = owned("1-far", "spiffe://elsewhere.org/node/node-9")
    garbled = owned("2-bad", "not a spiffe id")
    ownerless = owned("3-none", None)
    assert relays_of([workload, other_domain, garbled, ownerless, agent], trusted) == relays_of([agent])
    assert [trusted(r) for r in (agent, workload, other_domain, garbled, ownerless)] == [True] + [False] * 4
    # Without identities (--insecure) nobody has an owner: every record is taken, as every caller is.
    assert registered_by_agent(lambda: None)(ownerless)
