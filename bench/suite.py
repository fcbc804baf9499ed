"""The benchmark suite: every figure a ratio to a baseline measured in the same run.

    ./scripts/bench [--quick] [--only PART,...]      (python -m bench.suite)

Parts: local (targets 1, 7 at small N), remote (2), scale (3, 7), throughput (4),
heal (5), restart (6), tls (mutual TLS on against off). Writes bench/results/report.md, report.json and PNG plots;
`--only` runs some parts and merges them into the report already there.
Everything runs in namespaces this run creates and removes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    heal,
    interdomain,
    kernel_events,
    local_setup,
    nat,
    remote_restart,
    remote_setup,
    restart,
    scale,
    throughput,
    tls,
    tokens,
)
from bench.report import write_report
from bench.stats import summary
from nsm_common.daemon import raise_open_file_limit
from testbed.bed import Testbed

RESULTS = Path(__file__).resolve().parent / "results"


def part_local(bed: Testbed, quick: bool) -> dict[str, Any]:
    n = 50 if quick else 200
    mesh_setup, mesh_close = local_setup.mesh(bed, n)
    ptp = local_setup.cni_ptp(bed, n)
    bare_setup, bare_close = local_setup.bare(bed, n)
    return {
        "n": n,
        "mesh": summary(mesh_setup),
        "bare": summary(bare_setup),
        "ptp": summary(ptp),
        "mesh_close": summary(mesh_close),
        "bare_close": summary(bare_close),
        "raw": {"mesh": mesh_setup, "bare": bare_setup, "ptp": ptp},
    }


def part_remote(bed: Testbed, quick: bool) -> dict[str, Any]:
    n = 30 if quick else 200
    got = remote_setup.run_all(bed, n)
    out: dict[str, Any] = {"n": n}
    for kind, d in got.items():
        assert isinstance(d, dict)
        out[kind] = {
            "mesh": summary(d["mesh_setup"]),
            "hand": summary(d["hand_setup"]),
            "mesh_first_ms": d["mesh_first_s"] * 1000,
            "mesh_close": summary(d["mesh_close"]),
            "hand_close": summary(d["hand_close"]),
        }
        if "hand_first_s" in d:
            out[kind]["hand_first_ms"] = d["hand_first_s"] * 1000
    return out


def part_scale(bed: Testbed, quick: bool) -> dict[str, Any]:
    return scale.run_all(bed, 200 if quick else 1000)


def part_throughput(bed: Testbed, quick: bool) -> dict[str, Any]:
    seconds = 3 if quick else 10
    return {"seconds": seconds, **throughput.run_all(bed, seconds)}


def part_heal(bed: Testbed, quick: bool) -> dict[str, Any]:
    took = heal.heal_times(bed, 3 if quick else 10)
    return {"rounds": len(took), **summary(took), "raw": took}


def part_restart(bed: Testbed, quick: bool) -> dict[str, Any]:
    return restart.restart(bed, 200 if quick else 1000)


def part_remote_restart(bed: Testbed, quick: bool) -> dict[str, Any]:
    rounds = 1 if quick else 3
    out: dict[str, Any] = {"vxlan": {"lost": remote_restart.pings_lost(bed, "VXLAN", rounds)}}
    with Testbed() as second:  # a cluster of its own: node names are per bed
        out["wireguard"] = {"lost": remote_restart.pings_lost(second, "WIREGUARD", rounds)}
    for kind in out.values():
        kind["pings"] = remote_restart.PINGS
    return out


def part_events(bed: Testbed, quick: bool) -> dict[str, Any]:
    got = kernel_events.detection(bed, 5 if quick else 20)
    return {"rounds": len(got["monitor"]), **{k: summary(v) for k, v in got.items()}, "raw": got}


def part_tls(bed: Testbed, quick: bool) -> dict[str, Any]:
    n = 30 if quick else 100
    got = tls.run_all(bed, n)
    return {"n": n, **{k: summary(v) for k, v in got.items()}}


def part_tokens(bed: Testbed, quick: bool) -> dict[str, Any]:
    n = 300 if quick else 2000
    got = tokens.run_all(n)
    return {"n": n, "on": summary(got["on"]), "off": summary(got["off"]), "profile": got["profile"]}  # type: ignore[arg-type]


def part_interdomain(bed: Testbed, quick: bool) -> dict[str, Any]:
    n = 20 if quick else 100
    got = interdomain.setup(bed, n)
    with Testbed(prefix=bed.prefix + "t") as sub:
        speed = interdomain.throughput(sub, 3 if quick else 10)
    return {
        "n": n,
        "mesh": summary(got["mesh_setup"]),  # type: ignore[arg-type]
        "hand": summary(got["hand_setup"]),  # type: ignore[arg-type]
        "mesh_first_ms": float(got["mesh_first_s"]) * 1000,  # type: ignore[arg-type]
        "hand_first_ms": float(got["hand_first_s"]) * 1000,  # type: ignore[arg-type]
        "mesh_close": summary(got["mesh_close"]),  # type: ignore[arg-type]
        "hand_close": summary(got["hand_close"]),  # type: ignore[arg-type]
        "throughput": speed,
    }


def part_nat(bed: Testbed, quick: bool) -> dict[str, Any]:
    got = nat.run_all(bed, quick)
    first: dict[str, list[float]] = got["first_ping"]  # type: ignore[assignment]
    return {**got, "mesh_first": summary(first["mesh"]), "hand_first": summary(first["hand"])}


PARTS: dict[str, Callable[[Testbed, bool], dict[str, Any]]] = {
    "local": part_local,
    "remote": part_remote,
    "scale": part_scale,
    "throughput": part_throughput,
    "heal": part_heal,
    "restart": part_restart,
    "remote_restart": part_remote_restart,
    "events": part_events,
    "tls": part_tls,
    "tokens": part_tokens,
    "interdomain": part_interdomain,
    "nat": part_nat,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller N and shorter iperf3 runs (under five minutes)")
    p.add_argument("--only", default="", help=f"comma-separated parts of: {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the report (default: bench/results)")
    args = p.parse_args(argv)
    only = [x for x in args.only.split(",") if x]
    unknown = [x for x in only if x not in PARTS]
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    raise_open_file_limit()  # the driver holds a socket per pod for the baselines
    args.out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    report = args.out / "report.json"
    if only and report.exists():
        data = json.loads(report.read_text())
    data["mode"] = "quick" if args.quick else "full"
    before = _traces()
    for name in only or list(PARTS):
        print(f"== {name}", flush=True)
        with Testbed() as bed:
            data[name] = {"mode": data["mode"], **PARTS[name](bed, args.quick)}
    report.write_text(json.dumps(data, indent=1))
    print(write_report(data, args.out))
    left = _traces() - before
    if left:
        sys.exit(f"left behind: {', '.join(sorted(left))}")


def _traces() -> set[str]:
    """What a run could leave on the machine: namespaces, host links, wireguard-go sockets."""
    names = {f"netns {n}" for n in os.listdir("/var/run/netns")} if os.path.isdir("/var/run/netns") else set()
    names |= {f"link {n}" for n in os.listdir("/sys/class/net")}
    if os.path.isdir("/var/run/wireguard"):
        names |= {f"socket {n}" for n in os.listdir("/var/run/wireguard")}
    return names


if __name__ == "__main__":
    main()
