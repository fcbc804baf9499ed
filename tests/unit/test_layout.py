"""The house's layout holds: the import contract catches a violation, and tests share helpers
only through tests/helpers/."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    *("nsm_api", "nsm_common", "nsm_agent", "nsm_registry", "nsm_endpoint", "nsm_client", "nsm_k8s"),
    *("testbed", "bench"),
]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def copy_of_the_house(tmp_path: Path) -> Path:
    for package in PACKAGES:
        skip = shutil.ignore_patterns("__pycache__", "*.png", "*.json")
        shutil.copytree(ROOT / package, tmp_path / package, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(house: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(house)}  # the copy, not the installed tree
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=house, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_house_keeps_its_contract(tmp_path: Path) -> None:
    result = lint_imports(copy_of_the_house(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # The shared package reaching up into a program.
        ("nsm_common/netns.py", "from nsm_agent.settings import AgentSettings",
         "nsm_common is not allowed to import nsm_agent"),
        # One program into another's internals.
        ("nsm_agent/main.py", "from nsm_registry.memory_store import MemoryStore",
         "nsm_agent is not allowed to import nsm_registry"),
        # nsmctl past the endpoint runtime's public package.
        ("nsm_client/cli/inputs.py", "from nsm_endpoint.ipam import PointToPointPool",
         "protected package nsm_endpoint.ipam"),
    ],
)  # fmt: skip
def test_a_deliberate_violation_breaks_the_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    house = copy_of_the_house(tmp_path)
    with open(house / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    result = lint_imports(house)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout


def test_no_test_module_imports_another_test_module() -> None:
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] == "tests" and not name.startswith("tests.helpers"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders
