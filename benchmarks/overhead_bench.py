"""Route's added overhead at concurrency 64 against a provider that takes 200 ms, the whole stack as
processes (router, classifier, ledger, simulator), next to bare LiteLLM against the same simulator.

The simulator answers every call after a fixed 200 ms (a `delay` fault on every model, its own
latency model off), so each call's provider time is known. 64 clients each send their next request
as soon as the previous one is answered (closed loop) for BENCH_C64_SECONDS after a warm-up, from a
client process of their own. Reported per load:

    added (soak)   the client's latency minus the provider time the response reports (its attempts'
                   `latency_ms`, the router's wall time around `litellm.acompletion`): what the soak
                   reports, and what the issue's target (p99 <= 10 ms) is about
    over 200 ms    the client's latency minus the provider's 200 ms: everything between the client
                   and the provider, LiteLLM's own work included; for bare LiteLLM, what LiteLLM adds

with p50, p99, p99.9, throughput, and each process's CPU milliseconds per request (`/proc`). The bare
loop and Route run in the same run, one after the other, so their ratios compare on this noisy
machine. Run: `python -m benchmarks.overhead_bench` (part of `make bench`); BENCH_C64_SECONDS (20),
BENCH_C64_CONCURRENCY (64; a list, `8,16,64`, measures each), BENCH_C64_DELAY_MS (200),
BENCH_C64_MODES (`local_first,remote`: the router's ROUTER_CLASSIFIER_MODE for each Route row; remote
puts classifier_svc on every request), BENCH_C64_WORKERS (1: ROUTER_WORKERS, the Route client then
on 8 connections), BENCH_C64_JSON (also write the rows there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.router_bench import PROMPT, _cpu_ms, bare_call, bench_stack
from devstack.stack import Stack

WARM_UP_SECONDS = 3.0


def _settings() -> tuple[list[int], float, float, list[str], int]:
    concurrencies = [int(c) for c in os.environ.get("BENCH_C64_CONCURRENCY", "64").split(",")]
    seconds = float(os.environ.get("BENCH_C64_SECONDS", 20))
    delay_ms = float(os.environ.get("BENCH_C64_DELAY_MS", 200))
    modes = [
        m.strip() for m in os.environ.get("BENCH_C64_MODES", "local_first,remote").split(",") if m.strip()
    ]
    workers = int(os.environ.get("BENCH_C64_WORKERS", 1))
    return concurrencies, seconds, delay_ms, modes, workers


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        name: round(_percentile(ordered, q), 2) for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))
    }


# ---- the client process ---------------------------------------------------------------------------


async def _closed_loop(
    one: Callable[[], Awaitable[float]], concurrency: int, seconds: float
) -> tuple[float, list[tuple[float, float]]]:
    """`concurrency` workers calling `one` back to back: a warm-up, then `seconds` measured. Returns the
    measured wall time and (latency ms, provider ms) of every call that started in the window."""
    samples: list[tuple[float, float]] = []
    measuring = False
    stop_at = float("inf")

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            counted = measuring
            provider_ms = await one()
            if counted:
                samples.append(((time.perf_counter() - started) * 1000, provider_ms))

    loop_started = time.perf_counter()
    stop_at = loop_started + WARM_UP_SECONDS + seconds
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(WARM_UP_SECONDS)
    measuring = True
    window_started = time.perf_counter()
    await asyncio.gather(*workers)
    return time.perf_counter() - window_started, samples


async def _load(mode: str, target: str, concurrency: int, seconds: float, delay_ms: float) -> dict[str, Any]:
    counter = itertools.count()
    if mode == "bare":

        async def bare() -> float:
            await bare_call(target, f"{PROMPT} (ticket {next(counter)})")
            return delay_ms

        return _summary(*await _closed_loop(bare, concurrency, seconds), delay_ms)

    import grpc

    from llmroute.common.v1 import common_pb2
    from llmroute.router.v1 import router_pb2, router_pb2_grpc

    # One connection, as one client process opens; with router workers, 8 (SO_REUSEPORT spreads
    # connections, not requests, over the workers).
    connections = 8 if mode == "route_spread" else 1
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    stubs = itertools.cycle([router_pb2_grpc.RouterServiceStub(channel) for channel in channels])

    async def route() -> float:
        request = router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"{PROMPT} (ticket {next(counter)})")],
            caller="bench",
        )
        response = await next(stubs).Route(request, timeout=30)
        return sum(attempt.latency_ms for attempt in response.attempts)

    try:
        return _summary(*await _closed_loop(route, concurrency, seconds), delay_ms)
    finally:
        for channel in channels:
            await channel.close()


def _summary(elapsed: float, samples: list[tuple[float, float]], delay_ms: float) -> dict[str, Any]:
    return {
        "requests": len(samples),
        "rps": round(len(samples) / elapsed, 1),
        "latency_ms": quantiles([total for total, _ in samples]),
        "added_ms": quantiles([max(0.0, total - provider) for total, provider in samples]),
        "over_provider_ms": quantiles([max(0.0, total - delay_ms) for total, _ in samples]),
        "provider_ms": quantiles([provider for _, provider in samples]),
    }


def _client_main(mode: str, target: str, concurrency: int, seconds: float, delay_ms: float) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import grpc  # noqa: F401  (imports outside the CPU measured)
    import litellm  # noqa: F401

    usage = resource.getrusage(resource.RUSAGE_SELF)
    before = usage.ru_utime + usage.ru_stime
    result = asyncio.run(_load(mode, target, concurrency, seconds, delay_ms))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = usage.ru_utime + usage.ru_stime - before
    print(json.dumps(result))


# ---- the benchmark --------------------------------------------------------------------------------


def _tree_cpu_ms(pid: int) -> float:
    """CPU milliseconds of a process and its children (a router's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    total = _cpu_ms(pid)
    for child in children:
        try:
            total += _cpu_ms(child)
        except OSError:
            continue
    return total


def run_load(
    mode: str, target: str, concurrency: int, seconds: float, delay_ms: float, pids: dict[str, int]
) -> dict[str, Any]:
    """One load in a fresh client process, with each server process's CPU per request. The CPU window
    includes the warm-up, so per-request CPU divides by every request the servers saw; the client's
    own CPU likewise (estimated from the measured rate)."""
    before = {name: _tree_cpu_ms(pid) for name, pid in pids.items()}
    load_before = os.getloadavg()[0]
    command = [
        sys.executable,
        "-m",
        "benchmarks.overhead_bench",
        "--client",
        mode,
        target,
        str(concurrency),
        str(seconds),
        str(delay_ms),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} client failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # Requests served over warm-up and window: the window's count scaled by its share of the time.
    served = result["requests"] * (seconds + WARM_UP_SECONDS) / seconds
    result["cpu_ms_per_request"] = {
        "client": round(result.pop("client_cpu_s") * 1000 / served, 2),
        **{name: round((_tree_cpu_ms(pid) - before[name]) / served, 2) for name, pid in pids.items()},
    }
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _delay_every_call(stack: Stack, delay_ms: float) -> None:
    """The simulator answers every model after `delay_ms` (its own latency model is off)."""
    rule = [{"model": "*", "fault": "delay", "delay_ms": delay_ms, "probability": 1.0}]
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.simulator}/_sim/faults",
        data=json.dumps(rule).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()


@contextlib.contextmanager
def provider_stack(delay_ms: float, **env: str) -> Iterator[Stack]:
    """The four processes, started, the simulator taking `delay_ms` for every call."""
    with bench_stack(ROUTER_SIMULATOR="always", **env) as stack:
        try:
            stack.start()
        except (RuntimeError, TimeoutError) as error:
            logs = {name: stack.log_path(name).read_text()[-2000:] for name in stack.processes}
            raise RuntimeError(f"{error}\n{json.dumps(logs, indent=1)}") from None
        _delay_every_call(stack, delay_ms)
        yield stack


def measure(
    concurrencies: list[int], seconds: float, delay_ms: float, modes: list[str], workers: int = 1
) -> list[dict[str, Any]]:
    """Per concurrency: the bare loop, then Route with each classifier mode (a stack each), then the
    bare loop again, so drift of the machine during the run shows."""
    rows: list[dict[str, Any]] = []
    for concurrency in concurrencies:
        for index, mode in enumerate(modes):
            env = {"ROUTER_CLASSIFIER_MODE": mode, "ROUTER_WORKERS": str(workers)}
            with provider_stack(delay_ms, **env) as stack:
                pids = {name: process.pid for name, process in stack.processes.items()}
                simulator_url = f"http://127.0.0.1:{stack.ports.simulator}/v1"
                simulator = {"simulator": pids["simulator"]}
                if index == 0:
                    result = run_load("bare", simulator_url, concurrency, seconds, delay_ms, simulator)
                    rows.append({"load": "bare", "concurrency": concurrency, **result})
                client = "route_spread" if workers > 1 else "route"
                address = f"127.0.0.1:{stack.ports.router}"
                result = run_load(client, address, concurrency, seconds, delay_ms, pids)
                name = f"Route ({mode}{f', {workers} workers' if workers > 1 else ''})"
                rows.append({"load": name, "concurrency": concurrency, **result})
                if index == len(modes) - 1:
                    result = run_load("bare", simulator_url, concurrency, seconds, delay_ms, simulator)
                    rows.append({"load": "bare, again", "concurrency": concurrency, **result})
    return rows


def report(rows: list[dict[str, Any]], delay_ms: float) -> None:
    print(
        f"\nRoute against a provider (the simulator) taking {delay_ms:.0f} ms per call, the four services as"
        "\nprocesses; bare = litellm.acompletion against the same simulator; closed loop, latencies in ms:"
        "\n'added' = client latency minus the provider time the router reports (the soak's overhead);"
        f"\n'over {delay_ms:.0f}' = client latency minus {delay_ms:.0f} ms (for bare: what LiteLLM adds)"
    )
    print(
        f"{'load':<22} {'conc.':>5} {'req/s':>6} {'ratio':>5} {'added p50':>9} {'p99':>7} {'p99.9':>7} "
        f"{'over p50':>8} {'p99':>7} {'p99.9':>7}"
    )
    bare_rps = {row["concurrency"]: row["rps"] for row in rows if row["load"] == "bare"}
    for row in rows:
        over = row["over_provider_ms"]
        added = row["added_ms"]
        cells = (
            f"{'':>9} {'':>7} {'':>7}"
            if row["load"].startswith("bare")
            else f"{added['p50']:>9.2f} {added['p99']:>7.2f} {added['p99.9']:>7.2f}"
        )
        print(
            f"{row['load']:<22} {row['concurrency']:>5} {row['rps']:>6.1f} "
            f"{row['rps'] / bare_rps[row['concurrency']]:>5.2f} {cells} "
            f"{over['p50']:>8.2f} {over['p99']:>7.2f} {over['p99.9']:>7.2f}"
        )
    print("target: Route added p99 <= 10 ms at concurrency 64 (its ideal throughput: 64 / 0.2 s = 320 req/s)")
    print("\nCPU per request (ms) of each process during the load; load average (1 min) before / after")
    names = ["client", "router", "classifier", "ledger", "simulator"]
    print(f"{'load':<22} {'conc.':>5} " + " ".join(f"{n[:8]:>8}" for n in names) + f" {'load avg':>11}")
    for row in rows:
        cpu = row["cpu_ms_per_request"]
        cells = " ".join(f"{cpu[n]:>8.2f}" if n in cpu else f"{'':>8}" for n in names)
        average = row["load_average"]
        print(f"{row['load']:<22} {row['concurrency']:>5} {cells} {average[0]:>5.2f}/{average[1]:<5.2f}")


def main() -> None:
    concurrencies, seconds, delay_ms, modes, workers = _settings()
    rows = measure(concurrencies, seconds, delay_ms, modes, workers)
    report(rows, delay_ms)
    output = os.environ.get("BENCH_C64_JSON")
    if output:
        Path(output).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="overhead_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", nargs=5, metavar=("MODE", "TARGET", "CONCURRENCY", "SECONDS", "DELAY_MS"))
    args = parser.parse_args()
    if args.client:
        mode, target, concurrency, seconds, delay = args.client
        _client_main(mode, target, int(concurrency), float(seconds), float(delay))
    else:
        main()
