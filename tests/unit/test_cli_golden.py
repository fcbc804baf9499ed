"""Every program keeps its flags, environment names and defaults (tests/golden/cli.json).

Operators' manifests and scripts name these; a change to any of them must be deliberate:
`python -m tests.unit.test_cli_golden` writes the table anew, and the diff shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nsm_agent import settings as agent_settings
from nsm_client.cli import main as nsmctl
from nsm_common.urls import parse_address
from nsm_k8s import webhook
from nsm_registry import settings as registry_settings

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "cli.json"
BIN = Path(sys.executable).parent
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "nsm-agent": agent_settings.build_parser,
    "nsm-registry": registry_settings.build_parser,
    "nsm-webhook": webhook.build_parser,
    "nsmctl": nsmctl.build_parser,
}
ENV = re.compile(r"\bNSM_[A-Z_]+\b")


def _parsers(name: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _parsers(f"{name} {sub}", subparser)


def _default(value: object) -> object:
    return "<hostname>" if value == socket.gethostname() else value


def table() -> list[dict[str, object]]:
    """Each program's (and nsmctl subcommand's) options as its parser holds them, in a clean environment."""
    rows: list[dict[str, object]] = []
    for program, build in PARSERS.items():
        for command, parser in _parsers(program, build()):
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                    continue
                rows.append(
                    {
                        "command": command,
                        "option": ",".join(action.option_strings) or action.dest,
                        "env": sorted(set(ENV.findall(action.help or ""))),
                        "default": _default(action.default),
                        "choices": list(action.choices) if action.choices else None,
                        "required": action.required,
                    }
                )
            for env in sorted(set(ENV.findall(parser.description or ""))):  # names read without a flag
                rows.append({"command": command, "option": None, "env": [env], "default": None})
    return rows


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NSM_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_every_flag_environment_name_and_default_is_as_committed() -> None:
    assert table() == json.loads(GOLDEN.read_text())


def _help_options(argv: list[str]) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSM_")}
    out = subprocess.run([*argv, "--help"], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", out.split("options:", 1)[1]))


def test_each_console_script_answers_help_with_exactly_those_flags() -> None:
    golden = json.loads(GOLDEN.read_text())
    commands = sorted({str(row["command"]) for row in golden})
    for command in commands:
        program, *sub = command.split()
        wanted = {
            o for row in golden if row["command"] == command and row["option"] for o in str(row["option"]).split(",")
        }
        wanted = {o for o in wanted if o.startswith("-")} | {"-h", "--help"}
        got = _help_options([str(BIN / program), *sub])
        assert wanted <= got, f"{command} --help lacks {sorted(wanted - got)}"
        extra = {o for o in got - wanted if not any(o in str(r["choices"] or "") for r in golden)}
        assert not extra, f"{command} --help names flags not in the table: {sorted(extra)}"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("env", "value", "field", "expected"),
    [
        ("NSM_NAME", "node-7", "name", "node-7"),
        ("NSM_REGISTRY_URL", "tcp://192.0.2.9:5002", "registry", parse_address("tcp://192.0.2.9:5002")),
        ("NSM_LISTEN_ON", "unix:///tmp/a.sock,tcp://0.0.0.0:5001", "listen",
         [parse_address("unix:///tmp/a.sock"), parse_address("tcp://0.0.0.0:5001")]),
        ("NSM_STATE_DIR", "/tmp/nsm-state", "state_dir", Path("/tmp/nsm-state")),
        ("NSM_TUNNEL_IP", "192.0.2.1", "tunnel_ip", "192.0.2.1"),
        ("NSM_REMOTE_MECHANISMS", "VXLAN", "remote_mechanisms", ["VXLAN"]),
        ("NSM_VXLAN_PORT", "4790", "vxlan_port", 4790),
        ("NSM_WIREGUARD_PORT", "51821", "wireguard_port", 51821),
        ("NSM_WIREGUARD_GO", "/opt/wg-go", "wireguard_go", "/opt/wg-go"),
        ("NSM_REQUEST_TIMEOUT", "7.5", "request_timeout", 7.5),
        ("NSM_MAX_TOKEN_LIFETIME", "900", "max_lifetime", 900.0),
        ("NSM_TOKEN_LIFETIME", "300", "default_lifetime", 300.0),
        ("NSM_LOG_LEVEL", "debug", "log_level", "debug"),
    ],
)  # fmt: skip
def test_the_agent_reads_each_environment_name(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(agent_settings.parse_settings([]), field) == expected


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("env", "value", "field", "expected"),
    [
        ("NSM_LISTEN_ON", "tcp://127.0.0.1:6002", "listen", [parse_address("tcp://127.0.0.1:6002")]),
        ("NSM_STORE", "etcd://10.0.0.1:2379", "store", "etcd://10.0.0.1:2379"),
        ("NSM_MAX_EXPIRATION", "30", "max_expiration", 30.0),
        ("NSM_LOG_LEVEL", "debug", "log_level", "debug"),
    ],
)
def test_the_registry_reads_each_environment_name(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(registry_settings.parse_settings([]), field) == expected


@pytest.mark.usefixtures("clean_env")
def test_the_webhook_and_nsmctl_read_their_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for env, flag, value in (
        ("NSM_LISTEN_ON", "listen", "tcp://127.0.0.1:9443"),
        ("NSM_TLS_CERT", "tls_cert", "/etc/tls/crt"),
        ("NSM_TLS_KEY", "tls_key", "/etc/tls/key"),
        ("NSM_CLIENT_IMAGE", "image", "registry.example/nsm:1"),
    ):
        monkeypatch.setenv(env, value)
        assert getattr(webhook.build_parser().parse_args([]), flag) == value
    monkeypatch.setenv("NSM_CONNECT_TO", "tcp://192.0.2.5:5001")
    args = nsmctl.build_parser().parse_args(["get", "services"])
    assert nsmctl.agent_address(args) == parse_address("tcp://192.0.2.5:5001")


if __name__ == "__main__":  # write the table anew, after a deliberate change
    for name in [n for n in os.environ if n.startswith("NSM_")]:
        del os.environ[name]
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text("[\n" + ",\n".join(json.dumps(row) for row in table()) + "\n]\n")  # a row a line
    print(f"wrote {GOLDEN}")
