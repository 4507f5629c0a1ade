"""Router fixtures: a real classifier server, the simulator, and the router, all in process on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from classifier_svc.server import create_server as create_classifier
from classifier_svc.settings import ClassifierSettings
from llmroute.router.v1 import router_pb2_grpc
from router_svc.server import create_server as create_router
from router_svc.settings import RouterSettings
from service_kit.policy import DEFAULT_POLICY_PATH
from service_kit.server import RunningServer
from tests.doubles import RecordingSink


@dataclass
class RouterHarness:
    stub: router_pb2_grpc.RouterServiceAsyncStub
    server: RunningServer
    sink: RecordingSink
    simulator_url: str
    settings: RouterSettings

    async def fault(self, **rule: object) -> None:
        """Install a fault rule in the simulator (see simulator/README.md)."""
        async with httpx.AsyncClient() as client:
            reply = await client.post(self.simulator_url.removesuffix("/v1") + "/_sim/faults", json=rule)
            reply.raise_for_status()

    async def simulator_stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            reply = await client.get(self.simulator_url.removesuffix("/v1") + "/_sim/stats")
            reply.raise_for_status()
            return dict(reply.json())


@pytest.fixture
async def classifier_address() -> AsyncIterator[str]:
    running = await create_classifier(ClassifierSettings(port=0, strategy="heuristic", cache_enabled=False))
    yield f"127.0.0.1:{running.port}"
    await running.stop(0)


# The router tests classify with the heuristic strategy: cut its scores where the heuristic's bands
# are, whatever thresholds the shipped policy was calibrated to for the learned model.
HEURISTIC_THRESHOLDS = {"moderate": 0.35, "complex": 0.55, "reasoning": 0.75}


def heuristic_policy(tmp_path: Path) -> Path:
    policy = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    policy["thresholds"] = HEURISTIC_THRESHOLDS
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def router_settings(
    classifier_address: str, simulator_url: str, tmp_path: Path, **overrides: object
) -> RouterSettings:
    values: dict[str, object] = {
        "port": 0,
        "policy_path": heuristic_policy(tmp_path),
        "classifier_address": classifier_address,
        "classifier_mode": "remote",  # the heuristic classifier service above decides every tier
        "simulator_url": simulator_url,
        "simulator": "always",
        "ledger_address": "127.0.0.1:1",
        "budgets_enabled": False,  # no ledger here: tests of budgets turn them on with a real one
        "warm_up": False,
        "spool_path": tmp_path / "spool.db",
        "retry_backoff_seconds": 0.01,
        **overrides,
    }
    return RouterSettings(**values)  # type: ignore[arg-type]


StartRouter = Callable[..., Awaitable[RouterHarness]]


@pytest.fixture
async def start_router(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> AsyncIterator[StartRouter]:
    """Starts the test's router with the settings it needs (`router_settings` overrides as keywords),
    rather than changing a running one's; it is stopped after the test."""
    started: list[tuple[grpc.aio.Channel, RunningServer]] = []

    async def start(**overrides: object) -> RouterHarness:
        settings = router_settings(classifier_address, simulator_url, tmp_path, **overrides)
        running = await create_router(settings, usage_sink=recording_sink)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        started.append((channel, running))
        return RouterHarness(
            router_pb2_grpc.RouterServiceStub(channel), running, recording_sink, simulator_url, settings
        )

    yield start
    for channel, running in started:
        await channel.close()
        await running.stop(0)


@pytest.fixture
async def router(start_router: StartRouter) -> RouterHarness:
    return await start_router()
