"""The benchmark suite still runs and reports (a small part of it; the figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed.bed import REPO


def test_quick_local_part_writes_a_report(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--only", "local", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    local = data["local"]
    assert local["n"] == 50 and len(local["raw"]["mesh"]) == 50 and len(local["raw"]["ptp"]) == 50
    assert local["mesh"]["p50_ms"] > 0 and local["bare"]["p50_ms"] > 0
    table = (tmp_path / "report.md").read_text()
    assert "| 1 local set-up p50 (N=50) |" in table
    assert (tmp_path / "local_setup.png").stat().st_size > 1000


def test_unknown_part_is_named() -> None:
    res = subprocess.run([sys.executable, "-m", "bench.suite", "--only", "locl"], cwd=REPO, capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 2
    assert "unknown part(s) locl" in res.stderr
