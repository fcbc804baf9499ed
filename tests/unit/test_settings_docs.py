"""The README's tables of flags are the settings models themselves, written out.

Each program states a setting once, in its model (flag, environment name, meaning,
default); `python -m tests.unit.test_settings_docs` writes the tables into the README
after a change, and this test fails while they differ.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from nsm_agent.settings import AgentSettings
from nsm_common.settings import flag_table, options
from nsm_k8s.webhook import WebhookSettings
from nsm_registry.settings import RegistrySettings

README = Path(__file__).resolve().parents[2] / "README.md"
MODELS: dict[str, type[BaseModel]] = {
    "nsm-agent": AgentSettings,
    "nsm-registry": RegistrySettings,
    "nsm-webhook": WebhookSettings,
}
SECTION = re.compile(r"(<!-- flags: (?P<program>[\w-]+)[^>]*-->\n)(?P<table>.*?)(<!-- end flags -->)", re.S)


def written(text: str) -> str:
    return SECTION.sub(lambda m: m.group(1) + flag_table(MODELS[m.group("program")]) + m.group(4), text)


def test_every_program_has_its_table_in_the_readme() -> None:
    found = {m.group("program") for m in SECTION.finditer(README.read_text())}
    assert found == set(MODELS)


def test_the_readme_tables_are_the_models() -> None:
    text = README.read_text()
    assert text == written(text), "README flag tables are stale: python -m tests.unit.test_settings_docs"


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_every_setting_names_its_environment_variable_and_says_what_it_means(model: type[BaseModel]) -> None:
    for name, _, option in options(model):
        assert re.fullmatch(r"NSM_[A-Z_]+", option.env), name
        assert option.help, name


if __name__ == "__main__":
    README.write_text(written(README.read_text()))
    print(f"wrote the flag tables into {README}")
