"""Exploration: a sampled request is answered again by the next tier down, in the background, and the
judge compares the answers; the caller's answer never waits for it, and what it spends is recorded
as exploration, within a daily cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.exploration import ExplorationBudget
from router_svc.server import create_server
from tests.doubles import RecordingSink
from tests.router.conftest import RouterHarness, heuristic_policy, router_settings
from tests.waiting import eventually

MODERATE_PROMPT = (
    "Summarize the following meeting notes in three bullet points, keeping every decision and owner: "
    "the team agreed to move the launch to March, Dana owns the pricing page, Lee will draft the FAQ, "
    "and the budget review is postponed until the finance numbers arrive next week."
)
SIMPLE_PROMPT = "Is this spam? Answer yes or no: 'You won a free cruise'"


def policy_file(tmp_path: Path) -> Path:
    """The heuristic's scores put the summary (0.32) on moderate and the spam check (0.11) on simple."""
    policy = yaml.safe_load(heuristic_policy(tmp_path).read_text())
    policy["thresholds"] = {"moderate": 0.2, "complex": 0.55, "reasoning": 0.75}
    path = tmp_path / "exploration-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture
async def exploring(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> AsyncIterator[RouterHarness]:
    settings = router_settings(
        classifier_address,
        simulator_url,
        tmp_path,
        policy_path=policy_file(tmp_path),
        judge_model="gpt-5-nano",
        judge_tiers=[],  # only exploration asks the judge here
        exploration_rate=1.0,
        exploration_daily_budget_usd=1.0,
    )
    running = await create_server(settings, usage_sink=recording_sink)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield RouterHarness(
        router_pb2_grpc.RouterServiceStub(channel), running, recording_sink, simulator_url, settings
    )
    await channel.close()
    await running.stop(0)


async def in_flight(harness: RouterHarness) -> int:
    return int((await harness.simulator_stats())["in_flight"])


def route(text: str, **options: object) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        caller="app",
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


async def explorations(sink: RecordingSink, count: int) -> list[ledger_pb2.UsageRecord]:
    await eventually(
        lambda: len([r for r in sink.records if r.exploration]) >= count, "explorations recorded"
    )
    return [r for r in sink.records if r.exploration]


async def test_a_sampled_request_is_answered_again_one_tier_down_and_compared(
    exploring: RouterHarness,
) -> None:
    response = await exploring.stub.Route(route(MODERATE_PROMPT))
    assert response.tier == common_pb2.TIER_MODERATE
    [explored] = await explorations(exploring.sink, 1)
    # Same run, numbered apart from the answer's attempts, one tier down, graded against the answer.
    assert (explored.request_id, explored.run_id, explored.caller) == (
        response.request_id,
        response.run_id,
        "app",
    )
    assert explored.attempt == 1001 and not explored.final
    assert explored.tier == common_pb2.TIER_SIMPLE and explored.outcome == common_pb2.ATTEMPT_OUTCOME_OK
    assert explored.judge_verdict in (common_pb2.JUDGE_VERDICT_PASS, common_pb2.JUDGE_VERDICT_FAIL)
    assert explored.usage.cost_usd > 0 and explored.judge_cost_usd > 0
    assert explored.score == response.decision.score and explored.policy_version
    # The answer itself was recorded as usual, first, and is not an exploration.
    answer = [r for r in exploring.sink.records if r.run_id == response.run_id and not r.exploration]
    assert [r.attempt for r in answer] == [1] and answer[0].final
    stats = await exploring.simulator_stats()
    assert stats["models"]["groq/openai/gpt-oss-20b"]["completed"] == 1  # the simple tier's cheapest


async def test_the_caller_never_waits_for_exploration(exploring: RouterHarness) -> None:
    await exploring.fault(model="groq/openai/gpt-oss-20b", fault="delay", delay_ms=1500)
    started = asyncio.get_running_loop().time()
    response = await exploring.stub.Route(route(MODERATE_PROMPT))
    assert asyncio.get_running_loop().time() - started < 1.0 and response.content
    assert not [r for r in exploring.sink.records if r.exploration]  # still in flight
    assert len(await explorations(exploring.sink, 1)) == 1


async def test_nothing_cheaper_or_forced_is_not_explored(exploring: RouterHarness) -> None:
    simple = await exploring.stub.Route(route(SIMPLE_PROMPT))
    forced = await exploring.stub.Route(route(MODERATE_PROMPT, force_tier=common_pb2.TIER_MODERATE))
    assert simple.tier == common_pb2.TIER_SIMPLE and forced.tier == common_pb2.TIER_MODERATE
    await exploring.server.stop(0)  # drains explorations: one started would be recorded by now
    assert exploring.sink.records and not [r for r in exploring.sink.records if r.exploration]


async def test_stopping_the_router_records_an_exploration_in_flight(exploring: RouterHarness) -> None:
    await exploring.fault(model="groq/openai/gpt-oss-20b", fault="delay", delay_ms=30_000)
    await exploring.stub.Route(route(MODERATE_PROMPT))
    await eventually(lambda: in_flight(exploring), "the exploration at the provider")
    await exploring.server.stop(0)  # drains explorations (cancelling what does not end in time)
    [explored] = [r for r in exploring.sink.records if r.exploration]
    assert explored.outcome == common_pb2.ATTEMPT_OUTCOME_CANCELLED and explored.usage.input_tokens > 0


async def test_the_daily_cap_stops_exploring(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> None:
    settings = router_settings(
        classifier_address,
        simulator_url,
        tmp_path,
        policy_path=policy_file(tmp_path),
        judge_model="gpt-5-nano",
        exploration_rate=1.0,
        exploration_daily_budget_usd=0.0,
    )
    running = await create_server(settings, usage_sink=recording_sink)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await router_pb2_grpc.RouterServiceStub(channel).Route(route(MODERATE_PROMPT))
    finally:
        await running.stop(0)  # drains explorations: one started would be recorded by now
    assert recording_sink.records and not [r for r in recording_sink.records if r.exploration]


class _Ledger:
    """The ledger as ExplorationBudget reads it: today's exploration spend from GetStats."""

    def __init__(self, spent: float) -> None:
        self.spent = spent
        self.calls = 0

    async def GetStats(
        self, request: ledger_pb2.GetStatsRequest, timeout: float
    ) -> ledger_pb2.GetStatsResponse:
        self.calls += 1
        assert request.window.HasField("since")  # since today's UTC midnight
        return ledger_pb2.GetStatsResponse(totals=ledger_pb2.Totals(exploration_cost_usd=self.spent))


async def test_the_budget_counts_every_replica_through_the_ledger_and_rolls_over_at_midnight() -> None:
    now = [1_700_000_000.0]  # 2023-11-14 22:13 UTC
    ledger = _Ledger(spent=0.8)
    budget = ExplorationBudget(1.0, ledger, refresh_seconds=30, clock=lambda: now[0])  # type: ignore[arg-type]
    await budget.refresh()
    assert budget.spent_usd == pytest.approx(0.8)  # what other replicas spent today
    assert budget.reserve(0.15) and not budget.reserve(0.1)  # 0.95 held or spent; 0.1 more would pass 1.0
    budget.settle(0.15, 0.05)  # it cost less than estimated
    assert budget.spent_usd == pytest.approx(0.85) and budget.reserve(0.1)
    budget.settle(0.1, 0.1)
    now[0] += 2 * 3600  # past midnight UTC: a new day's cap
    assert budget.spent_usd == 0.0 and budget.reserve(0.9)
