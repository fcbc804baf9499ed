"""The policy engine and set in-process (no root): compile or refuse with the engine's words,
a false or undefined rule denies, an engine failure denies, reload keeps the old on a broken
file, decisions are cached only while the same policies and tokens hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nsm_common.policy import policies as policy_set
from nsm_common.policy.engine import PolicyError, compile_policy
from nsm_common.policy.policies import DEFAULTS, Policies, default_group, default_policy

ALLOW_WEB = 'package site\n\nvalid { input.network_service == "web" }\n'
ALLOW_DB = 'package site\n\nvalid { input.network_service == "db" }\n'


def test_a_policy_compiles_or_is_refused_with_the_engines_words() -> None:
    ok = compile_policy("p.rego", ALLOW_WEB)
    assert ok.rule == "data.site.valid"
    assert ok.allows({"network_service": "web"}) is True
    assert ok.allows({"network_service": "db"}) is False  # undefined: no default, denied
    with pytest.raises(PolicyError, match=r"policy bad\.rego does not compile: .*bad\.rego:3"):
        compile_policy("bad.rego", "package x\n\nvalid { input.a == \n")
    with pytest.raises(PolicyError, match="no `package` line"):
        compile_policy("nopkg.rego", "valid = true\n")


def test_every_default_policy_compiles_alone_and_with_the_others() -> None:
    for point, names in DEFAULTS.items():
        for name in names:
            assert default_policy(name).package == "nsm"
        group = default_group(names)
        assert (group is None) == (not names), point


def test_a_site_file_reloads_and_a_broken_one_keeps_the_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_set, "RECHECK", 3600.0)  # reloads by hand here
    site = tmp_path / "site.rego"
    site.write_text(ALLOW_WEB)
    chosen = Policies([tmp_path], tokens=False)
    doc = {"network_service": "db", "path_segments": []}
    denial = chosen.check("server", doc)
    assert denial is not None and denial.policy == str(site) and "denies this" in denial.message
    site.write_text(ALLOW_DB)
    os.utime(site, ns=(1, 1))  # a change the signature sees even within one clock tick
    assert chosen.reload() is True
    assert chosen.check("server", doc) is None  # the cache is for the old policies only
    site.write_text("package site\n\nvalid { \n")
    os.utime(site, ns=(2, 2))
    assert chosen.reload() is False  # refused
    assert chosen.check("server", doc) is None  # the old one stands
    assert chosen.reload() is False  # and is not tried again until the file changes


def test_an_engine_failure_denies_naming_the_policy(tmp_path: Path) -> None:
    (tmp_path / "fails.rego").write_text("package site\n\nvalid := x { x := {true, false}[_] }\n")
    denial = Policies([tmp_path], tokens=False).check("server", {"path_segments": []})
    assert denial is not None and "could not be evaluated" in denial.message and denial.message.endswith("denied")


def test_a_broken_site_file_at_start_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.rego").write_text("package site\nvalid {\n")
    with pytest.raises(PolicyError, match="does not compile"):
        Policies([tmp_path / "bad.rego"])
    with pytest.raises(PolicyError, match="no such file or folder"):
        Policies([tmp_path / "missing"])


def test_site_policies_apply_where_calls_are_served_not_to_replies(tmp_path: Path) -> None:
    (tmp_path / "never.rego").write_text("package site\n\ndefault valid = false\n")
    chosen = Policies([tmp_path], tokens=False)
    assert chosen.check("server", {"path_segments": []}) is not None
    assert chosen.check("registry", {"path_segments": [], "resource_name": "a"}) is not None
    assert chosen.check("client", {"path_segments": []}) is None


def test_the_documented_example_says_which_namespaces_may_use_which_services() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "policies"
    chosen = Policies([docs / "services-by-namespace.rego"], tokens=False)

    def asks(service: str, namespace: str) -> bool:
        doc = {"operation": "networkservice.request", "network_service": service, "path_segments": [],
               "client": {"namespace": namespace}, "caller": {"local": True}}  # fmt: skip
        return chosen.check("server", doc) is None

    assert asks("web", "staging") and asks("db", "prod") and asks("unlisted", "dev")
    assert not asks("db", "staging") and not asks("web", "dev")
