"""The Vagrant test bed and the shell scripts, checked offline.

The VMs themselves boot in `./scripts/vm-test` (CI runs it after these tests): there
vagrant/e2e.sh and the WireGuard kernel-module test run for real. Here: the
Vagrantfile validates, every script passes shellcheck, and what the units and e2e.sh
call exists.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [
    "vagrant/provision.sh", "vagrant/e2e.sh", "vagrant/build-box", "vagrant/probe-driver", "scripts/vm-test",
    "scripts/setup", "scripts/test", "scripts/demo",
    "scripts/lint", "scripts/gen-proto", "scripts/bench", ".ci/run",
]  # fmt: skip


def test_vagrantfile_validates() -> None:
    res = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"], cwd=ROOT / "vagrant", capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout


def test_shell_scripts_pass_shellcheck() -> None:
    res = subprocess.run(["shellcheck", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_units_and_e2e_call_commands_that_exist() -> None:
    import re
    import shutil

    provision = (ROOT / "vagrant" / "provision.sh").read_text()
    e2e = (ROOT / "vagrant" / "e2e.sh").read_text()
    project = set(re.findall(r"\$bin/(nsm[a-z-]*)", provision + e2e)) | set(re.findall(r'"\$bin/(nsm[a-z-]*)"', e2e))
    assert {"nsm-registry", "nsm-agent", "nsmctl"} <= project
    venv_bin = Path(__import__("sys").executable).parent
    for command in project:
        assert (venv_bin / command).exists(), f"{command} is not installed by the project"
    for command in ("ip", "ping", "ssh", "ssh-keygen", "systemctl", "journalctl", "python3", "install"):
        if command in provision + e2e:
            assert shutil.which(command) or command in ("systemctl", "journalctl"), f"{command} missing"
    # Every nsmctl subcommand and flag used exists.
    from nsm_client.cli.main import build_parser

    for line in re.findall(r"nsmctl\"? ([a-z]+ [^\n]*)", e2e):
        sub = line.split()[0]
        assert sub in {"connect", "endpoint", "get", "close", "pod"}, sub
    help_text = build_parser().format_help()
    assert "endpoint" in help_text and "connect" in help_text
