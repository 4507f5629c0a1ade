"""Router overhead: Route over gRPC against a bare `litellm.acompletion` loop, same simulator, one run.

Every load runs in its own client process against the same simulator process (no added latency),
so what differs is exactly what the router adds: gRPC, classification, selection, validation and
ledger reporting. A passthrough server (`benchmarks.passthrough`: gRPC and the LiteLLM call, nothing
else) is measured in the same run as the ceiling any router can reach here. Reported as ratios,
because these 2-core machines are shared and noisy. Run: `python -m benchmarks.router_bench` (part
of `make bench`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devstack.stack import Ports, Stack, free_port

PROMPT = "Is this message spam? Answer yes or no: 'Congratulations, you won a free cruise, click here.'"
# Every request differs (a ticket number), as real traffic does: no cache anywhere can serve a repeat.
PROMPTS = [f"{PROMPT} (ticket {n})" for n in range(10_000)]
# Where Route sends these prompts (the moderate tier's cheapest model), so the bare loop and the
# passthrough server make the very call the router makes.
MODEL = "groq/openai/gpt-oss-120b"


async def bare_call(simulator_url: str, prompt: str) -> Any:
    """The baseline every router benchmark compares with: one `litellm.acompletion` to the simulator,
    as an application calling LiteLLM directly makes it."""
    from service_kit.litellm_offline import litellm

    return await litellm.acompletion(
        model=f"openai/{MODEL}",
        api_base=simulator_url,
        api_key="simulated",
        messages=[{"role": "user", "content": prompt}],
        num_retries=0,
    )


async def _bare_litellm(simulator_url: str, concurrency: int, total: int) -> list[float]:
    counter = iter(PROMPTS)

    async def one() -> None:
        await bare_call(simulator_url, next(counter))

    return await _load(one, concurrency, total)


async def _route(router_address: str, concurrency: int, total: int, connections: int = 1) -> list[float]:
    import grpc

    from llmroute.common.v1 import common_pb2
    from llmroute.router.v1 import router_pb2, router_pb2_grpc

    # Each channel its own TCP connection (a local subchannel pool), requests spread round-robin.
    channels = [
        grpc.aio.insecure_channel(router_address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    stubs = itertools.cycle([router_pb2_grpc.RouterServiceStub(channel) for channel in channels])
    counter = iter(PROMPTS)

    async def one() -> None:
        request = router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=next(counter))], caller="bench"
        )
        await next(stubs).Route(request, timeout=30)
        # Route sends all but about 1 in 700 of these to MODEL (a ticket number can tip the score over
        # a threshold); with no model latency the simulator answers every model alike.

    try:
        return await _load(one, concurrency, total)
    finally:
        for channel in channels:
            await channel.close()


async def _route_spread(router_address: str, concurrency: int, total: int) -> list[float]:
    """Route over 8 connections: SO_REUSEPORT spreads connections, not requests, over router workers
    (as many clients' connections would be spread)."""
    return await _route(router_address, concurrency, total, connections=8)


async def _load(one, concurrency: int, total: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Latencies (ms) of `total` calls issued by `concurrency` workers, after a short warm-up."""
    for _ in range(min(20, total)):
        await one()
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await one()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return [elapsed, *latencies]


def _client(mode: str, target: str, concurrency: int, total: int) -> dict[str, float]:
    """Run one load in a fresh client process; returns throughput, latency percentiles and the client
    process's CPU milliseconds per request (imports excluded: LiteLLM's alone take seconds)."""
    code = (
        "import asyncio, json, os, resource; import service_kit.litellm_offline; "
        "import grpc, litellm; from benchmarks import router_bench as b; "
        "cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2]); before = cpu(); "
        f"r = asyncio.run(b._{mode}({target!r}, {concurrency}, {total})); print(json.dumps([cpu() - before, *r]))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    cpu_seconds, elapsed, *latencies = json.loads(output.strip().splitlines()[-1])
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        # The warm-up calls of _load are in the CPU total: count them as requests.
        "client_cpu_ms": cpu_seconds * 1000 / (len(latencies) + min(20, total)),
    }


def _cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far, in milliseconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _route_load(address: str, pids: dict[str, int], concurrency: int, total: int) -> dict[str, float]:
    """The Route load against `address`, plus each named server process's CPU milliseconds per
    request during it (`<name>_cpu_ms`)."""
    before = {name: _cpu_ms(pid) for name, pid in pids.items()}
    result = _client("route", address, concurrency, total)
    requests = total + min(20, total)  # _load's warm-up calls included
    for name, pid in pids.items():
        result[f"{name}_cpu_ms"] = (_cpu_ms(pid) - before[name]) / requests
    return result


def _route_client(stack: Stack, concurrency: int, total: int) -> dict[str, float]:
    """The Route load on the stack's router, with every service process's CPU per request."""
    pids = {name: process.pid for name, process in stack.processes.items()}
    return _route_load(f"127.0.0.1:{stack.ports.router}", pids, concurrency, total)


@contextlib.contextmanager
def bench_stack(**env: str) -> Iterator[Stack]:
    """Fresh services in a temporary folder (not started), the simulator quiet and without model latency."""
    quiet = {"SIMULATOR_LATENCY_SCALE": "0", "SIMULATOR_LOG_LEVEL": "WARNING"}
    with (
        tempfile.TemporaryDirectory() as state,
        Stack(state_dir=Path(state), ports=Ports.free(), extra_env={**quiet, **env}) as stack,
    ):
        yield stack


@contextlib.contextmanager
def passthrough_server(simulator_url: str) -> Iterator[tuple[str, int]]:
    """`benchmarks.passthrough` serving on a free port: (its address, its pid)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.passthrough", str(port), simulator_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the passthrough server did not start")
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def first_route_ms(warm_up: bool, connect_delay_ms: int = 200) -> float:
    """Latency of the first Route after start, with the simulator charging `connect_delay_ms` per new
    connection (as TCP + TLS set-up to a real provider does)."""
    import grpc

    from llmroute.common.v1 import common_pb2
    from llmroute.router.v1 import router_pb2, router_pb2_grpc

    env = {
        "SIMULATOR_LATENCY_SCALE": "0",
        "SIMULATOR_CONNECT_DELAY_MS": str(connect_delay_ms),
        "ROUTER_WARM_UP": str(warm_up).lower(),
        "ROUTER_LOG_LEVEL": "WARNING",
    }
    with (
        tempfile.TemporaryDirectory() as state,
        Stack(state_dir=Path(state), ports=Ports.free(), extra_env=env) as stack,
    ):
        stack.start()
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports.router}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = router_pb2_grpc.RouterServiceStub(channel)
            request = router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=PROMPT)])
            started = time.perf_counter()
            stub.Route(request, timeout=30)
            return (time.perf_counter() - started) * 1000


def router_footprint(mode: str) -> tuple[float, int]:
    """Seconds from the router's start to SERVING, and its resident memory (MB) then, with
    ROUTER_CLASSIFIER_MODE=`mode` (the other services already up)."""
    with (
        tempfile.TemporaryDirectory() as state,
        Stack(state_dir=Path(state), ports=Ports.free(), extra_env={"ROUTER_CLASSIFIER_MODE": mode}) as stack,
    ):
        stack.start(services=("simulator", "ledger", "classifier"))
        started = time.perf_counter()
        stack.start_one("router", stack.environments()["router"])
        stack.wait_ready(("router",))
        ready = time.perf_counter() - started
        status = Path(f"/proc/{stack.processes['router'].pid}/status").read_text()
        rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        return ready, rss_kb // 1024


def _with_workers(total_by_concurrency: dict[int, int], workers: int) -> None:
    """The same comparison with ROUTER_WORKERS processes serving Route: how the router uses more cores.
    Not like for like (the bare loop stays one process), so it is reported apart from the target."""
    with bench_stack(ROUTER_WORKERS=str(workers)) as stack:
        stack.start()
        simulator_url = f"http://127.0.0.1:{stack.ports.simulator}/v1"
        print(
            f"\nThe same with ROUTER_WORKERS={workers} (router processes on one port, the Route client on 8 "
            "connections; the bare loop is one process)"
        )
        print(f"{'concurrency':>11} {'bare rps':>9} {'Route rps':>9} {'ratio':>6}")
        for concurrency, total in total_by_concurrency.items():
            if concurrency == 1:
                continue  # one request at a time uses one worker whatever their number: throughput only
            bare = _client("bare_litellm", simulator_url, concurrency, total)
            routed = _client("route_spread", f"127.0.0.1:{stack.ports.router}", concurrency, total)
            print(
                f"{concurrency:>11} {bare['rps']:>9.1f} {routed['rps']:>9.1f} {routed['rps'] / bare['rps']:>6.2f}"
            )


def main() -> None:
    total_by_concurrency = {
        1: int(os.environ.get("BENCH_N1", 300)),
        32: int(os.environ.get("BENCH_N32", 2000)),
    }
    # Services log at their defaults (INFO: one line per request); only the simulator, which is not
    # part of what is measured, is quiet.
    with bench_stack() as stack:
        stack.start()
        simulator_url = f"http://127.0.0.1:{stack.ports.simulator}/v1"
        rows = []
        with passthrough_server(simulator_url) as (passthrough_address, passthrough_pid):
            for concurrency, total in total_by_concurrency.items():
                bare = _client("bare_litellm", simulator_url, concurrency, total)
                ceiling = _route_load(
                    passthrough_address, {"passthrough": passthrough_pid}, concurrency, total
                )
                routed = _route_client(stack, concurrency, total)
                rows.append((concurrency, bare, ceiling, routed))
        print(
            "\nRouter overhead: Route over gRPC vs bare litellm.acompletion, same simulator (no model latency);"
            "\n'passthrough' is a gRPC server doing nothing but the LiteLLM call: the ceiling for any router"
        )
        print(
            f"{'concurrency':>11} {'bare rps':>9} {'passthr.':>9} {'Route rps':>9} {'ceiling':>7} {'ratio':>6} "
            f"{'bare p50':>9} {'Route p50':>9} {'added p50':>9}"
        )
        for concurrency, bare, ceiling, routed in rows:
            print(
                f"{concurrency:>11} {bare['rps']:>9.1f} {ceiling['rps']:>9.1f} {routed['rps']:>9.1f} "
                f"{ceiling['rps'] / bare['rps']:>7.2f} {routed['rps'] / bare['rps']:>6.2f} "
                f"{bare['p50_ms']:>8.2f}ms {routed['p50_ms']:>8.2f}ms {routed['p50_ms'] - bare['p50_ms']:>8.2f}ms"
            )
        print("targets: ratio (Route / bare) >= 0.85; added p50 <= 3 ms at low load (concurrency 1)")
        print("\nCPU per request (ms): the bare loop's and the passthrough server's processes, then each")
        print("process during the Route load")
        print(
            f"{'concurrency':>11} {'bare':>6} {'passthr.':>8} {'client':>6} {'router':>6} {'classif.':>8} "
            f"{'ledger':>6} {'simul.':>6}"
        )
        for concurrency, bare, ceiling, routed in rows:
            print(
                f"{concurrency:>11} {bare['client_cpu_ms']:>6.2f} {ceiling['passthrough_cpu_ms']:>8.2f} "
                f"{routed['client_cpu_ms']:>6.2f} {routed['router_cpu_ms']:>6.2f} "
                f"{routed['classifier_cpu_ms']:>8.2f} {routed['ledger_cpu_ms']:>6.2f} "
                f"{routed['simulator_cpu_ms']:>6.2f}"
            )
    _with_workers(total_by_concurrency, workers=2)
    print("\nThe router with the learned classifier in process (default) or asking classifier_svc:")
    for mode in ("local_first", "remote"):
        ready, rss_mb = router_footprint(mode)
        print(f"  {mode:<12} start to SERVING {ready:5.2f} s   resident memory {rss_mb} MB")
    cold, warm = first_route_ms(warm_up=False), first_route_ms(warm_up=True)
    print("\nFirst Route after start, simulator connect delay 200 ms per new connection:")
    print(f"  without warm-up {cold:8.1f} ms\n  with warm-up    {warm:8.1f} ms   ({cold / warm:.1f}x faster)")


if __name__ == "__main__":
    main()
