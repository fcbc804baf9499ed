"""The spec's endpoint selection rules, without root or network."""

from nsm_agent.decisions.selection import RoundRobin, candidates, fill_template
from nsm_api.registry_pb2 import (
    Destination,
    Match,
    Metadata,
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceLabels,
)


def ep(name: str, service: str = "svc", **labels: str) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name=name,
        network_service_names=[service],
        network_service_labels={service: NetworkServiceLabels(labels=labels)},
    )


EPS = [ep("a", color="red", zone="z1"), ep("b", color="blue", zone="z1"), ep("c", color="red", zone="z2")]


def names(found: list[NetworkServiceEndpoint]) -> list[str]:
    return [e.name for e in found]


def test_no_matches_selects_every_endpoint_of_the_service() -> None:
    other = ep("x", service="other")
    assert names(candidates(NetworkService(name="svc"), [*EPS, other], {})) == ["a", "b", "c"]


def test_first_applicable_match_wins_and_routes_are_alternatives() -> None:
    svc = NetworkService(
        name="svc",
        matches=[
            Match(
                source_selector={"app": "fe"},
                routes=[
                    Destination(destination_selector={"color": "blue"}),
                    Destination(destination_selector={"zone": "z2"}),
                ],
            ),
            Match(routes=[Destination(destination_selector={"color": "red"})]),
        ],
    )
    assert names(candidates(svc, EPS, {"app": "fe"})) == ["b", "c"]
    assert names(candidates(svc, EPS, {"app": "other"})) == ["a", "c"]


def test_empty_source_selector_always_applies_and_no_applicable_match_gives_nothing() -> None:
    only_fe = NetworkService(name="svc", matches=[Match(source_selector={"app": "fe"}, routes=[Destination()])])
    assert names(candidates(only_fe, EPS, {})) == []
    anyone = NetworkService(name="svc", matches=[Match(routes=[Destination(destination_selector={"zone": "z1"})])])
    assert names(candidates(anyone, EPS, {})) == ["a", "b"]


def test_template_is_filled_from_request_labels_and_missing_key_matches_nothing() -> None:
    svc = NetworkService(name="svc", matches=[Match(routes=[Destination(destination_selector={"zone": "{{.want}}"})])])
    assert names(candidates(svc, EPS, {"want": "z2"})) == ["c"]
    assert names(candidates(svc, EPS, {})) == []
    assert fill_template("{{ .a }}-{{.b}}", {"a": "1", "b": "2"}) == "1-2"
    assert fill_template("{{.a}}", {}) is None


def test_fallthrough_moves_on_only_when_a_match_yields_nothing() -> None:
    none_then_red = NetworkService(
        name="svc",
        matches=[
            Match(routes=[Destination(destination_selector={"color": "green"})], fallthrough=True),
            Match(routes=[Destination(destination_selector={"color": "red"})]),
        ],
    )
    assert names(candidates(none_then_red, EPS, {})) == ["a", "c"]
    stop = NetworkService(
        name="svc",
        matches=[
            Match(routes=[Destination(destination_selector={"color": "green"})], fallthrough=False),
            Match(routes=[Destination(destination_selector={"color": "red"})]),
        ],
    )
    assert names(candidates(stop, EPS, {})) == []


def test_match_with_metadata_and_no_routes_selects_every_endpoint() -> None:
    svc = NetworkService(name="svc", matches=[Match(metadata=Metadata(labels={"k": "v"}))])
    assert names(candidates(svc, EPS, {})) == ["a", "b", "c"]


def test_round_robin_rotates_per_service() -> None:
    rr = RoundRobin()
    firsts = [rr.order("svc", EPS)[0].name for _ in range(4)]
    assert firsts == ["a", "b", "c", "a"]
    assert rr.order("other", EPS)[0].name == "a"
    assert rr.order("svc", []) == []
