"""What each service process uses under a Route load: the figures the Kubernetes resources are sized from.

Run from the repository root: `.venv/bin/python deploy/kubernetes/footprint.py` (about 2 minutes).

It starts the stack as `make bench` does (`benchmarks.router_bench.bench_stack`: separate processes, the
simulator with no model latency), with the ledger on PostgreSQL (`FOOTPRINT_PG_URL`, default the local
server's `test` database, in a schema of its own that is dropped afterwards) as in the Kubernetes
deployment, and runs the Route load of `make bench` at concurrency 32: with the default
`ROUTER_CLASSIFIER_MODE=local_first` (the classifier service is not asked: it has no LLM here) and
with `remote` (the classifier service classifies every request, the most it can be asked), then
`local_first` again with a hard daily budget on the load's caller (before each provider call the
router holds its estimated cost in the ledger, `ReserveBudget`: the ledger's work per request with
budgets). For each process it prints CPU milliseconds per request, the cores that makes at the
measured request rate, and its resident memory: after start-up, and the peak (VmHWM) over the run.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

from benchmarks.router_bench import _route_load, bench_stack
from llmroute_cli import commands

PG_URL = os.environ.get("FOOTPRINT_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONCURRENCY = 32
TOTAL = int(os.environ.get("FOOTPRINT_N", 2000))
SERVICES = ("router", "classifier", "ledger", "simulator")


def _memory_mb(pid: int, field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def measure(mode: str, budget: bool = False) -> None:
    schema = f"footprint_{uuid.uuid4().hex[:8]}"
    env = {
        "ROUTER_CLASSIFIER_MODE": mode,
        "LEDGER_DATABASE_URL": PG_URL.replace("postgresql://", "postgresql+asyncpg://", 1),
        "LEDGER_DATABASE_SCHEMA": schema,
    }
    try:
        with bench_stack(**env) as stack:
            started = time.perf_counter()
            stack.start()
            ready_s = time.perf_counter() - started
            if budget:  # a hard budget on the load's caller: every provider call holds its estimate
                ledger = f"127.0.0.1:{stack.ports.ledger}"
                limits = ["--period", "daily", "--soft", "900000", "--hard", "1000000"]
                commands.main(["--ledger", ledger, "budget", "set", "--caller", "bench", *limits])
            pids = {name: stack.processes[name].pid for name in SERVICES}
            idle = {name: _memory_mb(pid, "VmRSS") for name, pid in pids.items()}
            result = _route_load(f"127.0.0.1:{stack.ports.router}", pids, CONCURRENCY, TOTAL)
            peak = {name: _memory_mb(pid, "VmHWM") for name, pid in pids.items()}
    finally:
        asyncio.run(_drop_schema(schema))
    print(
        f"\nROUTER_CLASSIFIER_MODE={mode}{', hard budget on the caller' if budget else ''}: {TOTAL} Routes at concurrency {CONCURRENCY}, "
        f"{result['rps']:.1f} req/s, Route p50 {result['p50_ms']:.1f} ms; stack start to SERVING {ready_s:.1f} s"
    )
    print(f"{'process':<11} {'CPU ms/req':>10} {'cores':>6} {'RSS idle MiB':>12} {'RSS peak MiB':>12}")
    for name in SERVICES:
        cpu_ms = result[f"{name}_cpu_ms"]
        cores = cpu_ms * result["rps"] / 1000  # CPU per request at the measured request rate
        print(f"{name:<11} {cpu_ms:>10.2f} {cores:>6.2f} {idle[name]:>12.0f} {peak[name]:>12.0f}")


def main() -> None:
    print(f"machine: {os.cpu_count()} cores; ledger on PostgreSQL ({PG_URL})")
    for mode in ("local_first", "remote"):
        measure(mode)
    measure("local_first", budget=True)


if __name__ == "__main__":
    main()
