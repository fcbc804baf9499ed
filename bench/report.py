"""The report: one Markdown table of targets, and the plots, from the suite's JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str, str, bool | None]


def _met(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "—"}[ok]


def _local(d: dict[str, Any]) -> list[Row]:
    mesh, bare, ptp = d["mesh"]["p50_ms"], d["bare"]["p50_ms"], d["ptp"]["p50_ms"]
    return [
        (f"1 local set-up p50 (N={d['n']})", f"{mesh:.2f} ms", f"bare pyroute2 {bare:.2f} ms; CNI ptp {ptp:.2f} ms",
         f"{mesh / bare:.2f}× bare, {mesh / ptp:.2f}× ptp", "≤ 1.5× bare and < ptp", mesh <= 1.5 * bare and mesh < ptp),
        ("1 local set-up p99", f"{d['mesh']['p99_ms']:.2f} ms", f"bare {d['bare']['p99_ms']:.2f} ms; "
         f"ptp {d['ptp']['p99_ms']:.2f} ms", f"{d['mesh']['p99_ms'] / d['bare']['p99_ms']:.2f}× bare", "—", None),
    ]  # fmt: skip


def _remote(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind in ("vxlan", "wireguard"):
        if kind not in d:
            continue
        k = d[kind]
        mesh, hand = k["mesh"]["p50_ms"], k["hand"]["p50_ms"]
        rows.append((f"2 remote set-up {kind} p50 (N={d['n']})", f"{mesh:.2f} ms (p99 {k['mesh']['p99_ms']:.1f})",
                     f"by hand {hand:.2f} ms (p99 {k['hand']['p99_ms']:.1f})", f"{mesh / hand:.2f}×", "≤ 2×",
                     mesh <= 2 * hand))  # fmt: skip
    wg = d.get("wireguard", {})
    if "hand_first_ms" in wg:
        rows.append(("2 first WireGuard connection of a node pair", f"{wg['mesh_first_ms']:.0f} ms",
                     f"wireguard-go pair by hand {wg['hand_first_ms']:.0f} ms",
                     f"{wg['mesh_first_ms'] / wg['hand_first_ms']:.2f}×", "—", None))  # fmt: skip
    return rows


def _scale(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, label in (("one_node", "one node"), ("two_nodes", "two nodes, VXLAN"),
                       ("two_nodes_wireguard", "two nodes, WireGuard")):  # fmt: skip
        if key not in d:
            continue
        s = d[key]
        kib = max(s["kib_per_connection"].values())
        per_agent = ", ".join(f"{k} {v:.1f}" for k, v in s["kib_per_connection"].items())
        rows += [
            (f"3 {s['n']} connections, {label}: flatness", f"last 50 p50 {s['last50_p50_ms']:.2f} ms",
             f"first 50 p50 {s['first50_p50_ms']:.2f} ms (bare pyroute2, one node: {d['bare_flatness']:.2f}×)",
             f"{s['flatness']:.2f}×", "≤ 1.5×", s["flatness"] <= 1.5),
            (f"3 {label}: rate", f"{s['per_second']:.0f} connections/s", "—", "—", "≥ 100/s", s["per_second"] >= 100),
            (f"3 {label}: memory", f"{kib:.1f} KiB/connection ({per_agent})", "—", "—", "≤ 20 KiB",
             kib <= 20),
            (f"3 {label}: all closed, nothing left", f"{len(s['leftovers'])} left", "—", "—", "0",
             not s["leftovers"]),
        ]  # fmt: skip
    mesh, bare = d["one_node"]["close_p50_ms"], d["bare_close_p50_ms"]
    n, total, bare_total = d["one_node"]["n"], d["one_node"]["close_total_s"], d["bare_close_total_s"]
    rows.append((f"7 close, {n} connections, p50", f"{mesh:.2f} ms ({total:.1f} s in all)",
                 f"bare pyroute2 {bare:.2f} ms ({bare_total:.1f} s)", f"{mesh / bare:.2f}×", "≤ 1.5×",
                 mesh <= 1.5 * bare))  # fmt: skip
    return rows


def _throughput(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        (f"4 throughput {kind} ({d['seconds']} s)", f"{t['mesh_gbps']:.2f} Gbit/s", f"by hand {t['baseline_gbps']:.2f}"
         " Gbit/s", f"{t['ratio']:.2f}", "≥ 0.95", t["ratio"] >= 0.95)
        for kind, t in d.items() if isinstance(t, dict)
    ]  # fmt: skip
    wg = d.get("wireguard", {})
    if "same_shape_gbps" in wg:
        rows.append(("4 throughput wireguard, against its own shape", f"{wg['mesh_gbps']:.2f} Gbit/s",
                     f"VXLAN over wireguard-go by hand {wg['same_shape_gbps']:.2f} Gbit/s",
                     f"{wg['same_shape_ratio']:.2f}", "≥ 0.95", wg["same_shape_ratio"] >= 0.95))  # fmt: skip
    return rows


def _heal(d: dict[str, Any]) -> list[Row]:
    return [(f"5 heal: pod removed → ping ({d['rounds']} rounds)", f"p50 {d['p50_ms']:.0f} ms, "
             f"max {max(d['raw']) * 1000:.0f} ms", "—", "—", "p50 ≤ 1 s", d["p50_ms"] <= 1000)]  # fmt: skip


def _restart(d: dict[str, Any]) -> list[Row]:
    return [
        (f"6 kill -9 + start with {d['connections']} connections: pings",
         f"{d['pings_lost']} of {d['pings_sent']} lost", "—", "—", "0 lost", d["pings_lost"] == 0),
        ("6 restart: serving new Requests", f"after {d['serving_after_s']:.2f} s", "—", "—", "≤ 2 s",
         d["serving_after_s"] <= 2),
        (f"6 restart: {d['connections']} connections carried on", f"{d['restored_after_s']:.2f} s after start "
         f"(survey {d['survey_s'] * 1000:.0f} ms; every step holds them after {d['settled_after_s']:.2f} s)",
         f"requesting them anew {d['requested_anew_s']:.2f} s",
         f"{d['restored_after_s'] / d['requested_anew_s']:.2f}×", "≤ 1 s", d["restored_after_s"] <= 1),
    ]  # fmt: skip


def _remote_restart(d: dict[str, Any]) -> list[Row]:
    return [(f"6 kill -9 + start of the endpoint's agent, {kind}", f"{sum(t['lost'])} of {t['pings'] * len(t['lost'])}"
             f" pings lost ({len(t['lost'])} rounds at 50 ms)", "—", "—", "0 lost", sum(t["lost"]) == 0)
            for kind, t in d.items() if isinstance(t, dict)]  # fmt: skip


def _events(d: dict[str, Any]) -> list[Row]:
    mon, bare, ping = d["monitor"], d["bare"], d["ping"]
    return [
        (f"8 interface deleted → Monitor update ({d['rounds']} rounds)", f"p50 {mon['p50_ms']:.1f} ms, "
         f"max {max(d['raw']['monitor']) * 1000:.1f} ms", f"kernel event at a bare socket p50 {bare['p50_ms']:.2f} ms",
         f"+{mon['p50_ms'] - bare['p50_ms']:.1f} ms", "—", None),
        ("8 interface deleted → ping over the rebuilt wire", f"p50 {ping['p50_ms']:.0f} ms, "
         f"max {max(d['raw']['ping']) * 1000:.0f} ms", "—", "—", "p50 ≤ 1 s", ping["p50_ms"] <= 1000),
    ]  # fmt: skip


def _tls(d: dict[str, Any]) -> list[Row]:
    p50 = {k: v["p50_ms"] for k, v in d.items() if isinstance(v, dict)}
    local_on, local_off, bare = p50["local_tls_on"], p50["local_tls_off"], p50["local_bare"]
    remote_on, remote_off, hand = p50["remote_tls_on"], p50["remote_tls_off"], p50["remote_hand"]
    return [
        (f"10 local set-up, identities on: mutual TLS, path tokens, policies (N={d['n']})", f"{local_on:.2f} ms",
         f"--insecure {local_off:.2f} ms; bare pyroute2 {bare:.2f} ms",
         f"{local_on / local_off:.2f}× off, {local_on / bare:.2f}× bare", "≤ 1.5× bare", local_on <= 1.5 * bare),
        (f"10 remote VXLAN set-up, identities on (N={d['n']})", f"{remote_on:.2f} ms",
         f"--insecure {remote_off:.2f} ms; by hand {hand:.2f} ms",
         f"{remote_on / remote_off:.2f}× off, {remote_on / hand:.2f}× by hand", "≤ 2× by hand",
         remote_on <= 2 * hand),
    ]  # fmt: skip


def _tokens(d: dict[str, Any]) -> list[Row]:
    on, off = d["on"]["p50_ms"], d["off"]["p50_ms"]
    top = ", ".join(f"{r['function']} {r['ms_per_request']:.2f} ms" for r in d["profile"][6:9])
    return [
        (f"11 path tokens and policies per Request, in process (N={d['n']})", f"{on - off:.2f} ms more",
         f"the chain without them {off:.3f} ms", f"+{on - off:.2f} ms", "—", None),
        ("11 where it goes (cProfile, cumulative)", top, "—", "—", "—", None),
    ]  # fmt: skip


def _interdomain(d: dict[str, Any]) -> list[Row]:
    mesh, hand = d["mesh"]["p50_ms"], d["hand"]["p50_ms"]
    tp = d["throughput"]
    return [
        (f"12 interdomain set-up p50, svc@cluster2 through both registries (N={d['n']})",
         f"{mesh:.2f} ms (p99 {d['mesh']['p99_ms']:.1f})",
         f"VXLAN in a hand-built WireGuard link between the same nodes {hand:.2f} ms", f"{mesh / hand:.2f}×",
         "—", None),
        ("12 first interdomain connection of a node pair", f"{d['mesh_first_ms']:.0f} ms",
         f"wireguard-go pair by hand {d['hand_first_ms']:.0f} ms", f"{d['mesh_first_ms'] / d['hand_first_ms']:.2f}×",
         "—", None),
        ("12 interdomain throughput (iperf3, through both NATs)", f"{tp['mesh_gbps']:.2f} Gbit/s",
         f"the same shape by hand {tp['baseline_gbps']:.2f} Gbit/s", f"{tp['ratio']:.2f}", "—", None),
    ]  # fmt: skip


def _nat(d: dict[str, Any]) -> list[Row]:
    mesh, hand = d["mesh_first"]["p50_ms"], d["hand_first"]["p50_ms"]
    rec, tp, heal = d["recovery"], d["throughput"], d["heals"]
    hand_lost = rec["hand_lost_ms"]
    hand_text = (
        f"{hand_lost:.0f} ms"
        if hand_lost < rec["window_ms"]
        else f"not back within {rec['window_ms'] / 1000:.0f} s (next keepalive)"
    )
    rows: list[Row] = [
        ("13 first ping through two NATs, no port forwarded (Request to first echo, p50)", f"{mesh:.0f} ms",
         f"WireGuard punched by hand {hand:.0f} ms", f"{mesh / hand:.2f}×", "—", None),
        ("13 both routers' conntrack flushed under a 10 ms ping", f"{rec['mesh_lost_ms']:.0f} ms lost",
         f"by hand {hand_text}", "—", "resumes by itself", rec["mesh_lost_ms"] < rec["window_ms"]),
        ("13 throughput through NAT, direct (punched)", f"{tp['direct_gbps']:.2f} Gbit/s",
         f"the punched pair by hand {tp['hand_gbps']:.2f} Gbit/s", f"{tp['direct_ratio']:.2f}", "—", None),
        ("13 throughput through NAT, relayed (both routers symmetric)", f"{tp['relayed_gbps']:.2f} Gbit/s",
         f"the punched pair by hand, direct {tp['hand_gbps']:.2f} Gbit/s", f"{tp['relayed_ratio']:.2f}", "—", None),
        ("13 heal through NAT: serving endpoint killed → the other's first echo",
         f"{heal['endpoint_killed_s'] * 1000:.0f} ms", "—", "—", "≤ 1 s", heal["endpoint_killed_s"] <= 1.0),
        ("13 far / near agent killed -9 and restarted, pings lost at 10 ms",
         f"{heal['far_agent_killed_lost_ms']:.0f} / {heal['near_agent_killed_lost_ms']:.0f} ms", "—", "—", "0 lost",
         heal["far_agent_killed_lost_ms"] == 0 and heal["near_agent_killed_lost_ms"] == 0),
    ]  # fmt: skip
    if "relayed_first_s" in tp:
        relayed = f"{tp['relayed_endpoint_s']:.1f} s → {tp['relayed_first_s']:.1f} s"
        rows.append(("13 relayed (both routers symmetric): Request → endpoint on the relay → first echo",
                     relayed, "—", "—", "—", None))  # fmt: skip
    if "far_registry_killed_lost_ms" in heal:
        rows.append(("13 far registry killed -9: pings lost at 10 ms; restarted → a new Request served",
                     f"{heal['far_registry_killed_lost_ms']:.0f} ms; {heal['far_registry_back_s']:.1f} s", "—", "—",
                     "0 lost; within one renewal (20 s)",
                     heal["far_registry_killed_lost_ms"] == 0 and heal["far_registry_back_s"] <= 20.0))  # fmt: skip
    return rows


def _vm(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        (f"9 throughput between VMs, kernel WireGuard (TCG; MTU {d['mtu']})", f"{d['mesh_mbps']:.0f} Mbit/s",
         f"kernel WireGuard by hand between the same VMs {d['hand_mbps']:.0f} Mbit/s", f"{d['ratio']:.2f}",
         "≥ 0.8", d["ratio"] >= 0.8),
    ]  # fmt: skip
    for r in d.get("restarts", []):
        rows.append((f"9 kill -9 of {r['node']}'s agent in its VM (systemd starts it)",
                     f"{r['sent'] - r['received']} of {r['sent']} pings lost at 50 ms", "—", "—", "0 lost",
                     r["sent"] > 0 and r["sent"] == r["received"]))  # fmt: skip
    return rows


SECTIONS = (("local", _local), ("remote", _remote), ("scale", _scale), ("throughput", _throughput),
            ("heal", _heal), ("restart", _restart), ("remote_restart", _remote_restart),
            ("events", _events), ("tls", _tls), ("tokens", _tokens), ("interdomain", _interdomain), ("nat", _nat),
            ("vm", _vm))  # fmt: skip


def write_report(data: dict[str, Any], out: Path) -> str:
    rows: list[Row] = []
    for key, fn in SECTIONS:
        if key in data:
            rows += fn(data[key])
    lines = [
        f"# Benchmark report ({data.get('mode', '?')} run)",
        "",
        "Every figure against a baseline measured in the same run on this machine;",
        "absolute times are for reference only. Made by `./scripts/bench`.",
        "",
        "| target | mesh | baseline | ratio | goal | |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {r} | {g} | {_met(ok)} |" for a, b, c, r, g, ok in rows]
    lines += ["", *_plots(data, out), ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def _plots(data: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "scale" in data:
        fig, ax = plt.subplots(figsize=(8, 4))
        raw = data["scale"]["raw"]
        for key, label in (("one_node_setup", "one node (veth)"), ("two_nodes_setup", "two nodes (VXLAN)"),
                           ("two_nodes_wireguard_setup", "two nodes (WireGuard)")):  # fmt: skip
            if key not in raw:
                continue
            values = [x * 1000 for x in raw[key]]
            window = 25
            smooth = [sorted(values[max(0, i - window) : i + 1])[len(values[max(0, i - window) : i + 1]) // 2]
                      for i in range(len(values))]  # fmt: skip
            (line,) = ax.plot(range(1, len(values) + 1), smooth, label=f"{label}, running median", linewidth=1.5)
            ax.plot(range(1, len(values) + 1), values, linewidth=0.4, alpha=0.35, color=line.get_color())
        ax.set_xlabel("connections held")
        ax.set_ylabel("set-up latency (ms)")
        ax.set_title("Set-up latency as connections accumulate")
        ax.set_ylim(bottom=0)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "setup_latency.png", dpi=100)
        plt.close(fig)
        made.append("![set-up latency against connections held](setup_latency.png)")
    if "local" in data:
        fig, ax = plt.subplots(figsize=(6, 4))
        raw = data["local"]["raw"]
        ax.boxplot([[x * 1000 for x in raw[k]] for k in ("mesh", "bare", "ptp")], showfliers=False)
        ax.set_xticks([1, 2, 3], ["mesh Request", "bare pyroute2", "CNI ptp"])
        ax.set_ylabel("ms")
        ax.set_title("Local KERNEL connection set-up")
        fig.tight_layout()
        fig.savefig(out / "local_setup.png", dpi=100)
        plt.close(fig)
        made.append("![local set-up](local_setup.png)")
    if "throughput" in data:
        tp = {k: v for k, v in data["throughput"].items() if isinstance(v, dict)}
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = range(len(tp))
        ax.bar([x - 0.2 for x in xs], [t["mesh_gbps"] for t in tp.values()], width=0.4, label="mesh")
        ax.bar([x + 0.2 for x in xs], [t["baseline_gbps"] for t in tp.values()], width=0.4, label="by hand")
        ax.set_xticks(list(xs), list(tp))
        ax.set_ylabel("Gbit/s (iperf3, TCP)")
        ax.set_title("Throughput through the mesh and hand-built links")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plt.close(fig)
        made.append("![throughput](throughput.png)")
    return made
