"""Simulator fixtures: the simulator in process on port 0, with no latency unless a test asks for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from simulator import SimulatorSettings, start_simulator


@dataclass
class Sim:
    """A running simulator: its URLs and its admin API."""

    runner: web.AppRunner
    port: int
    http: aiohttp.ClientSession

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What litellm takes as api_base and the OpenAI SDK as base_url."""
        return f"{self.root}/v1"

    async def add_fault(self, **rule: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.root}/_sim/faults", json=rule) as reply:
            assert reply.status == 201, await reply.text()
            rules: list[dict[str, Any]] = (await reply.json())["rules"]
            return rules[0]

    async def faults(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.root}/_sim/faults") as reply:
            rules: list[dict[str, Any]] = (await reply.json())["rules"]
            return rules

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.root}/_sim/stats") as reply:
            stats: dict[str, Any] = await reply.json()
            return stats

    async def chat(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """A raw POST /v1/chat/completions, for what clients hide (headers, SSE lines); body read."""
        reply = await self.http.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
        await reply.read()
        return reply


StartSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators with settings overrides; all are stopped at the end of the test."""
    started: list[Sim] = []

    async def start(**overrides: Any) -> Sim:
        settings = SimulatorSettings(**{"port": 0, "latency_scale": 0.0, "grace_seconds": 0.0, **overrides})
        runner, port = await start_simulator(settings)
        sim = Sim(runner, port, aiohttp.ClientSession())
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.http.close()
        await sim.runner.cleanup()


@pytest.fixture
async def sim(start_sim: StartSim) -> Sim:
    return await start_sim()
