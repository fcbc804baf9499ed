"""The settings layer: command line over environment over the model's default; lists; errors
that name the flag and the variable."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from nsm_common.settings import Option, build_parser, parse


class Demo(BaseModel):
    port: Annotated[int, Option("NSM_T_PORT", "a port", metavar="N")] = Field(default=7, ge=1)
    names: Annotated[list[str], Option("NSM_T_NAMES", "names", repeat=True)] = Field(default_factory=lambda: ["x"])
    kinds: Annotated[list[str], Option("NSM_T_KINDS", "kinds", comma=True)] = Field(default_factory=lambda: ["a", "b"])
    flag_named: Annotated[str, Option("NSM_T_OTHER", "named otherwise", flag="--other")] = ""


def settings(argv: list[str]) -> Demo:
    return parse(Demo, build_parser(Demo, "demo", "a demo"), argv)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NSM_T_PORT", "NSM_T_NAMES", "NSM_T_KINDS", "NSM_T_OTHER"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_come_from_the_model() -> None:
    assert settings([]) == Demo(port=7, names=["x"], kinds=["a", "b"], flag_named="")


def test_the_environment_overrides_the_default_and_the_command_line_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSM_T_PORT", "9")
    monkeypatch.setenv("NSM_T_NAMES", "p, q")
    monkeypatch.setenv("NSM_T_KINDS", "c")
    monkeypatch.setenv("NSM_T_OTHER", "env")
    assert settings([]) == Demo(port=9, names=["p", "q"], kinds=["c"], flag_named="env")
    got = settings(["--port", "11", "--names", "r", "--names", "s,t", "--kinds", "d,e", "--other", "cli"])
    assert got == Demo(port=11, names=["r", "s", "t"], kinds=["d", "e"], flag_named="cli")


def test_help_names_each_variable_and_default() -> None:
    text = build_parser(Demo, "demo", "a demo").format_help()
    for piece in ("--port N", "env NSM_T_PORT; default 7", "env NSM_T_KINDS; default a,b", "--other", "repeatable"):
        assert piece in text


def test_a_bad_value_exits_naming_the_flag_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings(["--port", "0"])
    assert exited.value.code == 2
    assert "--port (env NSM_T_PORT): Input should be greater than or equal to 1" in capsys.readouterr().err
    monkeypatch.setenv("NSM_T_PORT", "many")
    with pytest.raises(SystemExit):
        settings([])
    assert "--port: invalid int value: 'many'" in capsys.readouterr().err
