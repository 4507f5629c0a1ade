"""The gateway's resident memory after start and its peak under 2,000 chat completions at concurrency 32
(the stack as processes, the simulator without model latency): what deploy/kubernetes/base/gateway.yaml's
memory is sized from. Run from the repository root: `.venv/bin/python -m tests.gateway.footprint`."""

import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from devstack.stack import WITH_GATEWAY, Ports, Stack


def mem(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no {field} in /proc/{pid}/status")


async def load(url: str, n: int = 2000, c: int = 32) -> float:
    body = {
        "model": "llmroute/auto",
        "messages": [{"role": "user", "content": "Is this spam? 'Win a cruise'"}],
    }
    sem = asyncio.Semaphore(c)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def one() -> None:
            async with sem:
                r = await http.post("/v1/chat/completions", json=body)
                r.raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t)


with (
    tempfile.TemporaryDirectory() as d,
    Stack(
        state_dir=Path(d),
        ports=Ports.free(),
        extra_env={"SIMULATOR_LATENCY_SCALE": "0", "ROUTER_SIMULATOR": "always"},
    ) as stack,
):
    stack.start(WITH_GATEWAY)
    pid = stack.processes["gateway"].pid
    print("after start RSS MiB", round(mem(pid, "VmRSS"), 1))
    rps = asyncio.run(load(f"http://127.0.0.1:{stack.ports.gateway}"))
    print(
        "rps",
        round(rps, 1),
        "RSS MiB",
        round(mem(pid, "VmRSS"), 1),
        "peak VmHWM MiB",
        round(mem(pid, "VmHWM"), 1),
    )
