"""The coverage-guided run of the parsers (tests/fuzz/atheris_parsers.py) with a fixed seed
and budget, as CI runs it; longer runs are in that file's docstring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_parsers_survive_a_coverage_guided_run() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.atheris_parsers", "-runs=300000", "-seed=1", "-max_total_time=120"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Done 300000 runs" in res.stderr or "max_total_time" in res.stderr, res.stderr[-2000:]
