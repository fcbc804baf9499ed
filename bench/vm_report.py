"""Merge what vagrant/e2e.sh measured inside the VMs into the benchmark report.

    python -m bench.vm_report RESULTS.json [--out bench/results]

scripts/vm-test calls it after e2e.sh: the report's `vm` part is replaced, the rest
kept. Under software emulation (TCG) the absolute figures say nothing about real
machines; the ratio against a link built by hand between the same VMs in the same run
is the figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.report import write_report
from bench.suite import RESULTS


def merge(results: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The report with its `vm` part replaced by RESULTS (e2e.sh's JSON)."""
    return {**report, "vm": results}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="the JSON e2e.sh wrote (NSM_VM_RESULTS)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the report (default: bench/results)")
    args = p.parse_args(argv)
    report_path = args.out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    data = merge(json.loads(args.results.read_text()), report)
    args.out.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(data, indent=1))
    write_report(data, args.out)
    vm = data["vm"]
    print(f"vm: mesh {vm['mesh_mbps']:.1f} Mbit/s, by hand {vm['hand_mbps']:.1f} Mbit/s, ratio {vm['ratio']:.2f}")


if __name__ == "__main__":
    main()
