"""The webhook's AdmissionReview handler, fed any JSON and reviews mutated from a real one:
an answer or BadReview (HTTP 400), never another exception (a 500 and a broken connection)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nsm_k8s.webhook import BadReview, WebhookConfig, review
from tests.helpers.fuzz_strategies import TEXT, mutated

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20,
)
KEYS = ["apiVersion", "kind", "request", "uid", "object", "namespace", "metadata", "annotations", "spec",
        "containers", "initContainers", "volumes", "volumeMounts", "mountPath", "name"]  # fmt: skip


def real_review() -> dict[str, Any]:
    pod = {
        "metadata": {"name": "p", "annotations": {"networkservicemesh.io": "kernel://web/nsm-1?app=a"}},
        "spec": {"containers": [{"name": "app", "volumeMounts": [{"name": "v", "mountPath": "/x"}]}],
                 "volumes": [{"name": "v", "emptyDir": {}}]},
    }  # fmt: skip
    request = {"uid": "u1", "kind": {"kind": "Pod"}, "namespace": "default", "object": pod}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def answer(body: bytes) -> None:
    try:
        out = review(body, WebhookConfig())
    except BadReview as exc:
        assert str(exc)
    else:
        assert out["kind"] == "AdmissionReview" and isinstance(out["response"]["allowed"], bool)


@given(JSON)
def test_any_json(doc: Any) -> None:
    answer(json.dumps(doc).encode())


def places(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in DOC a value sits (a key of an object, an index of a list)."""
    found: list[tuple[Any, ...]] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        found.append((*at, key))
        found.extend(places(value, (*at, key)))
    return found


PLACES = places(real_review())


@given(st.sampled_from(PLACES), JSON)
def test_a_real_review_with_one_value_replaced(place: tuple[Any, ...], value: Any) -> None:
    doc = real_review()
    target: Any = doc
    for step in place[:-1]:
        target = target[step]
    target[place[-1]] = value
    answer(json.dumps(doc).encode())


@given(st.sampled_from(PLACES), st.sampled_from(KEYS), JSON)
def test_a_real_review_with_a_key_added(place: tuple[Any, ...], key: str, value: Any) -> None:
    doc = real_review()
    target: Any = doc
    for step in place:
        target = target[step]
    if isinstance(target, dict):
        target[key] = value
    answer(json.dumps(doc).encode())


@given(mutated(json.dumps(real_review()).encode()))
def test_mutated_bytes(body: bytes) -> None:
    answer(body)
