"""Seeded fault injection (testbed/faults.py) with a fixed seed, bounded in time.

A longer run with other seeds: `python -m testbed.faults --seed N --ops 1000`.
"""

from __future__ import annotations

import random
import time

from testbed.bed import Testbed
from testbed.faults import KINDS, run_faults


def test_schedule_replays_from_its_seed() -> None:
    def schedule(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [rng.random() for _ in range(50)]

    assert schedule(7) == schedule(7) and schedule(7) != schedule(8)


def test_faults_seed_1(bed: Testbed) -> None:
    started = time.monotonic()
    log, problems = run_faults(bed, seed=1, ops=200)
    assert len([line for line in log if line[:4].strip().isdigit()]) == 200
    kinds = {line.split()[1] for line in log if line[:4].strip().isdigit()}
    assert set(KINDS) <= kinds, f"seed 1 no longer draws {set(KINDS) - kinds}"
    assert problems == [], "\n".join(problems + log)
    assert time.monotonic() - started < 300
