"""Gateway overhead: POST /v1/chat/completions through the gateway against a direct Route call, one run.

The same stack serves both (simulator without model latency, ledger, classifier, router, gateway, each
its own process), and each load runs in a fresh client process: Route over gRPC as
`benchmarks.router_bench` sends it, the gateway over HTTP/1.1 keep-alive connections (aiohttp, one per
concurrent request, as an SDK's connection pool holds them) with the same prompts. What differs is what
the gateway adds: HTTP parsing, JSON both ways, the translation and its own gRPC hop to the router.
Loads alternate (Route, gateway, Route, gateway...) so drift on this shared machine hits both alike;
figures are over all rounds. Run: `python -m benchmarks.gateway_bench` (part of `make bench`).
Targets: at most 2 ms added p50 at concurrency 1; at least 0.8x Route's throughput at concurrency 32.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from benchmarks.router_bench import PROMPTS, _cpu_ms, _load, _route, bench_stack
from devstack.stack import WITH_GATEWAY

__all__ = ["_gateway", "_route", "main"]


async def _gateway(base_url: str, concurrency: int, total: int) -> list[float]:
    import aiohttp

    counter = iter(PROMPTS)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector) as session:

        async def one() -> None:
            body = {
                "model": "llmroute/auto",
                "messages": [{"role": "user", "content": next(counter)}],
                "user": "bench",
            }
            async with session.post("/v1/chat/completions", json=body) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"gateway answered {reply.status}: {await reply.text()}")
                await reply.json()

        return await _load(one, concurrency, total)


def _client(mode: str, target: str, concurrency: int, total: int, pids: dict[str, int]) -> dict[str, float]:
    """One load in a fresh client process: throughput, latencies, and each server process's CPU
    milliseconds per request during it."""
    code = (
        "import asyncio, json; from benchmarks import gateway_bench as b; "
        f"r = asyncio.run(b._{mode}({target!r}, {concurrency}, {total})); print(json.dumps(r))"
    )
    before = {name: _cpu_ms(pid) for name, pid in pids.items()}
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    elapsed, *latencies = json.loads(output.strip().splitlines()[-1])
    requests = total + min(20, total)  # _load's warm-up calls included
    return {
        "elapsed": elapsed,
        "latencies": latencies,
        **{f"{name}_cpu_ms": (_cpu_ms(pid) - before[name]) / requests for name, pid in pids.items()},
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, float]:
    latencies = sorted(ms for run in runs for ms in run["latencies"])
    merged = {
        "rps": len(latencies) / sum(run["elapsed"] for run in runs),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
    }
    for key in runs[0]:
        if key.endswith("_cpu_ms"):
            merged[key] = statistics.mean(run[key] for run in runs)
    return merged


def measure(
    total_by_concurrency: dict[int, int], rounds: int
) -> list[tuple[int, dict[str, float], dict[str, float]]]:
    rows = []
    with bench_stack() as stack:
        stack.start(WITH_GATEWAY)
        pids = {
            name: process.pid for name, process in stack.processes.items() if name in ("router", "gateway")
        }
        router = f"127.0.0.1:{stack.ports.router}"
        gateway = f"http://127.0.0.1:{stack.ports.gateway}"
        for concurrency, total in total_by_concurrency.items():
            direct, through = [], []
            for _ in range(rounds):
                direct.append(_client("route", router, concurrency, total, pids))
                through.append(_client("gateway", gateway, concurrency, total, pids))
            rows.append((concurrency, _merge(direct), _merge(through)))
    return rows


def main() -> None:
    total_by_concurrency = {
        1: int(os.environ.get("BENCH_N1", 300)),
        32: int(os.environ.get("BENCH_N32", 2000)),
    }
    rounds = int(os.environ.get("BENCH_GATEWAY_ROUNDS", 3))
    rows = measure(total_by_concurrency, rounds)
    print(
        "\nGateway overhead: POST /v1/chat/completions through the gateway vs Route called directly, same"
        f"\nstack, {rounds} alternating rounds per row"
    )
    print(
        f"{'concurrency':>11} {'Route rps':>9} {'gw rps':>9} {'ratio':>6} {'Route p50':>9} {'gw p50':>9} "
        f"{'added p50':>9} {'Route p99':>9} {'gw p99':>9}"
    )
    for concurrency, direct, through in rows:
        print(
            f"{concurrency:>11} {direct['rps']:>9.1f} {through['rps']:>9.1f} {through['rps'] / direct['rps']:>6.2f} "
            f"{direct['p50_ms']:>7.2f}ms {through['p50_ms']:>7.2f}ms {through['p50_ms'] - direct['p50_ms']:>7.2f}ms "
            f"{direct['p99_ms']:>7.2f}ms {through['p99_ms']:>7.2f}ms"
        )
    print("targets: added p50 <= 2 ms at concurrency 1; ratio (gateway / Route) >= 0.8 at concurrency 32")
    print("CPU per request (ms) of the router and the gateway processes, during each load:")
    for concurrency, direct, through in rows:
        print(
            f"  concurrency {concurrency:>2}: Route load: router {direct['router_cpu_ms']:.2f}; gateway load: "
            f"router {through['router_cpu_ms']:.2f}, gateway {through['gateway_cpu_ms']:.2f}"
        )


if __name__ == "__main__":
    main()
