"""Registry speed with 10,000 endpoints, for both stores, against bare etcd.

    python -m bench.registry_bench [--endpoints 10000] [--finds 1000] [--watchers 100]

Measures, per store: Register rate (16 concurrent clients), Find-by-name latency
(p50, p99) and rate with all endpoints stored, and watch fan-out (one
registration seen by N watchers: p50 and p99 of the per-watcher delay). The
baseline, in the same run: bare etcd put and get with the same client library
(aetcd) on the same etcd. Ratios are registry ÷ baseline (lower is better for
latencies, higher for rates). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aetcd

from nsm_api import registry_pb2_grpc
from nsm_api.registry_pb2 import NetworkServiceEndpoint, NetworkServiceEndpointQuery
from nsm_common.identity.transport import LOCAL_ONLY
from nsm_common.urls import parse_address
from testbed.bed import Testbed
from testbed.etcd import start_etcd


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def baseline(host: str, port: int, n: int, gets: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        client = aetcd.Client(host=host, port=port)
        await client.connect()
        sem = asyncio.Semaphore(16)

        async def put(i: int) -> None:
            async with sem:
                await client.put(f"/bench/k{i}".encode(), b"x" * 200)

        t0 = time.perf_counter()
        await asyncio.gather(*(put(i) for i in range(n)))
        put_rate = n / (time.perf_counter() - t0)
        lat = []
        for i in range(gets):
            t = time.perf_counter()
            await client.get(f"/bench/k{i % n}".encode())
            lat.append(time.perf_counter() - t)
        await client.delete_prefix(b"/bench/")
        await client.close()
        return {
            "put_rate": put_rate,
            "get_p50": pct(lat, 50),
            "get_p99": pct(lat, 99),
            "get_rate": 1 / statistics.mean(lat),
        }

    return asyncio.run(run())


def measure(url: str, n: int, finds: int, watchers: int) -> dict[str, float]:
    channel = LOCAL_ONLY.sync_channel(parse_address(url))
    stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)

    def register(i: int) -> None:
        stub.Register(
            NetworkServiceEndpoint(name=f"ep{i}", network_service_names=["svc"], url="tcp://192.0.2.1:5001"), timeout=30
        )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(register, range(n)))
    reg_rate = n / (time.perf_counter() - t0)
    lat = []
    for i in range(finds):
        q = NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint(name=f"ep{(i * 7919) % n}"))
        t = time.perf_counter()
        found = list(stub.Find(q, timeout=30))
        lat.append(time.perf_counter() - t)
        assert len(found) == 1
    # Watch fan-out: N watchers, one registration.
    seen: queue.Queue[float] = queue.Queue()
    streams = []
    ready = threading.Barrier(watchers + 1)

    def watch() -> None:
        ch = LOCAL_ONLY.sync_channel(parse_address(url))
        s = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(ch)
        q = NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint(name="fanout"), watch=True)
        stream = s.Find(q)
        streams.append(stream)
        ready.wait()
        try:
            for resp in stream:
                if resp.network_service_endpoint.name == "fanout":
                    seen.put(time.perf_counter())
                    return
        except Exception:
            pass

    threads = [threading.Thread(target=watch, daemon=True) for _ in range(watchers)]
    for th in threads:
        th.start()
    ready.wait()
    time.sleep(1.0)  # every stream established
    t0 = time.perf_counter()
    stub.Register(NetworkServiceEndpoint(name="fanout", network_service_names=["svc"]), timeout=30)
    delays = [seen.get(timeout=30) - t0 for _ in range(watchers)]
    for s in streams:
        s.cancel()  # type: ignore[no-untyped-call]
    channel.close()
    return {
        "reg_rate": reg_rate,
        "find_p50": pct(lat, 50),
        "find_p99": pct(lat, 99),
        "find_rate": 1 / statistics.mean(lat),
        "fan_p50": pct(delays, 50),
        "fan_p99": pct(delays, 99),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoints", type=int, default=10_000)
    p.add_argument("--finds", type=int, default=1000)
    p.add_argument("--watchers", type=int, default=100)
    args = p.parse_args(argv)
    with Testbed() as bed:
        etcd = start_etcd(bed)
        member = etcd.members[0]
        base = baseline("127.0.0.1", member.client_port, args.endpoints, args.finds)
        results: dict[str, dict[str, float]] = {}
        for store in ("memory", etcd.url):
            _, url = bed.registry(None, extra=["--store", store, "--max-expiration", "600"], name=f"reg-{len(results)}")
            results["memory" if store == "memory" else "etcd"] = measure(url, args.endpoints, args.finds, args.watchers)
    print(f"\n{args.endpoints} endpoints, {args.finds} finds, {args.watchers} watchers\n")
    print("| store | register/s (÷ bare put/s) | Find p50 ms (÷ bare get) | Find p99 ms (÷ bare get) "
          "| Find/s | watch fan-out p50 / p99 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(f"| bare etcd (aetcd) | {base['put_rate']:.0f} | {base['get_p50'] * 1000:.2f} | {base['get_p99'] * 1000:.2f} "
          f"| {base['get_rate']:.0f} | — |")  # fmt: skip
    for name, r in results.items():
        print(
            f"| {name} | {r['reg_rate']:.0f} ({r['reg_rate'] / base['put_rate']:.2f}) "
            f"| {r['find_p50'] * 1000:.2f} ({r['find_p50'] / base['get_p50']:.1f}) "
            f"| {r['find_p99'] * 1000:.2f} ({r['find_p99'] / base['get_p99']:.1f}) "
            f"| {r['find_rate']:.0f} | {r['fan_p50'] * 1000:.1f} / {r['fan_p99'] * 1000:.1f} |"
        )


if __name__ == "__main__":
    main()
