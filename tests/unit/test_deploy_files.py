"""The Vagrant test bed and the shell scripts, checked offline.

What is not covered here: booting the VMs (no hypervisor on this machine). The
Vagrantfile is validated without a provider, the scripts by shellcheck; on the
VMs, vagrant/check-links.sh and the WireGuard kernel-module test run for real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [
    "vagrant/provision.sh", "vagrant/check-links.sh", "scripts/setup", "scripts/test", "scripts/demo",
    "scripts/lint", "scripts/gen-proto", ".ci/run",
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
